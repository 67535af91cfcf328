package gateway

import (
	"errors"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus counters, labelled by agent id
// (bounded by the agents that exist) and by the price table entry the
// request's model found, a known mock model's name, or "other" (bounded by
// the configuration, whatever names sandboxes send).
type metrics struct {
	requests     *prometheus.CounterVec
	inputTokens  *prometheus.CounterVec
	outputTokens *prometheus.CounterVec
	cost         *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	labels := []string{"agent", "model"}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lap_llm_requests_total",
			Help: "LLM requests through the /llm gateway, by agent, model and HTTP status (agent is empty when the token was refused).",
		}, append(labels, "code")),
		inputTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lap_llm_input_tokens_total",
			Help: "Prompt tokens (cached ones included) reported by answers through the /llm gateway.",
		}, labels),
		outputTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lap_llm_output_tokens_total",
			Help: "Generated tokens reported by answers through the /llm gateway.",
		}, labels),
		cost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lap_llm_cost_usd_total",
			Help: "Cost in US dollars of answers through the /llm gateway, from the price table.",
		}, labels),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.requests, m.inputTokens, m.outputTokens, m.cost} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *metrics) request(agent, model string, status int) {
	m.requests.WithLabelValues(agent, label(model), statusLabel(status)).Inc()
}

func (m *metrics) usage(agent, model string, u Usage) {
	model = label(model)
	m.inputTokens.WithLabelValues(agent, model).Add(float64(u.InputTokens))
	m.outputTokens.WithLabelValues(agent, model).Add(float64(u.OutputTokens))
	m.cost.WithLabelValues(agent, model).Add(u.CostUSD)
}

// maxLabelBytes bounds a model label: the name comes from a sandbox's
// request.
const maxLabelBytes = 128

// label makes a model name, which a sandbox chooses, a valid Prometheus
// label value: valid UTF-8 (the client library panics on anything else,
// which in a stream's writer would take lapd down) and bounded in length.
func label(model string) string {
	model = strings.ToValidUTF8(model, "\uFFFD")
	if len(model) > maxLabelBytes {
		model = strings.ToValidUTF8(model[:maxLabelBytes], "")
	}
	return model
}
