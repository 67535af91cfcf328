package config

import "time"

// GatewayConfig holds the settings of the LLM gateway (control/gateway).
// The upstream itself (LITELLM_API_BASE, LITELLM_API_KEY) and the default
// model are core settings in config.go.
type GatewayConfig struct {
	// PricesFile is a JSON price table that overrides and extends the
	// built-in prices; "" uses the built-in table only.
	PricesFile string // LAP_PRICES_FILE
	// UpstreamTimeout bounds one upstream LLM call, a streamed answer
	// included, so a hung upstream cannot hold a sandbox's turn forever.
	UpstreamTimeout time.Duration // LAP_LLM_TIMEOUT
}

var gatewaySettings = []Setting{
	{"LAP_PRICES_FILE", "", "JSON price table (LiteLLM's model_prices_and_context_window.json format) overriding and extending the built-in LLM prices", func(c *Config, v string) error {
		c.Gateway.PricesFile = v
		return nil
	}},
	{"LAP_LLM_TIMEOUT", "10m", "longest one LLM call through the /llm gateway may take, streamed answers included", func(c *Config, v string) error {
		return parseDuration(&c.Gateway.UpstreamTimeout, v)
	}},
}
