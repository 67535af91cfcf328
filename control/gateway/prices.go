package gateway

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"

	"lap.dev/lap/control/gateway/mockllm"
)

// Usage is the LLM use of one request, as the upstream reported it, and
// what it cost.
type Usage struct {
	// InputTokens counts every prompt token, cached ones included.
	InputTokens int64
	// OutputTokens counts generated tokens, reasoning included.
	OutputTokens int64
	// CacheReadTokens and CacheWriteTokens are the parts of InputTokens
	// read from and written to a prompt cache, which are priced apart.
	CacheReadTokens  int64
	CacheWriteTokens int64
	// CostUSD is the price of the request in US dollars; 0 for models
	// without a known price.
	CostUSD float64
}

// Price is what one model costs, in US dollars per token. The JSON field
// names are those of LiteLLM's model_prices_and_context_window.json, so
// that file can serve as a prices file as is.
type Price struct {
	InputCostPerToken  float64 `json:"input_cost_per_token"`
	OutputCostPerToken float64 `json:"output_cost_per_token"`
	// Cache prices default to the input price when unset.
	CacheReadInputTokenCost     *float64 `json:"cache_read_input_token_cost,omitempty"`
	CacheCreationInputTokenCost *float64 `json:"cache_creation_input_token_cost,omitempty"`
}

// Cost returns what u costs at price p.
func (p Price) Cost(u Usage) float64 {
	cacheRead, cacheWrite := p.InputCostPerToken, p.InputCostPerToken
	if p.CacheReadInputTokenCost != nil {
		cacheRead = *p.CacheReadInputTokenCost
	}
	if p.CacheCreationInputTokenCost != nil {
		cacheWrite = *p.CacheCreationInputTokenCost
	}
	uncached := max(0, u.InputTokens-u.CacheReadTokens-u.CacheWriteTokens)
	return float64(uncached)*p.InputCostPerToken +
		float64(u.CacheReadTokens)*cacheRead +
		float64(u.CacheWriteTokens)*cacheWrite +
		float64(u.OutputTokens)*p.OutputCostPerToken
}

// Prices is a price table keyed by model name. It is read-only once built,
// so one table serves every request concurrently.
type Prices struct {
	byModel map[string]Price
}

// perMTok builds a Price from US dollars per million tokens, the unit
// providers publish; cacheWrite 0 means "same as input" (OpenAI does not
// charge extra for cache writes).
func perMTok(input, output, cacheRead, cacheWrite float64) Price {
	const m = 1e6
	p := Price{InputCostPerToken: input / m, OutputCostPerToken: output / m}
	cr := cacheRead / m
	p.CacheReadInputTokenCost = &cr
	if cacheWrite != 0 {
		cw := cacheWrite / m
		p.CacheCreationInputTokenCost = &cw
	}
	return p
}

// defaultPrices are list prices of common models (USD per million tokens:
// input, output, cache read, cache write). Dated snapshots, provider
// prefixes such as "anthropic/" and "-latest" find these entries too; see
// Lookup. LAP_PRICES_FILE overrides and extends them.
var defaultPrices = map[string]Price{
	// OpenAI
	"gpt-5":         perMTok(1.25, 10, 0.125, 0),
	"gpt-5-mini":    perMTok(0.25, 2, 0.025, 0),
	"gpt-5-nano":    perMTok(0.05, 0.40, 0.005, 0),
	"gpt-4.1":       perMTok(2, 8, 0.50, 0),
	"gpt-4.1-mini":  perMTok(0.40, 1.60, 0.10, 0),
	"gpt-4.1-nano":  perMTok(0.10, 0.40, 0.025, 0),
	"gpt-4o":        perMTok(2.50, 10, 1.25, 0),
	"gpt-4o-mini":   perMTok(0.15, 0.60, 0.075, 0),
	"o1":            perMTok(15, 60, 7.50, 0),
	"o3":            perMTok(2, 8, 0.50, 0),
	"o3-mini":       perMTok(1.10, 4.40, 0.55, 0),
	"o4-mini":       perMTok(1.10, 4.40, 0.275, 0),
	"gpt-4-turbo":   perMTok(10, 30, 10, 0),
	"gpt-3.5-turbo": perMTok(0.50, 1.50, 0.50, 0),
	// Anthropic
	"claude-opus-4-5":   perMTok(5, 25, 0.50, 6.25),
	"claude-opus-4-1":   perMTok(15, 75, 1.50, 18.75),
	"claude-opus-4":     perMTok(15, 75, 1.50, 18.75),
	"claude-opus-4-0":   perMTok(15, 75, 1.50, 18.75),
	"claude-sonnet-4-5": perMTok(3, 15, 0.30, 3.75),
	"claude-sonnet-4":   perMTok(3, 15, 0.30, 3.75),
	"claude-sonnet-4-0": perMTok(3, 15, 0.30, 3.75),
	"claude-haiku-4-5":  perMTok(1, 5, 0.10, 1.25),
	"claude-3-7-sonnet": perMTok(3, 15, 0.30, 3.75),
	"claude-3-5-sonnet": perMTok(3, 15, 0.30, 3.75),
	"claude-3-5-haiku":  perMTok(0.80, 4, 0.08, 1),
	"claude-3-opus":     perMTok(15, 75, 1.50, 18.75),
	"claude-3-haiku":    perMTok(0.25, 1.25, 0.03, 0.30),
}

