package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/config"
	"lap.dev/lap/control/api"
	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/control/secrets"
	"lap.dev/lap/sandboxes/sandboxestest"
	"lap.dev/lap/store"
)

const testKey = "sk-lap-test-master-key-0123456789"

// env is one lapd control plane on loopback with the in-process test
// backend, a real bbolt file and real HTTP.
type env struct {
	t       testing.TB
	srv     *Server
	store   *store.Store
	backend *sandboxestest.Backend
	tokens  *sandboxtoken.Signer
	dir     string
	url     string
	client  *http.Client

	stopOnce   sync.Once
	ownBackend bool // closed by stop; false when the test passed one in
}

type envOptions struct {
	settings map[string]string
	backend  sandboxestest.Options
	// sandboxes, when set, is the backend to use (kept across a simulated
	// lapd restart); backend is then ignored.
	sandboxes *sandboxestest.Backend
	groups    []RouteGroup
	// noCleanup leaves shutdown to the test.
	noCleanup bool
	// warmTick, when set, is the warm pool's reconcile period; an hour
	// makes a test see only the reconciles that are asked for.
	warmTick time.Duration
}

func newEnv(t testing.TB, opts envOptions) *env {
	t.Helper()
	dir := t.TempDir()
	return startEnv(t, dir, opts)
}

// startEnv starts a control plane on the data dir dir (reused across a
// simulated restart).
func startEnv(t testing.TB, dir string, opts envOptions) *env {
	t.Helper()
	// No warm pool unless a test asks for one: most tests count the
	// sandboxes they make.
	vars := map[string]string{"MASTER_KEY": testKey, "LAP_DATA_DIR": dir, "LAP_LISTEN": "127.0.0.1:0", "WARM_POOL_SIZE": "0"}
	for k, v := range opts.settings {
		vars[k] = v
	}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := vars[k]; return v, ok }, "")
	require.NoError(t, err)
	st, err := store.Open(filepath.Join(dir, store.FileName), store.Options{})
	require.NoError(t, err)
	key, err := secrets.LoadKey(cfg.EncryptionKey, dir)
	require.NoError(t, err)
	box, err := secrets.New(key)
	require.NoError(t, err)
	tokens := sandboxtoken.NewSigner(box.DeriveKey(secrets.SandboxTokenLabel))
	backend := opts.sandboxes
	if backend == nil {
		backend = sandboxestest.New(opts.backend)
	}
	srv, err := New(Options{Config: cfg, Store: st, Backend: backend, Secrets: box, Tokens: tokens, Groups: opts.groups})
	require.NoError(t, err)
	srv.pingInterval = 50 * time.Millisecond
	if opts.warmTick > 0 {
		srv.o.pool.tick = opts.warmTick
	}
	require.NoError(t, srv.Start(context.Background()))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	e := &env{t: t, srv: srv, store: st, backend: backend, tokens: tokens, dir: dir,
		url: "http://" + ln.Addr().String(), client: &http.Client{Timeout: time.Minute}, ownBackend: opts.sandboxes == nil}
	if !opts.noCleanup {
		t.Cleanup(e.stop)
	}
	return e
}

// stop shuts the control plane down and checks the store.
func (e *env) stop() {
	e.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		assert.NoError(e.t, e.srv.Shutdown(ctx))
		assert.NoError(e.t, e.store.Check())
		assert.NoError(e.t, e.store.Close())
		if e.ownBackend {
			e.backend.Close()
		}
	})
}

// raw sends a request and returns the status and body.
func (e *env) raw(method, path, contentType string, body []byte, auth bool) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	require.NoError(e.t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+testKey)
	}
	resp, err := e.client.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	return resp.StatusCode, b
}

