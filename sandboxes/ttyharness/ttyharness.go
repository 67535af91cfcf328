// Package ttyharness is lap's terminal harness: the server inside a sandbox
// that runs a terminal coding agent (Claude Code or Codex, a TUI) under
// tmux and relays its terminal over a WebSocket. It prepares the workspace
// as lap-harness does (sandboxes/harness.PrepareRepo), writes the tool's
// configuration for unattended use with lapd's LLM gateway as its only
// endpoint, keeps the tool running in a tmux session (restarted when the
// tool exits), and serves:
//
//   - GET /              identity, no auth: {"harness":"claude-code",…}
//   - GET /session       readiness: 2xx once the tool runs in tmux
//   - GET /tty           WebSocket: one tmux client per connection
//   - GET /tty/activity  attached clients and the last keystroke
//
// Every route but GET / needs Authorization: Bearer $HARNESS_AUTH_TOKEN;
// GET /tty also takes it as ?token= (browsers cannot set headers on a
// WebSocket). The WebSocket protocol (lap-contract "TTY mode"): client
// binary messages are terminal input, client text messages
// {"type":"resize","cols":C,"rows":R} resize the terminal, server binary
// messages are terminal output. Closing the socket ends only that tmux
// client; the tool keeps running, and the next attach redraws its screen.
//
// os/exec lives here (ARCHITECTURE §2: the harness tools may use it).
package ttyharness

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"lap.dev/lap/sandboxes/harness"
	"lap.dev/lap/sandboxes/protocol"
)

// Config is everything a terminal harness needs. cmd/lap-tty-harness
// fills it from the sandbox environment (ARCHITECTURE §5) plus
// LAP_TTY_TOOL and LAP_TTY_TOOL_BIN.
type Config struct {
	// Tool is the terminal agent to run: ToolClaudeCode or ToolCodex.
	Tool string
	// ToolBin is the tool's executable (default: its usual name on PATH,
	// "claude" or "codex").
	ToolBin string
	// TmuxBin is tmux's executable (default "tmux" on PATH).
	TmuxBin string
	// AuthToken is HARNESS_AUTH_TOKEN; empty turns auth off (local
	// development only, see harness.ListenAddr).
	AuthToken string
	// Workspace is WORKSPACE: the repo goes to <Workspace>/repo, the
	// harness's state (the tool's $HOME, the tmux socket) to
	// <Workspace>/.lap. Required.
	Workspace string
	// RepoURL, Branch, GitToken and RepoDir say what to clone, as for
	// lap-harness (harness.Config).
	RepoURL  string
	Branch   string
	GitToken string
	RepoDir  string
	// AgentPrompt is AGENT_PROMPT, added to the tool's system prompt.
	AgentPrompt string
	// Model is LAP_MODEL, the model the tool asks the gateway for.
	Model string
	// LLMBaseURL is LITELLM_API_BASE (lapd's /llm gateway); required.
	LLMBaseURL string
	// LLMAPIKey is LITELLM_API_KEY, the sandbox's stub token, given to the
	// tool as its API token and to nothing else it runs.
	LLMAPIKey string
	// Env is the environment the tool starts from (cmd passes
	// os.Environ()); the sandbox's secrets are always removed from it.
	Env []string
	// Cols and Rows are the terminal's size before any client resizes it
	// (default 120×40).
	Cols, Rows int
	// Logger receives diagnostics (default: discarded).
	Logger *slog.Logger
	// Version is reported at GET / (default "dev").
	Version string
}

// Tools a terminal harness runs; each is also the harness's id in
// sandboxes.Harnesses.
const (
	ToolClaudeCode = "claude-code"
	ToolCodex      = "codex"
)

// Files inside <Workspace>/.lap.
const (
	// HomeDir is the tool's $HOME: its config and conversations live in the
	// workspace, so they survive a scale to zero with it.
	HomeDir = "home"
	// SocketName is tmux's socket: private to this harness.
	SocketName = "tmux.sock"
	// SessionName is the tmux session the tool runs in.
	SessionName = "lap"
)

// Identity is the body of GET /: protocol.Identity plus what makes a
// terminal harness.
type Identity struct {
	protocol.Identity
	// Tool is the terminal agent this harness runs.
	Tool string `json:"tool"`
	// TTY is always true: the harness serves GET /tty.
	TTY bool `json:"tty"`
	// Running is true while the tool's tmux session exists (false for a
	// moment while a tool that exited is started again).
	Running bool `json:"running"`
}

