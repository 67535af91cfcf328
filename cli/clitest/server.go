// Package clitest holds test helpers for the lap CLI: a real lapd control
// plane on loopback to run it against (Server: control.Server with the
// sandboxestest backend and a bbolt file), and a pseudo-terminal harness
// (Term, ChatSuite) that runs the built `lap` binary against any lapd.
// It is test-only code: importing control, store and the test backend
// here does not make cli/ depend on them (ARCHITECTURE §2, DESIGN.md).
package clitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"lap.dev/lap/config"
	"lap.dev/lap/control"
	"lap.dev/lap/control/api"
	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/control/secrets"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/sandboxestest"
	"lap.dev/lap/store"
)

// Server is a real lapd control plane for the CLI's tests: control.Server
// with a bbolt file in t.TempDir() and the in-process sandboxestest
// backend, whose scripted harnesses answer turns (see
// sandboxestest.Harness for the script: /block, /fail, /tools, …), served
// on loopback. The CLI talks to it over real HTTP through a thin recorder
// in front, which notes every request (Requests), pages listings by two
// (so clients follow cursors), can list harnesses lapd does not have yet
// (Options.ExtraHarnesses) and, for a session that has to be
// provisioned, makes the provisioning wait until the client watches it,
// so a client sees every phase in order however fast the test backend is.
type Server struct {
	// URL is the root the CLI is given, e.g. http://127.0.0.1:41234.
	URL string
	// Key is the master key.
	Key string
	// Store is the control plane's store, for tests that set up what a
	// lapd that ran before would have left (SeedSession).
	Store *store.Store

	warm  bool
	extra []api.Harness
	// holds: provisionings are held for a watching client (the test
	// backend's hook; not with Options.Backend).
	holds bool
	ctl   *control.Server
	srv   *httptest.Server

	mu       sync.Mutex
	requests []string
	// failWith, when set, fails every provision of a session's sandbox
	// with this reason.
	failWith string
	// armed counts session creations whose provisioning is to be held
	// until the client watches; held are the provisions waiting.
	armed int
	held  []*hold
}

// hold is one session provisioning held by the recorder until release
// is closed.
type hold struct{ release chan struct{} }

// Options tune NewServer.
type Options struct {
	// Warm gives every agent a warm pool of one sandbox, filled before
	// AddAgent and each warm session creation return, so every new
	// session is a warm claim, ready in the create answer.
	Warm bool
	// ExtraHarnesses are added to GET /harnesses. lapd's registry has no
	// harness without a chat API yet (terminal harnesses are to come),
	// so a test of how the CLI refuses one lists one here.
	ExtraHarnesses []api.Harness
	// Settings are extra lapd settings (e.g. SESSION_IDLE_TIMEOUT).
	Settings map[string]string
	// Backend, when set, runs the sandboxes instead of the test backend
	// (e.g. TTYBackend); the test closes it. Provisionings are then not
	// held for a watching client.
	Backend sandboxes.Backend
}

// DefaultPhases are the phases a client watching a cold session sees
// after "waiting for sandbox." (the recorder holds the provisioning until
// it watches, so it sees them all).
var DefaultPhases = []string{"provisioning sandbox", "starting harness"}

// TestKey is the master key of every Server.
const TestKey = "test-master-key-0123456789"

