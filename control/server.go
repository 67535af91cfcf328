// Package control is lap's control plane, lapd's core: the REST API
// (Fiber, ARCHITECTURE §4), session orchestration over a
// sandboxes.Backend (warm claims, cold provisioning, resume and recovery),
// the durable message path, live events over SSE, and metrics. It keeps
// all state in the store; a backend only runs harnesses.
package control

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/recover"
	"github.com/prometheus/client_golang/prometheus"

	"lap.dev/lap/config"
	"lap.dev/lap/control/api"
	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/control/secrets"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/store"
)

// RouteGroup is a set of routes another package serves from lapd, mounted
// at Prefix (e.g. the LLM gateway at /llm).
type RouteGroup struct {
	// Prefix is where the group is mounted, e.g. "/llm".
	Prefix string
	// OwnAuth exempts the group from the master-key check: it
	// authenticates its own callers (the gateway takes sandbox tokens).
	OwnAuth bool
	// BodyLimit is the group's request body limit (LLM requests can
	// exceed the API's 1 MiB); 0 keeps the API's.
	BodyLimit int
	// Register adds the group's routes to r (a router rooted at Prefix).
	Register func(r fiber.Router)
}

// Options are what New needs. Store, Backend, Secrets and Tokens are
// required.
type Options struct {
	Config  config.Config
	Store   *store.Store
	Backend sandboxes.Backend
	// Secrets seals agents' env_vars at rest.
	Secrets *secrets.Box
	// Tokens mints each sandbox's LITELLM_API_KEY for the /llm gateway.
	Tokens *sandboxtoken.Signer
	Logger *slog.Logger
	// Registry receives lapd's metrics and serves /metrics; nil means a
	// new registry with the Go and process collectors.
	Registry *prometheus.Registry
	// Groups are extra route groups (the LLM gateway).
	Groups []RouteGroup
}

// Server is the control plane's HTTP side: the routes, authentication
// and the mapping of errors to responses. What the routes do is the
// orchestrator's. Create it with New, call Start once, then Serve;
// Shutdown stops it.
type Server struct {
	cfg       config.Config
	store     *store.Store
	backend   sandboxes.Backend
	log       *slog.Logger
	app       *fiber.App
	o         *orchestrator
	masterKey [32]byte // SHA-256 of MASTER_KEY, compared in constant time

	// baseCtx is every request's and background job's context; it is
	// cancelled when Shutdown gives up waiting.
	baseCtx    context.Context
	cancelBase context.CancelFunc
	// ttyCtx ends the terminal relays (tty.go), which fasthttp no longer
	// tracks once hijacked; Shutdown cancels it.
	ttyCtx    context.Context
	cancelTTY context.CancelFunc
	relays    relaySet

	// pingInterval spaces SSE keep-alives (tests shorten it).
	pingInterval time.Duration

	// bodies enforces body limits per route and bytes in flight.
	bodies *bodyLimiter

	started atomic.Bool
}

// New builds the server and its routes. It does no I/O.
func New(opts Options) (*Server, error) {
	if opts.Store == nil || opts.Backend == nil || opts.Secrets == nil || opts.Tokens == nil {
		return nil, errors.New("control: Store, Backend, Secrets and Tokens are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	reg := opts.Registry
	if reg == nil {
		reg = newRegistry()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:        opts.Config,
		store:      opts.Store,
		backend:    opts.Backend,
		log:        opts.Logger,
		masterKey:  sha256.Sum256([]byte(opts.Config.MasterKey)),
		baseCtx:    ctx,
		cancelBase: cancel,

		pingInterval: pingInterval,
	}
	s.ttyCtx, s.cancelTTY = context.WithCancel(ctx)
	m, err := newMetrics(reg, opts.Store)
	if err != nil {
		cancel()
		return nil, err
	}
	s.o = newOrchestrator(ctx, opts, m)
	if err := reg.Register(&warmCollector{store: opts.Store}); err != nil {
		cancel()
		return nil, err
	}

	// Bodies are streamed and read only after authentication, within
	// limits bodyLimiter enforces (bodylimit.go); BodyLimit only bounds
	// what fasthttp prefetches.
	bodyLimit := serverBodyLimit
	for _, g := range opts.Groups {
		bodyLimit = max(bodyLimit, g.BodyLimit)
	}
	s.app = fiber.New(fiber.Config{
		AppName:               "lapd",
		ErrorHandler:          s.handleError,
		BodyLimit:             bodyLimit,
		Immutable:             true, // values outlive handlers (background jobs, streams)
		DisableStartupMessage: true,
		ReadTimeout:           time.Minute,
		IdleTimeout:           2 * time.Minute,

		StreamRequestBody: true,
		// Multipart forms would be read (to temporary files) before any
		// handler, authentication included; no route takes them.
		DisablePreParseMultipartForm: true,
	})
	s.routes(reg, opts.Groups)
	return s, nil
}

func (s *Server) routes(reg *prometheus.Registry, groups []RouteGroup) {
	app := s.app
	app.Use(recover.New())
	app.Use(s.o.metrics.middleware)
	app.Use(func(c *fiber.Ctx) error {
		c.SetUserContext(s.baseCtx)
		return c.Next()
	})
	app.Use(lapView)
	open := []string{"/healthz", "/readyz"}
	for _, g := range groups {
		if g.OwnAuth {
			open = append(open, g.Prefix)
		}
	}
	s.bodies = newBodyLimiter(groups)
	app.Use(s.bodies.settle)
	app.Use(s.authExcept(open))
	app.Use(s.bodies.limit)

	app.Get("/healthz", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"status": "ok"}) })
	app.Get("/readyz", s.readyz)
	app.Get("/metrics", metricsHandler(reg))
	for _, g := range groups {
		g.Register(app.Group(g.Prefix))
	}

	v1 := app.Group(api.BasePath)
	v1.Get("/harnesses", s.listHarnesses)
	v1.Post("/agents", s.createAgent)
	v1.Get("/agents", s.listAgents)
	v1.Get("/agents/:id", s.getAgent)
	v1.Patch("/agents/:id", s.updateAgent)
	v1.Delete("/agents/:id", s.deleteAgent)
	v1.Post("/agents/:id/session", s.createSession)

	v1.Get("/sessions", s.listSessions)
	v1.Get("/sessions/:id", s.getSession)
	v1.Delete("/sessions/:id", s.deleteSession)
	v1.Post("/sessions/:id/message", s.sendMessage)
	v1.Post("/sessions/:id/message_stream", s.streamMessage)
	v1.Get("/sessions/:id/events", s.sessionEvents)
	v1.Get("/sessions/:id/messages", s.listMessages)
	v1.Post("/sessions/:id/abort", s.abortSession)
	v1.Post("/sessions/:id/restart", s.restartSession)
	v1.Get("/sessions/:id/log", s.sessionLog)
	v1.Get("/sessions/:id/diagnose", s.diagnose)
	v1.All("/sessions/:id/opencode/*", s.passThrough)
	v1.Get("/sessions/:id/tty", s.serveTTY)

	app.Use(func(c *fiber.Ctx) error {
		return notFound("no route %s %s", c.Method(), c.Path())
	})
}

