package gateway

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLookup(t *testing.T) {
	t.Parallel()
	p := DefaultPrices()
	tests := []struct {
		model  string
		want   string // the default entry it must find; "" = none
		isMock bool
	}{
		{"gpt-4o", "gpt-4o", false},
		{"GPT-4o", "gpt-4o", false},
		{"gpt-4o-2024-08-06", "gpt-4o", false},
		{"openai/gpt-4o-mini", "gpt-4o-mini", false},
		{"openrouter/openai/gpt-4.1", "gpt-4.1", false},
		{"anthropic/claude-sonnet-4-5", "claude-sonnet-4-5", false},
		{"claude-sonnet-4-5-20250929", "claude-sonnet-4-5", false},
		{"vertex_ai/claude-sonnet-4-5@20250929", "claude-sonnet-4-5", false},
		{"bedrock/us.anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku", false},
		{"claude-3-7-sonnet-latest", "claude-3-7-sonnet", false},
		{"claude-haiku-4-5", "claude-haiku-4-5", false},
		{"mock/tools", "", true},
		{"my-company-finetune", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.model, func(t *testing.T) {
			t.Parallel()
			got, ok := p.Lookup(tt.model)
			switch {
			case tt.isMock:
				assert.True(t, ok)
				assert.Equal(t, Price{}, got, "mock models are free")
			case tt.want == "":
				assert.False(t, ok, "Lookup(%q) = %+v, want none", tt.model, got)
			default:
				require.True(t, ok, "Lookup(%q) found nothing", tt.model)
				assert.Equal(t, defaultPrices[tt.want], got)
			}
		})
	}
}

func TestCost(t *testing.T) {
	t.Parallel()
	sonnet := defaultPrices["claude-sonnet-4-5"]
	tests := []struct {
		name  string
		price Price
		u     Usage
		want  float64
	}{
		{"plain", sonnet, Usage{InputTokens: 1_000_000, OutputTokens: 1_000_000}, 3 + 15},
		{"cache read and write priced apart", sonnet,
			Usage{InputTokens: 3_000_000, CacheReadTokens: 1_000_000, CacheWriteTokens: 1_000_000}, 3 + 0.30 + 3.75},
		{"no cache prices: input price", Price{InputCostPerToken: 1e-6, OutputCostPerToken: 2e-6},
			Usage{InputTokens: 10, CacheReadTokens: 4, OutputTokens: 5}, 10e-6 + 10e-6},
		{"inconsistent counts never go negative", sonnet, Usage{InputTokens: 1, CacheReadTokens: 1_000_000}, 0.30},
		{"free", Price{}, Usage{InputTokens: 100, OutputTokens: 100}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.InDelta(t, tt.want, tt.price.Cost(tt.u), 1e-9)
		})
	}
}

func TestLoadPrices(t *testing.T) {
	t.Parallel()
	write := func(t *testing.T, content string) string {
		path := filepath.Join(t.TempDir(), "prices.json")
		require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
		return path
	}
	t.Run("LiteLLM format overrides and extends", func(t *testing.T) {
		t.Parallel()
		// Shaped like LiteLLM's model_prices_and_context_window.json.
		path := write(t, `{
			"sample_spec": {"max_tokens": "LEGACY parameter", "input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
			"gpt-4o": {"input_cost_per_token": 1e-06, "output_cost_per_token": 4e-06, "litellm_provider": "openai", "mode": "chat"},
			"my-finetune": {"input_cost_per_token": 5e-06, "output_cost_per_token": 2e-05, "cache_read_input_token_cost": 5e-07},
			"dall-e-3": {"input_cost_per_pixel": 1e-08, "mode": "image_generation"}
		}`)
		p, err := LoadPrices(path)
		require.NoError(t, err)
		got, ok := p.Lookup("openai/gpt-4o")
		require.True(t, ok)
		assert.Equal(t, Price{InputCostPerToken: 1e-06, OutputCostPerToken: 4e-06}, got, "the file overrides the default")
		got, ok = p.Lookup("my-finetune")
		require.True(t, ok)
		assert.InDelta(t, 5e-6*6+5e-7*4+2e-5, got.Cost(Usage{InputTokens: 10, CacheReadTokens: 4, OutputTokens: 1}), 1e-15)
		_, ok = p.Lookup("claude-sonnet-4-5")
		assert.True(t, ok, "defaults the file does not mention stay")
		_, ok = p.Lookup("dall-e-3")
		assert.False(t, ok, "entries without token prices are skipped")
	})
	t.Run("empty path: defaults", func(t *testing.T) {
		t.Parallel()
		p, err := LoadPrices("")
		require.NoError(t, err)
		assert.Equal(t, DefaultPrices(), p)
	})
	errs := []struct{ name, content, want string }{
		{"not JSON", `model: gpt-4o`, "want a JSON object of model names to prices"},
		{"no prices", `{"gpt-4o": {"input_per_mtok": 2.5}}`, "no model has input_cost_per_token"},
		{"bad price", `{"gpt-4o": {"input_cost_per_token": "cheap"}}`, `model "gpt-4o"`},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := LoadPrices(write(t, tt.content))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	t.Run("missing file", func(t *testing.T) {
		t.Parallel()
		_, err := LoadPrices(filepath.Join(t.TempDir(), "nope.json"))
		assert.ErrorIs(t, err, os.ErrNotExist)
	})
}