// NewServer starts a control plane; it is shut down (and its store
// checked) when the test ends.
func NewServer(t testing.TB, opts Options) *Server {
	t.Helper()
	dir := t.TempDir()
	pool := "0"
	if opts.Warm {
		pool = "1"
	}
	vars := map[string]string{"MASTER_KEY": TestKey, "LAP_DATA_DIR": dir, "LAP_LISTEN": "127.0.0.1:0", "WARM_POOL_SIZE": pool}
	maps.Copy(vars, opts.Settings)
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := vars[k]; return v, ok }, "")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	st, err := store.Open(filepath.Join(dir, store.FileName), store.Options{})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	key, err := secrets.LoadKey(cfg.EncryptionKey, dir)
	if err != nil {
		t.Fatalf("load key: %v", err)
	}
	box, err := secrets.New(key)
	if err != nil {
		t.Fatalf("secrets: %v", err)
	}
	s := &Server{Key: TestKey, Store: st, warm: opts.Warm, extra: opts.ExtraHarnesses}
	var backend sandboxes.Backend = opts.Backend
	if backend == nil {
		own := sandboxestest.New(sandboxestest.Options{BeforeProvision: s.beforeProvision})
		t.Cleanup(own.Close) // runs after the shutdown, registered later
		backend = own
		s.holds = true
	}
	s.ctl, err = control.New(control.Options{
		Config: cfg, Store: st, Backend: backend, Secrets: box,
		Tokens: sandboxtoken.NewSigner(box.DeriveKey(secrets.SandboxTokenLabel)),
	})
	if err != nil {
		t.Fatalf("control.New: %v", err)
	}
	if err := s.ctl.Start(context.Background()); err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.ctl.Serve(ln)
	target := &url.URL{Scheme: "http", Host: ln.Addr().String()}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.FlushInterval = -1 // server-sent events go through as they come
	s.srv = httptest.NewServer(s.recorder(proxy))
	s.URL = s.srv.URL
	t.Cleanup(func() {
		s.releaseAll()
		s.srv.CloseClientConnections()
		s.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := s.ctl.Shutdown(ctx); err != nil {
			t.Errorf("shut the control plane down: %v", err)
		}
		if err := st.Check(); err != nil {
			t.Errorf("store check: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

// Requests returns "METHOD /path" of every API request so far (path below
// the API base), in order.
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// FailProvisions makes every later provisioning of a session's sandbox
// fail with reason, as a backend that cannot clone the repo would.
func (s *Server) FailProvisions(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failWith = reason
}

// AddAgent creates an agent through the API. With Options.Warm it
// returns once the agent's warm sandbox is ready.
func (s *Server) AddAgent(t testing.TB, req api.CreateAgentRequest) api.Agent {
	t.Helper()
	var a api.Agent
	if status, body := s.call(http.MethodPost, "/agents", req, &a); status != http.StatusCreated {
		t.Fatalf("create agent %s: %d %s", req.Name, status, body)
	}
	if s.warm {
		s.waitWarm(t, a.ID)
	}
	return a
}

// SeedAgent writes an agent straight into the store, bypassing the API's
// validation, for an agent that names a harness this lapd does not run
// (one left by another lapd, say).
func (s *Server) SeedAgent(t testing.TB, name, harnessID string) {
	t.Helper()
	if _, err := s.Store.CreateAgent(context.Background(), store.Agent{Name: name, HarnessID: harnessID, Model: "mock/tools", Branch: "main", Generation: 1}); err != nil {
		t.Fatalf("seed agent %s: %v", name, err)
	}
}

// SeedSession writes an idle session of agent with the given id straight
// into the store, as a lapd that ran before leaves one whose sandbox is
// gone; the next message recovers it on a new sandbox. Tests use it to
// choose ids (two sharing their first 8 hex digits).
func (s *Server) SeedSession(t testing.TB, agent, id string) {
	t.Helper()
	ctx := context.Background()
	a, err := s.Store.ResolveAgent(ctx, agent)
	if err != nil {
		t.Fatalf("seed session %s: %v", id, err)
	}
	if _, err := s.Store.CreateSession(ctx, store.Session{
		ID: id, AgentID: a.ID, Status: api.SessionIdle, Phase: "suspended", Generation: a.Generation,
		IdleTimeoutMS: (15 * time.Minute).Milliseconds(),
	}); err != nil {
		t.Fatalf("seed session %s: %v", id, err)
	}
}

// waitWarm waits until agentID has a warm sandbox.
func (s *Server) waitWarm(t testing.TB, agentID string) {
	t.Helper()
	waitfor.Cond(t, "a warm sandbox of agent "+agentID, func() bool { return s.warmCount(agentID) > 0 })
}

func (s *Server) warmCount(agentID string) int {
	sbs, err := s.Store.ListSandboxes(context.Background(), store.SandboxFilter{AgentID: agentID, States: []string{store.SandboxWarm}})
	if err != nil {
		return 0
	}
	return len(sbs)
}

// call makes an API request with the master key straight to the server.
func (s *Server) call(method, path string, in, out any) (int, []byte) {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.URL+api.BasePath+path, body)
	if err != nil {
		return 0, []byte(err.Error())
	}
	req.Header.Set("Authorization", "Bearer "+s.Key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: Deadline}).Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		_ = json.Unmarshal(b, out)
	}
	return resp.StatusCode, b
}

// beforeProvision is the backend's hook: a provisioning armed by a
// session creation waits until the client watches the session; a
// session's provisioning fails if FailProvisions said so.
func (s *Server) beforeProvision(ctx context.Context, spec sandboxes.Spec) error {
	if spec.Role == sandboxes.RoleWarm {
		return nil
	}
	s.mu.Lock()
	var h *hold
	if s.armed > 0 {
		s.armed--
		h = &hold{release: make(chan struct{})}
		s.held = append(s.held, h)
	}
	failWith := s.failWith
	s.mu.Unlock()
	if h != nil {
		select {
		case <-h.release:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(Deadline):
			return errors.New("clitest: no client watched the session")
		}
	}
	if failWith != "" {
		return errors.New(failWith)
	}
	return nil
}

// recorder records each request and holds cold provisioning until the
// client watches: a session creation arms a hold and answers once the
// provisioning waits in the backend (the session is then "provisioning
// sandbox"); the client's first read of the session after subscribing
// to its events (or its long poll) releases it.
func (s *Server) recorder(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path, isAPI := strings.CutPrefix(r.URL.Path, api.BasePath)
		if !isAPI {
			next.ServeHTTP(w, r)
			return
		}
		s.mu.Lock()
		s.requests = append(s.requests, r.Method+" "+path)
		s.mu.Unlock()
		// Listings come in pages of two unless the client asks for
		// more, so every listing of a test follows next_cursor.
		if q := r.URL.Query(); r.Method == http.MethodGet && (path == "/agents" || path == "/sessions") && q.Get("limit") == "" {
			q.Set("limit", "2")
			r.URL.RawQuery = q.Encode()
		}
		authorized := r.Header.Get("Authorization") == "Bearer "+s.Key
		switch {
		case authorized && s.holds && r.Method == http.MethodPost && strings.HasPrefix(path, "/agents/") && strings.HasSuffix(path, "/session"):
			s.createSession(w, r, next)
		case authorized && r.Method == http.MethodGet && path == "/harnesses" && len(s.extra) > 0:
			s.listHarnesses(w, r, next)
		case authorized && r.Method == http.MethodGet && isSessionPath(path) && r.URL.Query().Get("wait") != "":
			s.releaseAll()
			next.ServeHTTP(w, r)
		case authorized && r.Method == http.MethodGet && isSessionPath(path):
			next.ServeHTTP(w, r)
			s.releaseAll()
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// listHarnesses answers GET /harnesses with lapd's list and
// Options.ExtraHarnesses after it.
func (s *Server) listHarnesses(w http.ResponseWriter, r *http.Request, next http.Handler) {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	var list api.List[api.Harness]
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &list) != nil {
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return
	}
	list.Data = append(list.Data, s.extra...)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}

// isSessionPath reports whether path is /sessions/<id>.
func isSessionPath(path string) bool {
	id, ok := strings.CutPrefix(path, "/sessions/")
	return ok && id != "" && !strings.Contains(id, "/")
}

// createSession forwards a session creation with a hold armed; a cold
// session's answer waits until its provisioning is held, a warm claim's
// until the pool has a warm sandbox again (so the next session is a warm
// claim too).
func (s *Server) createSession(w http.ResponseWriter, r *http.Request, next http.Handler) {
	s.mu.Lock()
	s.armed++
	armedAt := len(s.held)
	s.mu.Unlock()
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	var sess api.Session
	_ = json.Unmarshal(rec.Body.Bytes(), &sess)
	if rec.Code == http.StatusCreated && sess.Status == api.SessionCreating {
		ok := waitfor.Poll(r.Context(), Deadline, 0, func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.held) > armedAt
		})
		if !ok {
			http.Error(w, fmt.Sprintf("clitest: session %s never reached the backend", sess.ID), http.StatusInternalServerError)
			return
		}
	} else {
		s.mu.Lock()
		s.armed = max(s.armed-1, 0)
		s.mu.Unlock()
		if rec.Code == http.StatusCreated && s.warm {
			waitfor.Poll(r.Context(), Deadline, 0, func() bool { return s.warmCount(sess.AgentID) > 0 })
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// releaseAll lets every held provisioning go on.
func (s *Server) releaseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.held {
		select {
		case <-h.release:
		default:
			close(h.release)
		}
	}
}
