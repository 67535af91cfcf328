package gateway

import (
	"fmt"

	"lap.dev/lap/config"
)

// ConfigOptions returns the Options that come from lapd's settings: the
// upstream (LITELLM_API_BASE, LITELLM_API_KEY), LAP_LLM_TIMEOUT, the
// prices (LAP_PRICES_FILE read now, so a bad file stops lapd at start-up)
// and LAP_ALLOW_UNPRICED_MODELS.
// The caller adds Tokens, Sandboxes, Usage, Budgets, Registerer and
// Logger.
func ConfigOptions(c config.Config) (Options, error) {
	prices, err := LoadPrices(c.Gateway.PricesFile)
	if err != nil {
		return Options{}, fmt.Errorf("LAP_PRICES_FILE: %w", err)
	}
	return Options{
		UpstreamBase: c.LiteLLMAPIBase,
		UpstreamKey:  c.LiteLLMAPIKey,
		Timeout:      c.Gateway.UpstreamTimeout,
		Prices:       prices,

		AllowUnpriced: c.Gateway.AllowUnpricedModels,
	}, nil
}
