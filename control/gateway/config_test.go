package gateway

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/config"
)

func TestConfigOptions(t *testing.T) {
	t.Parallel()
	prices := filepath.Join(t.TempDir(), "prices.json")
	require.NoError(t, os.WriteFile(prices, []byte(`{"house-model":{"input_cost_per_token":1e-06,"output_cost_per_token":2e-06}}`), 0o600))
	env := map[string]string{
		"MASTER_KEY":       "0123456789abcdef",
		"LITELLM_API_BASE": "http://litellm.internal:4000/v1",
		"LITELLM_API_KEY":  "sk-real",
		"LAP_LLM_TIMEOUT":  "2m",
		"LAP_PRICES_FILE":  prices,

		"LAP_ALLOW_UNPRICED_MODELS": "true",
	}
	c, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, "")
	require.NoError(t, err)
	o, err := ConfigOptions(c)
	require.NoError(t, err)
	assert.Equal(t, "http://litellm.internal:4000/v1", o.UpstreamBase)
	assert.Equal(t, "sk-real", o.UpstreamKey)
	assert.Equal(t, 2*time.Minute, o.Timeout)
	assert.True(t, o.AllowUnpriced)
	_, ok := o.Prices.Lookup("house-model")
	assert.True(t, ok)

	c.Gateway.PricesFile = filepath.Join(t.TempDir(), "missing.json")
	_, err = ConfigOptions(c)
	assert.ErrorContains(t, err, "LAP_PRICES_FILE")
}