// Activity is the body of GET /tty/activity: what lapd counts as use of
// a terminal session, so an attached or typed-into terminal is not idle.
type Activity struct {
	// Attached is how many WebSocket clients are attached now.
	Attached int `json:"attached"`
	// LastInput is when a client last sent input (zero: never).
	LastInput time.Time `json:"last_input,omitzero"`
	// LastAttach is when a client last attached or detached (zero: never).
	LastAttach time.Time `json:"last_attach,omitzero"`
}

// Server is one terminal harness. It is safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	tool    tool
	repo    string // the agent's repo, absolute
	state   string // <Workspace>/.lap
	home    string // the tool's $HOME
	tmux    *tmux
	handler http.Handler
	started time.Time

	sessionMu sync.Mutex // serialises starting the tmux server and session

	mu       sync.Mutex
	ready    bool   // the tool runs in tmux
	failed   string // the failed preparation
	progress string // the latest progress message

	running    atomic.Bool // the tool's tmux session exists, as the supervisor saw
	attached   atomic.Int64
	lastInput  atomic.Int64 // unix nanos
	lastAttach atomic.Int64 // unix nanos

	// stop ends the attach clients when the server shuts down.
	stop     context.Context
	stopAll  context.CancelFunc
	wg       sync.WaitGroup
	closeOne sync.Once
}

// New checks cfg and creates the harness's state directory. It starts
// nothing: Serve (or Start) prepares the workspace and runs the tool.
func New(cfg Config) (*Server, error) {
	if cfg.Workspace == "" {
		return nil, errors.New("workspace is required (WORKSPACE)")
	}
	if cfg.LLMBaseURL == "" {
		return nil, errors.New("LLM base URL is required (LITELLM_API_BASE)")
	}
	if u, err := url.Parse(cfg.LLMBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("LLM base URL %q (LITELLM_API_BASE) is not an http(s) URL", cfg.LLMBaseURL)
	}
	t, ok := tools[cfg.Tool]
	if !ok {
		return nil, fmt.Errorf("unknown terminal tool %q (want %s or %s)", cfg.Tool, ToolClaudeCode, ToolCodex)
	}
	if cfg.ToolBin == "" {
		cfg.ToolBin = t.bin
	}
	if cfg.TmuxBin == "" {
		cfg.TmuxBin = "tmux"
	}
	if cfg.Cols <= 0 {
		cfg.Cols = 120
	}
	if cfg.Rows <= 0 {
		cfg.Rows = 40
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Env == nil {
		cfg.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	ws, err := filepath.Abs(cfg.Workspace)
	if err != nil {
		return nil, fmt.Errorf("resolve workspace %s: %w", cfg.Workspace, err)
	}
	cfg.Workspace = ws
	repo := filepath.Join(ws, harness.RepoDir)
	if cfg.RepoDir != "" {
		if repo, err = filepath.Abs(cfg.RepoDir); err != nil {
			return nil, fmt.Errorf("resolve repo directory %s: %w", cfg.RepoDir, err)
		}
	}
	state := filepath.Join(ws, harness.StateDir)
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	sock := filepath.Join(state, SocketName)
	// A unix socket's path is limited to 107 bytes; say so rather than
	// let tmux fail with a bare "File name too long".
	if len(sock) > 100 {
		return nil, fmt.Errorf("tmux socket path %s is too long for a unix socket: use a shorter WORKSPACE", sock)
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		tool:    t,
		repo:    repo,
		state:   state,
		home:    filepath.Join(state, HomeDir),
		started: time.Now(),
	}
	s.tmux = &tmux{bin: cfg.TmuxBin, socket: sock, conf: filepath.Join(state, "tmux.conf"), log: s.log}
	s.stop, s.stopAll = context.WithCancel(context.Background())
	s.handler = s.routes()
	return s, nil
}

// Handler returns the harness's HTTP handler. A caller serving it itself
// must call Start and Close.
func (s *Server) Handler() http.Handler { return s.handler }

// Socket is the path of the tmux socket the tool runs behind, for tests
// and debugging (`tmux -S <socket> attach -t lap`).
func (s *Server) Socket() string { return s.tmux.socket }

// Start prepares the workspace and the tool's configuration, then keeps
// the tool running in tmux until ctx ends; it returns at once. Readiness
// (GET /session) turns 2xx once the tool's tmux session first runs.
func (s *Server) Start(ctx context.Context) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.prepare(ctx); err != nil {
			s.setFailed(err)
			s.log.Error("terminal harness not prepared", "err", err)
			return
		}
		s.supervise(ctx)
	}()
}

