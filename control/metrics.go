package control

import (
	"context"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"lap.dev/lap/store"
)

// metrics are lapd's Prometheus instruments.
type metrics struct {
	requests     *prometheus.HistogramVec
	turns        *prometheus.CounterVec
	turnDuration prometheus.Histogram
	sessionReady *prometheus.HistogramVec
}

// Turn outcomes, the label of lap_turns_total.
const (
	outcomeCompleted = "completed" // the harness answered
	outcomeLLMError  = "llm_error" // answered with info.error from the LLM
	outcomeAborted   = "aborted"
	outcomeTimeout   = "timeout"
	outcomeFailed    = "failed" // the harness could not be reached or failed
)

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func newMetrics(reg prometheus.Registerer, st *store.Store) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lap_http_request_duration_seconds",
			Help:    "Time to answer API requests (to the first byte for streams), by route and status.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"method", "route", "code"}),
		turns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lap_turns_total",
			Help: "Agent turns by outcome.",
		}, []string{"outcome"}),
		turnDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "lap_turn_duration_seconds",
			Help:    "Duration of agent turns, from the user message to the logged answer.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 14),
		}),
		sessionReady: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lap_session_ready_seconds",
			Help:    "Time from session create to ready, by path (warm claim or cold provision).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 14),
		}, []string{"path"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.turns, m.turnDuration, m.sessionReady, &sessionsCollector{store: st}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// middleware times every request by its route pattern, so the label set
// stays bounded whatever paths clients send.
func (m *metrics) middleware(c *fiber.Ctx) error {
	start := time.Now()
	err := c.Next()
	status := c.Response().StatusCode()
	if err != nil {
		status, _ = classify(err)
	}
	route := c.Route().Path
	if status == fiber.StatusNotFound && route == "/" {
		route = "unmatched"
	}
	m.requests.WithLabelValues(c.Method(), route, strconv.Itoa(status)).Observe(time.Since(start).Seconds())
	return err
}

func metricsHandler(reg *prometheus.Registry) fiber.Handler {
	return adaptor.HTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}

// sessionsCollector reports sessions by status from the store's index at
// scrape time, so the figure is right after restarts too.
type sessionsCollector struct {
	store *store.Store
}

var sessionsDesc = prometheus.NewDesc("lap_sessions", "Sessions by status.", []string{"status"}, nil)

// Describe implements prometheus.Collector.
func (c *sessionsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- sessionsDesc }

// Collect implements prometheus.Collector.
func (c *sessionsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.store.CountSessionsByStatus(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(sessionsDesc, err)
		return
	}
	for _, status := range []string{"creating", "ready", "idle", "failed", "dead"} {
		ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(counts[status]), status)
	}
}
