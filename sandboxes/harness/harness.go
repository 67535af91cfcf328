// Package harness is lap's default harness: the server that runs inside
// every sandbox. It prepares the agent's workspace (a shallow clone of the
// agent's repo), speaks the harness protocol (ARCHITECTURE §5, a subset of
// the opencode server API, wire types in sandboxes/protocol), and runs each
// turn as a tool-using agent loop against an OpenAI-compatible
// chat-completions API: the model streams text and tool calls, the harness
// runs the tools (bash, read_file, write_file, edit_file, list_files, grep)
// in the workspace and feeds the results back until the model answers.
//
// A Server is built with New and served with Serve; other packages' tests
// run a real harness in-process on a loopback listener the same way
// cmd/lap-harness does. Every session's transcript is written to
// $WORKSPACE/.lap/sessions/<id>.json after every step, so a harness
// restarted on the same workspace continues every session.
package harness

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Config is everything a harness needs. cmd/lap-harness fills it from the
// sandbox environment (ARCHITECTURE §5); zero durations and limits take
// the defaults documented on each field.
type Config struct {
	// AuthToken is HARNESS_AUTH_TOKEN: the bearer token every route but
	// GET / requires. Empty turns auth off (local development only; bind
	// to loopback then, see ListenAddr).
	AuthToken string
	// Workspace is WORKSPACE: the repo is cloned to <Workspace>/repo and
	// the harness keeps its state under <Workspace>/.lap. Required.
	Workspace string
	// RepoURL, Branch and GitToken say what to clone. No RepoURL gives an
	// empty repo directory; no Branch clones the remote's default branch.
	// GitToken, when set, authenticates the clone over HTTP(S) and is
	// kept out of logs and out of the tools' environment.
	RepoURL  string
	Branch   string
	GitToken string
	// RepoDir, when set, is an existing directory the agent works in
	// instead of <Workspace>/repo, and nothing is cloned (REPO_DIR: local
	// development on a checkout, as with LOCAL_SANDBOX_URL).
	RepoDir string
	// AgentPrompt is AGENT_PROMPT, the start of every system prompt.
	AgentPrompt string
	// Model is LAP_MODEL, used when a message names no model. Names such
	// as anthropic/claude-sonnet-4-5 are passed through unchanged.
	Model string
	// LLMBaseURL is LITELLM_API_BASE, the root of an OpenAI-compatible API
	// (lapd's /llm gateway in lap); "/v1" is appended unless it ends with
	// it. Required.
	LLMBaseURL string
	// LLMAPIKey is LITELLM_API_KEY, sent as the bearer token to the LLM.
	LLMAPIKey string
	// Env is the environment tools and git start from (cmd/lap-harness
	// passes os.Environ()). HARNESS_AUTH_TOKEN, LITELLM_API_KEY and
	// GIT_TOKEN are always removed from it. Nil gives a minimal PATH.
	Env []string
	// Logger receives the harness's diagnostics (default: discarded).
	Logger *slog.Logger
	// Version is reported at GET / (default "dev").
	Version string

	// MaxSteps bounds the LLM calls of one turn (default 50).
	MaxSteps int
	// MaxRetries bounds the retries of one LLM call that failed with 429,
	// 5xx or a transport error before anything was streamed (default 4;
	// negative disables retries).
	MaxRetries int
	// RetryBaseDelay is the first retry's wait, doubled for each further
	// retry with jitter (default 1s); a Retry-After header raises it.
	RetryBaseDelay time.Duration
	// MaxRetryDelay caps one retry's wait (default 30s).
	MaxRetryDelay time.Duration
	// HeartbeatInterval is the period of server.heartbeat on GET /event
	// (default 10s).
	HeartbeatInterval time.Duration
	// BashTimeout is the default timeout of a bash command (default 2m);
	// the model may ask for up to MaxBashTimeout (default 30m).
	BashTimeout    time.Duration
	MaxBashTimeout time.Duration
	// OutputLimit caps what one tool call returns to the model, in bytes
	// (default 50000); longer output is cut with a note saying so.
	OutputLimit int
	// ShutdownGrace is how long Serve lets running turns finish after its
	// context ends before aborting them (default 10s).
	ShutdownGrace time.Duration
	// HTTPClient calls the LLM (default: a client without overall timeout,
	// since turns stream for minutes).
	HTTPClient *http.Client
}

// Defaults of Config's zero fields.
const (
	DefaultMaxSteps          = 50
	DefaultMaxRetries        = 4
	DefaultRetryBaseDelay    = time.Second
	DefaultMaxRetryDelay     = 30 * time.Second
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultBashTimeout       = 2 * time.Minute
	DefaultMaxBashTimeout    = 30 * time.Minute
	DefaultOutputLimit       = 50_000
	DefaultShutdownGrace     = 10 * time.Second
)

// Name is the harness's name at GET /.
const Name = "lap"

// Directories and files inside the workspace.
const (
	RepoDir     = "repo"          // the agent's repository
	StateDir    = ".lap"          // the harness's own state
	SessionsDir = ".lap/sessions" // one <id>.json transcript per session
)