// authExcept checks the master key on every path but those under open.
func (s *Server) authExcept(open []string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		path := c.Path()
		if isTTYRoute(path) {
			return c.Next() // the master key or the session's tty_token
		}
		for _, p := range open {
			if path == p || strings.HasPrefix(path, strings.TrimSuffix(p, "/")+"/") {
				return c.Next()
			}
		}
		token, ok := strings.CutPrefix(c.Get(fiber.HeaderAuthorization), "Bearer ")
		got := sha256.Sum256([]byte(strings.TrimSpace(token)))
		if !ok || subtle.ConstantTimeCompare(got[:], s.masterKey[:]) != 1 {
			return newAPIError(http.StatusUnauthorized, api.CodeUnauthorized, "missing or wrong bearer token: send Authorization: Bearer $MASTER_KEY")
		}
		return c.Next()
	}
}

func (s *Server) readyz(c *fiber.Ctx) error {
	switch {
	case s.o.draining.Load():
		return unavailable("lapd is shutting down")
	case !s.started.Load():
		return unavailable("lapd is starting")
	}
	return c.JSON(fiber.Map{"status": "ready", "backend": s.backend.Name()})
}

func (s *Server) listHarnesses(c *fiber.Ctx) error {
	var out []api.Harness
	for _, h := range sandboxes.Harnesses() {
		out = append(out, api.Harness{ID: h.ID, Description: h.Description, Chat: h.Chat, SupportsTUI: h.TUI})
	}
	return c.JSON(api.List[api.Harness]{Data: out})
}

// App returns the Fiber app, for mounting in tests.
func (s *Server) App() *fiber.App { return s.app }

// Serve answers requests on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	return s.app.Listener(ln)
}

// Start makes the store consistent with a fresh process before serving:
// turns a crash left open become failed, sandboxes still running are
// adopted and dead ones marked for resume, sandboxes a crash left
// half-provisioned are destroyed, sessions that were being created are
// provisioned again, and every agent is ensured on the backend (in the
// background). Then it starts the warm pool manager and the idle reaper.
// Call it once, before Serve.
func (s *Server) Start(ctx context.Context) error {
	if err := s.o.recoverState(ctx); err != nil {
		return fmt.Errorf("start control plane: %w", err)
	}
	s.o.goBackground(s.o.pool.run)
	s.o.goBackground(s.o.reapIdle)
	s.started.Store(true)
	return nil
}

// Shutdown stops the server gracefully: readiness fails and new turns are
// refused, event streams end, the listener closes, and running turns may
// finish until ctx ends; then they are aborted (and recorded as such) and
// background jobs are cancelled. The caller closes the store afterwards.
func (s *Server) Shutdown(ctx context.Context) error {
	s.o.draining.Store(true)
	s.o.bus.close()
	s.cancelTTY()
	shut := make(chan error, 1)
	go func() { shut <- s.app.ShutdownWithContext(ctx) }()

	s.o.stop(ctx, s.cancelBase)
	s.relays.closeAndWait(ctx)
	err := <-shut
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		err = nil // connections still open were cut; that is the bound
	}
	return err
}
