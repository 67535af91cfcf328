// Package claudeagentsdk_test runs the built Node.js harnesses — the
// claude-agent-sdk server (dist/server.js over the real Claude Agent SDK and
// its bundled Claude Code) and the opencode adapter (dist/opencode.js over
// the pinned opencode) — as real processes against the scripted fake LLM,
// offline. `make test` builds them first (npm ci + tsc).
package claudeagentsdk_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/sandboxes/protocol"
)

const token = "harness-secret"

// harness is one running harness process.
type harness struct {
	t         testing.TB
	url       string
	workspace string
	cmd       *exec.Cmd
	out       *syncBuffer
	exited    chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// built returns the path of a compiled entry point, failing with the fix
// when the TypeScript has not been built.
func built(t testing.TB, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("dist", name))
	require.NoError(t, err)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is not built (%v): run `make build` first", p, err)
	}
	return p
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startHarness runs `node entry` with the sandbox environment lapd gives,
// on workspace, and waits until GET / says ready.
func startHarness(t testing.TB, entry, workspace string, env map[string]string) *harness {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command("node", entry)
	cmd.Env = append(os.Environ(),
		fmt.Sprintf("PORT=%d", port),
		"HARNESS_AUTH_TOKEN="+token,
		"HARNESS_HOST=127.0.0.1",
		"WORKSPACE="+workspace,
		"LOG_LEVEL=DEBUG",
	)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// Its own process group, so cleanup reaches the agent's children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	h := &harness{t: t, url: fmt.Sprintf("http://127.0.0.1:%d", port), workspace: workspace, cmd: cmd, out: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = h.out, h.out
	require.NoError(t, cmd.Start())
	go func() {
		_ = cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(func() {
		h.stop()
		if t.Failed() {
			t.Logf("harness output:\n%s", h.out.String())
		}
	})

	deadline := time.Now().Add(3 * time.Minute)
	for {
		var id protocol.Identity
		resp, err := http.Get(h.url + "/")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&id)
			resp.Body.Close()
			if err == nil && id.Error != "" {
				t.Fatalf("harness failed to prepare: %s", id.Error)
			}
			if err == nil && id.Ready && h.status("GET", "/session") == http.StatusOK {
				return h
			}
		}
		select {
		case <-h.exited:
			t.Fatalf("harness exited before it was ready:\n%s", h.out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("harness not ready after 3 minutes:\n%s", h.out.String())
		}
	}
}

// stop sends SIGTERM and waits; a harness that does not stop is killed.
func (h *harness) stop() {
	select {
	case <-h.exited:
		return
	default:
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(30 * time.Second):
		h.t.Errorf("harness ignored SIGTERM for 30s")
	}
	// Whatever the harness left behind in its group goes too.
	_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
	<-h.exited
}

func (h *harness) request(method, path string, body any) *http.Response {
	h.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(h.t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, h.url+path, r)
	require.NoError(h.t, err)
	req.Header.Set("Authorization", protocol.Bearer(token))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(h.t, err, "%s %s", method, path)
	return resp
}

func (h *harness) status(method, path string) int {
	resp := h.request(method, path, nil)
	resp.Body.Close()
	return resp.StatusCode
}

// call does a request that must answer 200 and decodes the answer into out.
func (h *harness) call(method, path string, body, out any) {
	h.t.Helper()
	resp := h.request(method, path, body)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	require.Equal(h.t, http.StatusOK, resp.StatusCode, "%s %s: %s", method, path, b)
	if out != nil {
		require.NoError(h.t, json.Unmarshal(b, out), "%s %s: %s", method, path, b)
	}
}

func (h *harness) newSession(req protocol.CreateSessionRequest) string {
	var s protocol.SessionInfo
	h.call("POST", "/session", req, &s)
	require.NotEmpty(h.t, s.ID)
	return s.ID
}

func (h *harness) send(session, text string) protocol.Message {
	var m protocol.Message
	h.call("POST", "/session/"+session+"/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: text}}}, &m)
	return m
}

// events is a subscription to GET /event.
type events struct {
	mu      sync.Mutex
	list    []protocol.Event
	changed chan struct{}
}

// subscribe attaches to GET /event and returns once server.connected came.
func (h *harness) subscribe() *events {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", h.url+"/event", nil)
	require.NoError(h.t, err)
	req.Header.Set("Authorization", protocol.Bearer(token))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(h.t, err)
	require.Equal(h.t, http.StatusOK, resp.StatusCode)
	e := &events{changed: make(chan struct{})}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev protocol.Event
			if json.Unmarshal([]byte(data), &ev) != nil {
				continue
			}
			e.mu.Lock()
			e.list = append(e.list, ev)
			close(e.changed)
			e.changed = make(chan struct{})
			e.mu.Unlock()
		}
	}()
	e.wait(h.t, func(ev protocol.Event) bool { return ev.Type == protocol.EventServerConnected })
	return e
}

// wait returns the first event (in order) satisfying ok, waiting up to 3
// minutes for it.
func (e *events) wait(t testing.TB, ok func(protocol.Event) bool) protocol.Event {
	t.Helper()
	deadline := time.After(3 * time.Minute)
	for {
		e.mu.Lock()
		for _, ev := range e.list {
			if ok(ev) {
				e.mu.Unlock()
				return ev
			}
		}
		changed := e.changed
		e.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("event not seen in 3 minutes; got %d events", len(e.all()))
		}
	}
}

func (e *events) all() []protocol.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]protocol.Event(nil), e.list...)
}

// of returns the events of one session.
func (e *events) of(session string) []protocol.Event {
	var out []protocol.Event
	for _, ev := range e.all() {
		if ev.Properties.SessionID == session {
			out = append(out, ev)
		}
	}
	return out
}

// gitRepo makes a repository with README.md on branch main to clone.
func gitRepo(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	run := func(args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "git %v: %s", args, out)
	}
	run("init", "-q", "-b", "main")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "README.md"), []byte("# demo\nhello world\n"), 0o644))
	run("add", "README.md")
	run("commit", "-q", "-m", "first")
	return dir
}

// turn finds which scripted prompt the request's current turn answers (the
// last user message containing one of prompts) and how far it is: the tool
// results since then. Harnesses add reminders to user messages, so the
// match is by substring.
func turn(r fakellm.Request, prompts ...string) (prompt string, step int) {
	for i := len(r.Messages) - 1; i >= 0; i-- {
		m := r.Messages[i]
		if m.Role != "user" {
			continue
		}
		for _, p := range prompts {
			if strings.Contains(m.Text, p) {
				for _, later := range r.Messages[i+1:] {
					if later.Role == "tool" {
						step++
					}
				}
				return p, step
			}
		}
	}
	return "", 0
}

// summary renders a session's events as "type:detail" for order checks.
func summary(evs []protocol.Event) []string {
	var out []string
	for _, ev := range evs {
		s := ev.Type
		switch {
		case ev.Properties.Part != nil && ev.Properties.Part.State != nil:
			s += ":" + ev.Properties.Part.Tool + ":" + ev.Properties.Part.State.Status
		case ev.Properties.Part != nil:
			s += ":text"
		case ev.Properties.Info != nil && ev.Properties.Info.Time.Completed != 0:
			s += ":completed"
		case ev.Properties.Info != nil:
			s += ":open"
		}
		out = append(out, s)
	}
	return out
}

// indexOf returns the position of the first s in list at or after from, or -1.
func indexOf(list []string, s string, from int) int {
	for i := from; i < len(list); i++ {
		if list[i] == s {
			return i
		}
	}
	return -1
}