// ListenAddr is the address to listen on for port: host (HARNESS_HOST)
// when set; else every interface when auth is on (a pod is reached from
// outside it), and 127.0.0.1 only when authToken is empty, so an
// unauthenticated harness is never reachable from elsewhere. The local
// backend sets HARNESS_HOST=127.0.0.1: its harnesses are only for lapd.
func ListenAddr(host, port, authToken string) string {
	if host == "" && authToken == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func (c *Config) setDefaults() {
	setDefault(&c.MaxSteps, DefaultMaxSteps)
	setDefault(&c.MaxRetries, DefaultMaxRetries)
	if c.MaxRetries < 0 {
		c.MaxRetries = 0
	}
	setDefault(&c.RetryBaseDelay, DefaultRetryBaseDelay)
	setDefault(&c.MaxRetryDelay, DefaultMaxRetryDelay)
	setDefault(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	setDefault(&c.BashTimeout, DefaultBashTimeout)
	setDefault(&c.MaxBashTimeout, DefaultMaxBashTimeout)
	setDefault(&c.OutputLimit, DefaultOutputLimit)
	setDefault(&c.ShutdownGrace, DefaultShutdownGrace)
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Env == nil {
		c.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Server is one harness. It is safe for concurrent use.
type Server struct {
	cfg      Config
	log      *slog.Logger
	repo     string // <Workspace>/repo, absolute
	sessDir  string // <Workspace>/.lap/sessions
	llm      *llmClient
	tools    *toolbox
	bus      *bus
	ws       workspaceState
	handler  http.Handler
	started  time.Time
	stopOnce sync.Once

	// turnCtx is the parent of every turn: turns outlive the HTTP request
	// that started them, and end when the server is closed.
	turnCtx    context.Context
	stopTurns  context.CancelCauseFunc
	turns      sync.WaitGroup
	mu         sync.Mutex
	sessions   map[string]*session
	shutdownMu sync.Mutex
	closed     bool
}

// New checks cfg, creates the workspace's state directories and loads
// every persisted session. It does not clone: Serve (or Prepare) does.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if cfg.Workspace == "" {
		return nil, errors.New("workspace is required (WORKSPACE)")
	}
	if cfg.LLMBaseURL == "" {
		return nil, errors.New("LLM base URL is required (LITELLM_API_BASE)")
	}
	if u, err := url.Parse(cfg.LLMBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("LLM base URL %q (LITELLM_API_BASE) is not an http(s) URL", cfg.LLMBaseURL)
	}
	ws, err := filepath.Abs(cfg.Workspace)
	if err != nil {
		return nil, fmt.Errorf("resolve workspace %s: %w", cfg.Workspace, err)
	}
	cfg.Workspace = ws
	repo := filepath.Join(ws, RepoDir)
	if cfg.RepoDir != "" {
		if repo, err = filepath.Abs(cfg.RepoDir); err != nil {
			return nil, fmt.Errorf("resolve repo directory %s: %w", cfg.RepoDir, err)
		}
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		repo:     repo,
		sessDir:  filepath.Join(ws, SessionsDir),
		bus:      newBus(),
		started:  time.Now(),
		sessions: map[string]*session{},
	}
	s.turnCtx, s.stopTurns = context.WithCancelCause(context.Background())
	if err := os.MkdirAll(s.sessDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	s.llm = newLLMClient(cfg)
	s.tools = newToolbox(s.repo, toolEnv(cfg.Env), cfg)
	if err := s.loadSessions(); err != nil {
		return nil, err
	}
	s.handler = s.routes()
	return s, nil
}

// Handler returns the harness protocol's HTTP handler. Serve uses it; a
// caller serving it itself must call Prepare and Close.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve prepares the workspace in the background and serves the harness
// protocol on ln until ctx ends. Then it stops taking requests, gives
// running turns Config.ShutdownGrace to finish, aborts the rest (their
// transcripts record the abort) and returns. It returns nil after a
// shutdown caused by ctx, or the listener's error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		if err := s.Prepare(ctx); err != nil {
			s.log.Error("workspace not prepared", "err", err)
		}
	}()
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.log.Info("harness serving", "addr", ln.Addr().String(), "workspace", s.cfg.Workspace, "auth", s.cfg.AuthToken != "")

	select {
	case err := <-errc:
		s.Close()
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	s.log.Info("harness shutting down")
	grace, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	// Event streams never end on their own; end them so Shutdown only
	// waits for requests that finish (blocking turns). Shutdown gets a
	// little longer than the grace, so turns aborted at its end can still
	// send their answers.
	s.bus.close()
	drained := make(chan struct{})
	drainCtx, cancelDrain := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace+5*time.Second)
	defer cancelDrain()
	go func() {
		_ = hs.Shutdown(drainCtx)
		close(drained)
	}()
	s.waitTurns(grace)
	s.Close()
	<-drained
	_ = hs.Close()
	return nil
}

// waitTurns waits for every running turn to end or ctx to end.
func (s *Server) waitTurns(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		s.turns.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// Close aborts every running turn, waits (briefly) until each has recorded
// its end, and ends every event stream. The Server answers no more turns.
func (s *Server) Close() {
	s.stopOnce.Do(func() {
		s.shutdownMu.Lock()
		s.closed = true
		s.shutdownMu.Unlock()
		s.stopTurns(errShutdown)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.waitTurns(ctx)
		s.bus.close()
	})
}

// session returns the session with id, if any.
func (s *Server) session(id string) (*session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[id]
	return sess, ok
}

// sessionList returns every session, oldest first: by creation time
// (milliseconds), then by id. Ids are random, so they only break ties.
func (s *Server) sessionList() []*session {
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		list = append(list, sess)
	}
	s.mu.Unlock()
	created := make(map[*session]int64, len(list))
	for _, sess := range list {
		sess.mu.Lock()
		created[sess] = sess.t.Created
		sess.mu.Unlock()
	}
	sort.Slice(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if created[a] != created[b] {
			return created[a] < created[b]
		}
		return a.id < b.id
	})
	return list
}

// llmBaseURL is the OpenAI API root for a LITELLM_API_BASE value.
func llmBaseURL(base string) string {
	base = strings.TrimRight(base, "/")
	if !strings.HasSuffix(base, "/v1") {
		base += "/v1"
	}
	return base + "/"
}