// Serve starts the harness (Start) and serves it on ln until ctx ends;
// then it closes every attached client and the tmux server. It returns
// nil after a shutdown caused by ctx, or the listener's error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.Start(ctx)
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.log.Info("terminal harness serving", "addr", ln.Addr().String(), "tool", s.cfg.Tool, "workspace", s.cfg.Workspace, "auth", s.cfg.AuthToken != "")
	var err error
	select {
	case err = <-errc:
		err = fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	cancel()
	s.Close()
	shut, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	_ = hs.Shutdown(shut)
	return err
}

// Close ends every attach client and kills the tmux server (and the tool
// with it). The workspace, with the tool's conversations, stays.
func (s *Server) Close() {
	s.closeOne.Do(func() {
		s.stopAll()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.tmux.killServer(ctx)
		s.wg.Wait()
	})
}

// prepare clones the repo and writes the tool's configuration.
func (s *Server) prepare(ctx context.Context) error {
	err := harness.PrepareRepo(ctx, harness.RepoSpec{
		Workspace: s.cfg.Workspace,
		Dir:       s.repo,
		Existing:  s.cfg.RepoDir != "",
		URL:       s.cfg.RepoURL,
		Branch:    s.cfg.Branch,
		GitToken:  s.cfg.GitToken,
		Env:       s.cfg.Env,
		Progress:  s.setProgress,
		Logger:    s.log,
	})
	if err != nil {
		return err
	}
	// A missing CLI would only show as a terminal that keeps ending.
	if _, err := exec.LookPath(s.cfg.ToolBin); err != nil {
		return fmt.Errorf("%s's CLI: %w (run make build, or set LAP_TTY_TOOL_BIN)", s.cfg.Tool, err)
	}
	if _, err := exec.LookPath(s.cfg.TmuxBin); err != nil {
		return fmt.Errorf("tmux: %w", err)
	}
	if err := os.MkdirAll(s.home, 0o700); err != nil {
		return fmt.Errorf("create the tool's home: %w", err)
	}
	if err := s.tool.configure(s); err != nil {
		return fmt.Errorf("configure %s: %w", s.cfg.Tool, err)
	}
	if err := s.tmux.writeConf(); err != nil {
		return err
	}
	s.setProgress("workspace ready, starting " + s.cfg.Tool)
	return nil
}

func (s *Server) setProgress(msg string) {
	s.mu.Lock()
	s.progress = msg
	s.mu.Unlock()
}

func (s *Server) setFailed(err error) {
	s.mu.Lock()
	s.failed = err.Error()
	s.mu.Unlock()
}

func (s *Server) setReady() {
	s.mu.Lock()
	first := !s.ready
	s.ready = true
	s.mu.Unlock()
	if first {
		s.log.Info("terminal ready", "tool", s.cfg.Tool, "after", time.Since(s.started).Round(time.Millisecond))
	}
}

// status reports readiness, the failure and the latest progress.
func (s *Server) status() (ready bool, failed, progress string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready, s.failed, s.progress
}

