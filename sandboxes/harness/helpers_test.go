package harness_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes/harness"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/sandboxes/protocol/sse"
)

const testToken = "test-harness-token"

// env is one in-process harness on loopback with its fake LLM.
type env struct {
	t      *testing.T
	cfg    harness.Config
	srv    *harness.Server
	url    string
	llm    *fakellm.Server
	stop   context.CancelFunc
	served chan error
}

// start runs a harness in a fresh workspace; opts adjust its Config.
func start(t *testing.T, opts ...func(*harness.Config)) *env {
	t.Helper()
	llm := fakellm.Start(t)
	cfg := harness.Config{
		AuthToken:      testToken,
		Workspace:      t.TempDir(),
		LLMBaseURL:     llm.URL(),
		LLMAPIKey:      "lapsb_test",
		Model:          "test/model",
		AgentPrompt:    "You are a test agent.",
		Env:            os.Environ(),
		RetryBaseDelay: time.Millisecond,
		MaxRetryDelay:  10 * time.Millisecond,
	}
	for _, o := range opts {
		o(&cfg)
	}
	e := &env{t: t, cfg: cfg, llm: llm}
	e.serve()
	return e
}

// serve starts a Server on e.cfg and waits until it is ready (or failed).
func (e *env) serve() {
	t := e.t
	t.Helper()
	srv, err := harness.New(e.cfg)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	e.srv, e.url, e.stop, e.served = srv, "http://"+ln.Addr().String(), cancel, make(chan error, 1)
	go func() { e.served <- srv.Serve(ctx, ln) }()
	t.Cleanup(e.shutdown)
	waitfor.Within(t, 30*time.Second, "harness prepared", func() bool {
		var id protocol.Identity
		return e.do("GET", "/", nil, &id) == 200 && (id.Ready || id.Error != "")
	})
}

// shutdown stops the harness and waits for Serve to return.
func (e *env) shutdown() {
	e.stop()
	select {
	case err := <-e.served:
		if err != nil {
			e.t.Errorf("Serve = %v", err)
		}
		e.served <- nil
	case <-time.After(30 * time.Second):
		e.t.Error("Serve did not return after shutdown")
	}
}

// restart shuts the harness down and starts a new one on the same workspace.
func (e *env) restart() {
	e.shutdown()
	e.serve()
}

// do sends a request with the auth token and decodes the JSON answer into
// out (if non-nil); it returns the status.
func (e *env) do(method, path string, body, out any) int {
	e.t.Helper()
	status, b := e.raw(method, path, body, "Bearer "+testToken)
	if out != nil && status < 300 && len(b) > 0 {
		require.NoError(e.t, json.Unmarshal(b, out), "decode %s %s: %s", method, path, b)
	}
	return status
}

// raw sends a request with the given Authorization header.
func (e *env) raw(method, path string, body any, auth string) (int, []byte) {
	e.t.Helper()
	var r io.Reader
	if s, ok := body.(string); ok {
		r = strings.NewReader(s) // sent as is, e.g. malformed JSON
	} else if body != nil {
		b, err := json.Marshal(body)
		require.NoError(e.t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.url+path, r)
	require.NoError(e.t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(e.t, err)
	return res.StatusCode, b
}

func (e *env) newSession(req protocol.CreateSessionRequest) string {
	e.t.Helper()
	var info protocol.SessionInfo
	require.Equal(e.t, 200, e.do("POST", "/session", req, &info))
	require.NotEmpty(e.t, info.ID)
	return info.ID
}

// send runs a turn and returns the assistant message.
func (e *env) send(id, text string) protocol.Message {
	e.t.Helper()
	var msg protocol.Message
	status := e.do("POST", "/session/"+id+"/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: text}}}, &msg)
	require.Equal(e.t, 200, status)
	return msg
}

func (e *env) repo() string { return filepath.Join(e.cfg.Workspace, harness.RepoDir) }

// events is a live subscription to GET /event.
type events struct {
	mu   sync.Mutex
	all  []protocol.Event
	more chan struct{}
}

// subscribe connects to GET /event and collects events until the test
// ends; it returns once server.connected arrived.
func (e *env) subscribe() *events {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", e.url+"/event", nil)
	require.NoError(e.t, err)
	req.Header.Set("Authorization", "Bearer "+testToken)
	res, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	require.Equal(e.t, 200, res.StatusCode)
	ev := &events{more: make(chan struct{}, 1)}
	go func() {
		defer res.Body.Close()
		r := sse.NewReader(res.Body)
		for {
			m, err := r.Next()
			if err != nil {
				return
			}
			var x protocol.Event
			if json.Unmarshal(m.Data, &x) != nil {
				continue
			}
			ev.mu.Lock()
			ev.all = append(ev.all, x)
			ev.mu.Unlock()
			select {
			case ev.more <- struct{}{}:
			default:
			}
		}
	}()
	ev.waitFor(e.t, func(x protocol.Event) bool { return x.Type == protocol.EventServerConnected })
	return ev
}

// waitFor waits until an event matches and returns every event so far.
func (ev *events) waitFor(t *testing.T, match func(protocol.Event) bool) []protocol.Event {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		ev.mu.Lock()
		all := append([]protocol.Event(nil), ev.all...)
		ev.mu.Unlock()
		for _, x := range all {
			if match(x) {
				return all
			}
		}
		select {
		case <-ev.more:
		case <-deadline:
			t.Fatalf("event not seen; got %d events: %+v", len(all), all)
		}
	}
}

// idle matches session.idle of session id.
func idle(id string) func(protocol.Event) bool {
	return func(x protocol.Event) bool {
		return x.Type == protocol.EventSessionIdle && x.Properties.SessionID == id
	}
}

// toolParts returns the tool parts of msg.
func toolParts(msg protocol.Message) []protocol.Part {
	var out []protocol.Part
	for _, p := range msg.Parts {
		if p.Type == protocol.PartTool {
			out = append(out, p)
		}
	}
	return out
}

// gitRepo makes a bare repository whose branch "feature" (not the
// default) holds README.md, and returns its file:// URL.
func gitRepo(t *testing.T, readme string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	git := func(dir string, args ...string) {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "git %v: %s", args, out)
	}
	require.NoError(t, os.MkdirAll(src, 0o755))
	git(src, "init", "-q", "-b", "trunk")
	require.NoError(t, os.WriteFile(filepath.Join(src, "README.md"), []byte("# trunk\n"), 0o644))
	git(src, "add", ".")
	git(src, "commit", "-q", "-m", "trunk")
	git(src, "checkout", "-q", "-b", "feature")
	require.NoError(t, os.WriteFile(filepath.Join(src, "README.md"), []byte(readme), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(src, "docs"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "docs", "guide.md"), []byte("guide\n"), 0o644))
	git(src, "add", ".")
	git(src, "commit", "-q", "-m", "feature")
	git(src, "checkout", "-q", "trunk")
	git(dir, "clone", "-q", "--bare", src, "repo.git")
	return "file://" + filepath.Join(dir, "repo.git")
}