// DefaultPrices returns the built-in price table.
func DefaultPrices() *Prices {
	return &Prices{byModel: maps.Clone(defaultPrices)}
}

// LoadPrices returns the built-in table overridden and extended by the
// JSON file at path ("" = built-in only). The file maps model names to
// prices in LiteLLM's format:
//
//	{"my-model": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
//	              "cache_read_input_token_cost": 3e-07}}
//
// Entries without input or output prices (LiteLLM's file lists image and
// audio models too) are skipped; a file with no priced entry at all is an
// error, as it is most likely in another format.
func LoadPrices(path string) (*Prices, error) {
	p := DefaultPrices()
	if path == "" {
		return p, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read prices file: %w", err)
	}
	var entries map[string]json.RawMessage
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, fmt.Errorf("parse prices file %s: want a JSON object of model names to prices: %w", path, err)
	}
	n := 0
	for model, raw := range entries {
		var fields map[string]json.RawMessage
		if json.Unmarshal(raw, &fields) != nil {
			continue // LiteLLM's file has a few non-object entries
		}
		_, hasIn := fields["input_cost_per_token"]
		_, hasOut := fields["output_cost_per_token"]
		if !hasIn && !hasOut {
			continue
		}
		var price Price
		if err := json.Unmarshal(raw, &price); err != nil {
			return nil, fmt.Errorf("parse prices file %s: model %q: %w", path, model, err)
		}
		p.byModel[strings.ToLower(model)] = price
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("parse prices file %s: no model has input_cost_per_token or output_cost_per_token", path)
	}
	return p, nil
}

// snapshotSuffix matches the dated snapshot suffix of a model name:
// -20250929, -2024-08-06, @20250929 (Vertex), -v1:0 (Bedrock).
var snapshotSuffix = regexp.MustCompile(`(@.*|-\d{8}(-v\d+(:\d+)?)?|-\d{4}-\d{2}-\d{2}|-latest)$`)

// Lookup returns the price of model. Mock models are free. Besides the
// exact (case-insensitive) name, it tries the name without its provider
// prefixes ("anthropic/claude-sonnet-4-5", "openrouter/openai/gpt-4o",
// "anthropic.claude-…" on Bedrock) and without a snapshot suffix, so
// LiteLLM's model names and the dated names upstreams answer with find
// the entry of their model family.
func (p *Prices) Lookup(model string) (Price, bool) {
	_, price, ok := p.entry(model)
	return price, ok
}

// entry is Lookup that also returns the name of the entry found: the
// table's key, or the mock model's name ("other" for an unknown mock
// model). Many request names find one entry, so the entry's name, not
// the request's, is what metrics are labelled with.
func (p *Prices) entry(model string) (string, Price, bool) {
	if mockllm.IsMock(model) {
		if slices.Contains(mockllm.Models(), model) {
			return model, Price{}, true
		}
		return otherModel, Price{}, true
	}
	m := strings.ToLower(strings.TrimSpace(model))
	if price, ok := p.byModel[m]; ok {
		return m, price, true
	}
	if i := strings.LastIndex(m, "/"); i >= 0 {
		m = m[i+1:]
	}
	m = strings.TrimPrefix(m, "anthropic.")
	m = strings.TrimPrefix(m, "us.anthropic.")
	if price, ok := p.byModel[m]; ok {
		return m, price, true
	}
	if s := snapshotSuffix.ReplaceAllString(m, ""); s != m {
		if price, ok := p.byModel[s]; ok {
			return s, price, true
		}
	}
	return otherModel, Price{}, false
}

// otherModel is the metrics label of every model without an entry of its
// own in the price table.
const otherModel = "other"
