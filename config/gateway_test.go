package config

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGatewaySettings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		vars map[string]string
		want GatewayConfig
	}{
		{"defaults", nil, GatewayConfig{UpstreamTimeout: 10 * time.Minute}},
		{"set", map[string]string{"LAP_PRICES_FILE": "/etc/lap/prices.json", "LAP_LLM_TIMEOUT": "90s", "LAP_ALLOW_UNPRICED_MODELS": "true"},
			GatewayConfig{PricesFile: "/etc/lap/prices.json", UpstreamTimeout: 90 * time.Second, AllowUnpricedModels: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			vars := map[string]string{"MASTER_KEY": "0123456789abcdef"}
			for k, v := range tt.vars {
				vars[k] = v
			}
			c, err := Load(env(vars), "")
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.Gateway)
		})
	}
}

func TestGatewaySettingsRejectBadTimeout(t *testing.T) {
	t.Parallel()
	_, err := Load(env(map[string]string{"MASTER_KEY": "0123456789abcdef", "LAP_LLM_TIMEOUT": "0s"}), "")
	var se *SettingError
	require.True(t, errors.As(err, &se), "Load(LAP_LLM_TIMEOUT=0s) = %v, want a *SettingError", err)
	assert.Equal(t, "LAP_LLM_TIMEOUT", se.Name)
}
