package control

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"lap.dev/lap/config"
	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/control/secrets"
	"lap.dev/lap/sandboxes"
)

// orchestrator runs agents and sessions over a backend: warm claims and
// cold provisioning, turns, resume and recovery, the warm pool and the
// idle reaper. It knows nothing of HTTP: it returns errors of the kinds
// in errors.go, which the Server's handlers turn into responses.
//
// Its files, one job each: lifecycle.go (the only writer of a session's
// state), sessions.go (open, restart, suspend, end), attach.go (a
// session's sandbox running: resume, or attach a new one), sandbox.go
// (provision and destroy), turns.go, crashes.go, idle.go (the reaper),
// warmpool.go, recovery.go and adopt.go (start-up), agentops.go,
// diagnose.go, passtarget.go; records.go is what it needs of the store.
// The HTTP side is server.go, agents.go, sessionapi.go, stream.go,
// passthrough.go, validate.go and httperrors.go.
type orchestrator struct {
	cfg     config.Config
	store   records
	backend sandboxes.Backend
	secrets *secrets.Box
	tokens  *sandboxtoken.Signer
	log     *slog.Logger
	harness *harnessClient
	bus     *bus
	pool    *warmPool
	crashes *crashLog
	metrics *metrics

	// baseCtx is every background job's context; Shutdown cancels it
	// when it gives up waiting.
	baseCtx context.Context
	// draining is set once lapd stops: new turns are refused.
	draining atomic.Bool

	mu     sync.Mutex
	active map[string]*turn // running turn per session id (nil: a maintenance job)
	// inFlight counts pass-through requests per session id (passing).
	inFlight map[string]int
	// jobs holds, per session a maintenance job reserved, a channel
	// closed when the job ends.
	jobs map[string]chan struct{}
	// interrupted holds sessions whose turn a stop of lapd interrupted
	// (failed at start-up) until their harness answers a turn again.
	interrupted map[string]bool
	turns       sync.WaitGroup // running turns
	bg          sync.WaitGroup // background jobs (provisioning, cleanup)
	bgClosed    bool           // stop is waiting for bg; start no more

	// terms counts attached terminals per session (tty.go).
	terms terminals
}

func newOrchestrator(ctx context.Context, opts Options, m *metrics) *orchestrator {
	o := &orchestrator{
		cfg:         opts.Config,
		store:       opts.Store,
		backend:     opts.Backend,
		secrets:     opts.Secrets,
		tokens:      opts.Tokens,
		log:         opts.Logger,
		harness:     newHarnessClient(),
		bus:         newBus(),
		crashes:     newCrashLog(),
		metrics:     m,
		baseCtx:     ctx,
		active:      map[string]*turn{},
		jobs:        map[string]chan struct{}{},
		interrupted: map[string]bool{},
	}
	o.pool = newWarmPool(o)
	return o
}

// goBackground runs fn as a tracked background job with the base
// context. Once stop has given up on running work, fn does not run: what
// it would have done is redone by Start's recovery.
func (o *orchestrator) goBackground(fn func(ctx context.Context)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.bgClosed {
		return
	}
	o.bg.Add(1)
	go func() {
		defer o.bg.Done()
		fn(o.baseCtx)
	}()
}

// stop lets running turns finish until ctx ends, then aborts them (they
// are recorded as such), cancels the base context with cancelBase and
// waits a bounded time for background jobs.
func (o *orchestrator) stop(ctx context.Context, cancelBase context.CancelFunc) {
	turnsDone := make(chan struct{})
	go func() { o.turns.Wait(); close(turnsDone) }()
	select {
	case <-turnsDone:
	case <-ctx.Done():
		o.mu.Lock()
		for _, t := range o.active {
			if t != nil { // nil: a maintenance job, not a turn
				t.abort(abortShutdown)
			}
		}
		o.mu.Unlock()
		// Aborted turns end within abortGrace (then their calls are cut).
		select {
		case <-turnsDone:
		case <-time.After(abortGrace + 5*time.Second):
			o.log.Warn("turns still running at shutdown")
		}
	}
	cancelBase()
	o.mu.Lock()
	o.bgClosed = true
	o.mu.Unlock()
	bgDone := make(chan struct{})
	go func() { o.bg.Wait(); close(bgDone) }()
	select {
	case <-bgDone:
	case <-time.After(10 * time.Second):
		o.log.Warn("background jobs still running at shutdown")
	}
}
