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
	// AllowUnpricedModels lets models missing from the price table through
	// the gateway at $0. Off by default: their spending would count
	// against no budget.
	AllowUnpricedModels bool // LAP_ALLOW_UNPRICED_MODELS
}

var gatewaySettings = []Setting{
	{"LAP_PRICES_FILE", "", "JSON price table (LiteLLM's model_prices_and_context_window.json format) overriding and extending the built-in LLM prices", func(c *Config, v string) error {
		c.Gateway.PricesFile = v
		return nil
	}},
	{"LAP_LLM_TIMEOUT", "10m", "longest one LLM call through the /llm gateway may take, streamed answers included", func(c *Config, v string) error {
		return parseDuration(&c.Gateway.UpstreamTimeout, v)
	}},
	{"LAP_ALLOW_UNPRICED_MODELS", "false", "let sandboxes use models missing from the price table, at $0 (their spending then counts against no budget); by default the /llm gateway refuses them", func(c *Config, v string) error {
		return parseBool(&c.Gateway.AllowUnpricedModels, v)
	}},
}