// do sends JSON (if body is not nil) under the API base path and decodes
// a JSON answer into out (if not nil).
func (e *env) do(method, path string, body, out any) int {
	e.t.Helper()
	var b []byte
	ct := ""
	if body != nil {
		var err error
		b, err = json.Marshal(body)
		require.NoError(e.t, err)
		ct = "application/json"
	}
	status, resp := e.raw(method, api.BasePath+path, ct, b, true)
	if out != nil && len(resp) > 0 {
		require.NoError(e.t, json.Unmarshal(resp, out), "decode %s %s (%d): %s", method, path, status, resp)
	}
	return status
}

// errorOf decodes an error body.
func errorOf(t *testing.T, body []byte) api.ErrorDetail {
	t.Helper()
	var eb api.ErrorBody
	require.NoError(t, json.Unmarshal(body, &eb), "error body %s", body)
	return eb.Error
}

func (e *env) createAgent(name string, extra map[string]any) api.Agent {
	e.t.Helper()
	body := map[string]any{"name": name, "harness_id": "claude-agent-sdk", "model": "anthropic/claude-sonnet-4-5",
		"prompt": "You are a helpful assistant.", "repo_url": "https://github.com/your-org/your-repo"}
	for k, v := range extra {
		body[k] = v
	}
	var a api.Agent
	require.Equal(e.t, http.StatusCreated, e.do(http.MethodPost, "/agents", body, &a))
	return a
}

// readySession creates a session and waits until it is ready.
func (e *env) readySession(agent string) api.Session {
	e.t.Helper()
	var sess api.Session
	require.Equal(e.t, http.StatusCreated, e.do(http.MethodPost, "/agents/"+agent+"/session", map[string]any{"title": "t"}, &sess))
	if sess.Status != api.SessionReady {
		require.Equal(e.t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"?wait=ready&timeout=60s", nil, &sess))
	}
	require.Equal(e.t, api.SessionReady, sess.Status, "session %+v", sess)
	return sess
}

func (e *env) send(sessionID, text string) (int, api.Message, []byte) {
	e.t.Helper()
	b, _ := json.Marshal(api.SendMessageRequest{Text: text})
	status, body := e.raw(http.MethodPost, api.BasePath+"/sessions/"+sessionID+"/message", "application/json", b, true)
	var m api.Message
	if status == http.StatusOK {
		require.NoError(e.t, json.Unmarshal(body, &m))
	}
	return status, m, body
}

func (e *env) messages(sessionID string) []api.Message {
	e.t.Helper()
	var list api.List[api.Message]
	require.Equal(e.t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sessionID+"/messages", nil, &list))
	return list.Data
}

func (e *env) session(id string) api.Session {
	e.t.Helper()
	var sess api.Session
	require.Equal(e.t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+id, nil, &sess))
	return sess
}

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for delay := time.Millisecond; ; delay = min(delay*2, 100*time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(delay)
	}
}

// sse is a client of one server-sent event stream.
type sse struct {
	resp *http.Response
	sc   *bufio.Scanner
}

type sseMsg struct {
	name string
	data []byte
}

func (e *env) openSSE(method, path string, body any) *sse {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.url+api.BasePath+path, rd)
	require.NoError(e.t, err)
	req.Header.Set("Authorization", "Bearer "+testKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{}).Do(req)
	require.NoError(e.t, err)
	require.Equal(e.t, http.StatusOK, resp.StatusCode)
	require.Equal(e.t, "text/event-stream", resp.Header.Get("Content-Type"))
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	return &sse{resp: resp, sc: sc}
}

// next returns the next named event (skipping keep-alives); ok is false at
// the end of the stream.
func (s *sse) next() (sseMsg, bool) {
	var m sseMsg
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "":
			if m.name != "" {
				return m, true
			}
		case strings.HasPrefix(line, "event: "):
			m.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			m.data = []byte(strings.TrimPrefix(line, "data: "))
		}
	}
	return m, false
}

func (s *sse) close() { s.resp.Body.Close() }

// pingGroup is a route group that authenticates its own callers, like the
// LLM gateway.
var pingGroup = RouteGroup{Prefix: "/llm", OwnAuth: true, Register: func(r fiber.Router) {
	r.Get("/ping", func(c *fiber.Ctx) error { return c.SendString("pong") })
}}
