package gateway

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Sandboxes choose how often the gateway's per-request log lines are
// written, so those lines are rate-limited per message: at most
// logBurst of one message per logWindow; the first line after a window
// that dropped some says how many ("suppressed"). Every attribute a
// sandbox chooses (the model) is validated and bounded before it is
// logged.
const (
	logBurst  = 20
	logWindow = time.Minute
)

// logLimiter counts lines per message. Messages are the gateway's own
// constants, so the map stays small.
type logLimiter struct {
	mu    sync.Mutex
	kinds map[string]*logCount
}

type logCount struct {
	start      time.Time
	n          int
	suppressed int
}

// allow reports whether a line of msg may be written now, and how many
// were suppressed before it.
func (l *logLimiter) allow(msg string) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.kinds == nil {
		l.kinds = map[string]*logCount{}
	}
	c := l.kinds[msg]
	if c == nil || now.Sub(c.start) >= logWindow {
		suppressed := 0
		if c != nil {
			suppressed = c.suppressed
		}
		l.kinds[msg] = &logCount{start: now, n: 1}
		return true, suppressed
	}
	if c.n >= logBurst {
		c.suppressed++
		return false, 0
	}
	c.n++
	return true, 0
}

// logf writes a rate-limited line at level.
func (g *Gateway) logf(level slog.Level, msg string, args ...any) {
	if !g.log.Enabled(context.Background(), level) {
		return
	}
	ok, suppressed := g.logLimit.allow(msg)
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	g.log.Log(context.Background(), level, msg, args...)
}

// maxUnpricedWarnings bounds the models warnUnpriced remembers having
// warned about; past it, warnings are only rate-limited.
const maxUnpricedWarnings = 64

// warnUnpriced logs, once per model, that an unpriced model (allowed by
// LAP_ALLOW_UNPRICED_MODELS) is used at $0.
func (g *Gateway) warnUnpriced(model string) {
	g.unpricedMu.Lock()
	_, seen := g.unpriced[model]
	if !seen && len(g.unpriced) < maxUnpricedWarnings {
		g.unpriced[model] = struct{}{}
	}
	g.unpricedMu.Unlock()
	if !seen {
		g.logf(slog.LevelWarn, "LLM model has no price: its usage is recorded at $0; add it to LAP_PRICES_FILE", "model", model)
	}
}
