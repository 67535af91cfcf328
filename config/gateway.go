package config

// GatewayConfig holds the settings of the LLM gateway (control/gateway).
type GatewayConfig struct{}

var gatewaySettings = []Setting{}