// supervise keeps the tool running in its tmux session until ctx ends:
// when the tool exits its session ends, and a new one is started (with the
// tool's "continue the last conversation" flag when it has one), so an
// attach always finds a terminal. Quick repeated exits back off.
func (s *Server) supervise(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		began := time.Now()
		if err := s.ensureSession(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Error("start the tool's tmux session", "err", err)
			s.setProgress("starting " + s.cfg.Tool + ": " + err.Error())
		} else {
			s.running.Store(true)
			s.setReady()
			// Blocks until the session ends (the tool exited or was killed).
			if err := s.tmux.waitSession(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("watching the tool's tmux session", "err", err)
			}
			s.running.Store(false)
			if ctx.Err() != nil {
				return
			}
			s.log.Info("the tool's session ended; restarting it", "tool", s.cfg.Tool, "ran", time.Since(began).Round(time.Millisecond))
		}
		if time.Since(began) > time.Minute {
			backoff = time.Second
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// ensureSession starts the tool's tmux session unless it runs already,
// first the tmux server as the harness's child unless one answers (one
// left by an earlier harness on this workspace is adopted, tool and all).
func (s *Server) ensureSession(ctx context.Context) error {
	s.sessionMu.Lock()
	defer s.sessionMu.Unlock()
	argv, env := s.tool.command(s)
	if !s.tmux.serverUp(ctx) {
		if _, err := s.tmux.startServer(s.stop, env); err != nil {
			return err
		}
	}
	return s.tmux.newSession(ctx, s.repo, env, s.cfg.Cols, s.cfg.Rows, argv)
}

// toolEnv is the tool's environment: the sandbox's without its secrets
// and without variables that would point the tool elsewhere, with $HOME in
// the workspace, a terminal type, and then extra.
func (s *Server) toolEnv(drop []string, extra ...string) []string {
	env := harness.ScrubSecrets(s.cfg.Env)
	drop = append(drop, "HOME", "TERM", "TMUX", "TMUX_PANE", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")
	out := make([]string, 0, len(env)+len(extra)+4)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		dropped := false
		for _, d := range drop {
			if k == d {
				dropped = true
				break
			}
		}
		if !dropped {
			out = append(out, kv)
		}
	}
	out = append(out, "HOME="+s.home, "TERM=xterm-256color",
		"GIT_AUTHOR_NAME=lap agent", "GIT_AUTHOR_EMAIL=agent@lap.invalid",
		"GIT_COMMITTER_NAME=lap agent", "GIT_COMMITTER_EMAIL=agent@lap.invalid")
	return append(out, extra...)
}

// routes registers the harness's routes behind the bearer-token check.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.serveIdentity)
	mux.HandleFunc("GET /session", s.serveReadiness)
	mux.HandleFunc("GET /tty", s.serveTTY)
	mux.HandleFunc("GET /tty/activity", s.serveActivity)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route %s %s", r.Method, r.URL.Path))
	})
	return s.authenticate(mux)
}

// authenticate requires the bearer token on every route but GET /; GET
// /tty also accepts it as ?token=, as LAP's CLI sends both.
func (s *Server) authenticate(next http.Handler) http.Handler {
	want := []byte(s.cfg.AuthToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		open := s.cfg.AuthToken == "" || (r.Method == http.MethodGet && r.URL.Path == "/")
		if !open {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok && r.URL.Path == "/tty" {
				got, ok = r.URL.Query().Get("token"), true
			}
			if !ok || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
				writeError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// serveIdentity is GET /: who this harness is and whether its tool runs.
// It needs no token, so a failed clone can be diagnosed.
func (s *Server) serveIdentity(w http.ResponseWriter, _ *http.Request) {
	ready, failed, _ := s.status()
	writeJSON(w, http.StatusOK, Identity{
		Identity: protocol.Identity{
			Harness:   s.cfg.Tool,
			Version:   s.cfg.Version,
			Ready:     ready,
			Workspace: s.repo,
			Error:     failed,
		},
		Tool:    s.cfg.Tool,
		TTY:     true,
		Running: s.running.Load(),
	})
}

// serveReadiness is GET /session, the readiness probe lapd polls: 503
// until the tool first runs in tmux (with the clone error if preparing
// failed), then 200 with an empty list: a terminal harness has no
// protocol sessions, its one conversation lives in the tool.
func (s *Server) serveReadiness(w http.ResponseWriter, _ *http.Request) {
	ready, failed, progress := s.status()
	switch {
	case ready:
		writeJSON(w, http.StatusOK, []protocol.SessionInfo{})
	case failed != "":
		writeError(w, http.StatusServiceUnavailable, "unavailable", "workspace failed: "+failed)
	default:
		writeError(w, http.StatusServiceUnavailable, "unavailable", "terminal not ready: "+progress)
	}
}

// serveActivity is GET /tty/activity.
func (s *Server) serveActivity(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Activity())
}

// Activity returns the terminal's current use.
func (s *Server) Activity() Activity {
	a := Activity{Attached: int(s.attached.Load())}
	if n := s.lastInput.Load(); n != 0 {
		a.LastInput = time.Unix(0, n).UTC()
	}
	if n := s.lastAttach.Load(); n != 0 {
		a.LastAttach = time.Unix(0, n).UTC()
	}
	return a
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers {"error":{"code","message"}}, as lapd and lap-harness do.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	b.Error.Code, b.Error.Message = code, msg
	writeJSON(w, status, b)
}
