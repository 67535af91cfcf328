// Package claudeagentsdk_test runs the built Node.js harnesses — the
// claude-agent-sdk server (dist/server.js over the real Claude Agent SDK and
// its bundled Claude Code) and the opencode adapter (dist/opencode.js over
// the pinned opencode) — as real processes against the scripted fake LLM,
// offline. `make test` builds them first (npm ci + tsc).
package claudeagentsdk_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/gateway/mockllm"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/sandboxes/protocol/sse"
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
// when the TypeScript has not been built. Every test of a Node.js harness
// starts here, so here is where they skip under -short (make
// test-short): they run the real SDK and opencode processes, for minutes.
func built(t testing.TB, name string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("Node.js harness processes (the Claude Agent SDK, opencode): skipped in -short mode (make test runs them)")
	}
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
		r := sse.NewReader(resp.Body)
		for {
			m, err := r.Next()
			if err != nil {
				return
			}
			var ev protocol.Event
			if json.Unmarshal(m.Data, &ev) != nil {
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

// The flows below are shared by the claude-agent-sdk and opencode tests:
// the same scripted conversation and checks, each test adding what only its
// harness does.

const (
	fixPrompt  = "Fix the README"
	slowPrompt = "Run the slow job"
	askPrompt  = "What did I ask"
)

// dialect is how one agent names its tools and their inputs, and what the
// script answers to side requests (titles, summaries: they offer no tools).
// dialect is what differs between the harnesses for the fake model: their
// tools, and the answer to requests that offer none (titles, side
// questions).
type dialect struct {
	tools fakellm.Tools
	side  string
}

var (
	claudeCode = dialect{fakellm.ClaudeCodeTools, "ok"}
	opencode   = dialect{fakellm.OpencodeTools, "A title"}
)

// editScript is the fake model behind the harness tests, chosen by the
// turn's prompt and step: read, edit and run git in the repo; run a slow
// job (to abort); recall the first turn (after a restart).
func editScript(d dialect, readme string) fakellm.Responder {
	return func(r fakellm.Request) fakellm.Reply {
		if len(r.Tools) == 0 {
			return fakellm.Text(d.side)
		}
		prompt, step := turn(r, fixPrompt, slowPrompt, askPrompt)
		switch prompt {
		case fixPrompt:
			switch step {
			case 0:
				return fakellm.Reply{Text: "Let me read it first.", ToolCalls: []fakellm.ToolCall{d.tools.Read(readme)}}
			case 1:
				return fakellm.CallTools(d.tools.Edit(readme, "hello world", "hello from the agent"))
			case 2:
				return fakellm.CallTools(d.tools.Bash("git diff --stat && grep -c agent README.md && echo secrets=${HARNESS_AUTH_TOKEN:-none}/${GIT_TOKEN:-none}", "Show the change"))
			default:
				return fakellm.Text("I edited README.md.")
			}
		case slowPrompt:
			if step == 0 {
				return fakellm.CallTools(d.tools.Bash("echo started > slow.txt && sleep 120 && echo finished >> slow.txt", "Run the slow job"))
			}
			return fakellm.Text("The job finished.")
		case askPrompt:
			if r.Contains(fixPrompt) && r.Contains("I edited README.md.") {
				return fakellm.Text("You asked me to fix the README.")
			}
			return fakellm.Text("I do not remember.")
		}
		return fakellm.Text("unexpected prompt")
	}
}

// editRun is one harness started for the edit/abort/restart flow, on a
// clone of gitRepo behind the scripted model.
type editRun struct {
	h      *harness
	f      *fakellm.Server
	entry  string
	ws     string
	readme string
	env    map[string]string
}

func startEditRun(t *testing.T, entry string, d dialect) *editRun {
	t.Helper()
	f := fakellm.Start(t)
	ws := t.TempDir()
	readme := filepath.Join(ws, "repo", "README.md")
	f.Respond(editScript(d, readme))
	env := map[string]string{
		"REPO_URL":         gitRepo(t),
		"BRANCH":           "main",
		"GIT_TOKEN":        "git-secret",
		"AGENT_PROMPT":     "You are a careful engineer.",
		"LAP_MODEL":        "anthropic/claude-sonnet-4-5",
		"LITELLM_API_BASE": f.URL() + "/llm",
		"LITELLM_API_KEY":  "lapsb_test",
	}
	return &editRun{h: startHarness(t, entry, ws, env), f: f, entry: entry, ws: ws, readme: readme, env: env}
}

// fixTurn sends the fix prompt and checks what both harnesses must do: read,
// edit and bash completed in one message, the edit on disk, no token seen.
func (r *editRun) fixTurn(t *testing.T, session string) (protocol.Message, []protocol.Part) {
	t.Helper()
	m := r.h.send(session, fixPrompt+", please.")
	require.Nil(t, m.Info.Error, "turn error")
	assert.Positive(t, m.Info.Tokens.Input)
	tools := parts(m, protocol.PartTool)
	require.Len(t, tools, 3, "one message holds every step's tools: %+v", m.Parts)
	for i, want := range []string{"read", "edit", "bash"} {
		assert.Equal(t, want, tools[i].Tool)
		assert.Equal(t, protocol.ToolCompleted, tools[i].State.Status, "%s: %+v", want, tools[i].State)
	}
	assert.Contains(t, tools[2].State.Output, "README.md")
	assert.Contains(t, tools[2].State.Output, "secrets=none/none", "the agent sees no harness or git token")
	assert.Contains(t, m.Text(), "I edited README.md.")
	onDisk, err := os.ReadFile(r.readme)
	require.NoError(t, err)
	assert.Equal(t, "# demo\nhello from the agent\n", string(onDisk), "the edit is on disk")
	return m, tools
}

// turnEvents waits for the session to go idle and checks lap's event order:
// the message opens, each tool runs then completes, the message completes,
// the session idles. It returns the summary for further checks.
func turnEvents(t *testing.T, ev *events, session string) []string {
	t.Helper()
	ev.wait(t, func(e protocol.Event) bool {
		return e.Type == protocol.EventSessionIdle && e.Properties.SessionID == session
	})
	got := summary(ev.of(session))
	require.NotEmpty(t, got)
	assert.Equal(t, "message.updated:open", got[0])
	assert.Equal(t, []string{"message.updated:completed", "session.idle"}, got[len(got)-2:])
	for _, tool := range []string{"read", "edit", "bash"} {
		running := indexOf(got, "message.part.updated:"+tool+":running", 0)
		done := indexOf(got, "message.part.updated:"+tool+":completed", 0)
		assert.True(t, running > 0 && done > running, "%s: running at %d, completed at %d in %v", tool, running, done, got)
	}
	return got
}

// mainRequest is the first request that reached the model offering tools:
// the agent's turn rather than a side request.
func mainRequest(f *fakellm.Server) fakellm.Request {
	for _, r := range f.Requests() {
		if len(r.Tools) > 0 {
			return r
		}
	}
	return fakellm.Request{}
}

// abortSlowTurn starts the slow job, checks that a second turn meanwhile is
// a 409, aborts while the tool runs and checks the turn ended Aborted with
// the job stopped. It returns the aborted turn's message.
func (r *editRun) abortSlowTurn(t *testing.T, ev *events, session string) protocol.Message {
	t.Helper()
	h := r.h
	slow := filepath.Join(r.ws, "repo", "slow.txt")
	reply := make(chan protocol.Message, 1)
	go func() { reply <- h.send(session, slowPrompt+" now.") }()
	ev.wait(t, func(e protocol.Event) bool {
		p := e.Properties.Part
		return p != nil && p.Tool == "bash" && p.State != nil && p.State.Status == protocol.ToolRunning && strings.Contains(string(p.State.Input), "sleep 120")
	})
	waitfor.Within(t, time.Minute, "the command started", func() bool { _, err := os.Stat(slow); return err == nil })
	resp := h.request("POST", "/session/"+session+"/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "another"}}})
	resp.Body.Close()
	assert.Equal(t, 409, resp.StatusCode)
	var aborted bool
	h.call("POST", "/session/"+session+"/abort", nil, &aborted)
	assert.True(t, aborted)
	var m protocol.Message
	select {
	case m = <-reply:
	case <-time.After(2 * time.Minute):
		t.Fatal("the aborted turn did not return")
	}
	require.NotNil(t, m.Info.Error)
	assert.Equal(t, "Aborted", m.Info.Error.Name)
	errEv := ev.wait(t, func(e protocol.Event) bool {
		return e.Type == protocol.EventSessionError && e.Properties.SessionID == session
	})
	assert.Equal(t, "Aborted", errEv.Properties.Error.Name)
	content, err := os.ReadFile(slow)
	require.NoError(t, err)
	assert.Equal(t, "started\n", string(content), "the job was stopped")
	return m
}

// restartAndAsk restarts the harness on the same workspace and checks the
// session and its two turns are still there and the model still sees the
// first turn. It returns the message log read after the restart.
func (r *editRun) restartAndAsk(t *testing.T, session string) []protocol.Message {
	t.Helper()
	r.h.stop()
	r.h = startHarness(t, r.entry, r.ws, r.env)
	var list []protocol.SessionInfo
	r.h.call("GET", "/session", nil, &list)
	require.Len(t, list, 1)
	assert.Equal(t, session, list[0].ID)
	var log []protocol.Message
	r.h.call("GET", "/session/"+session+"/message", nil, &log)
	assert.Equal(t, []string{"user", "assistant", "user", "assistant"}, roles(log))
	m := r.h.send(session, askPrompt+" you to do first?")
	require.Nil(t, m.Info.Error)
	assert.Equal(t, "You asked me to fix the README.", m.Text())
	return log
}

// historySeeding creates a session with a two-message history on a fresh
// workspace and checks the model sees it and the log shows it as the user
// had it. model and apiPath (after the gateway's URL) are as the harness is
// given them; it returns the fake model for harness-specific checks.
func historySeeding(t *testing.T, entry, model, apiPath, title string) *fakellm.Server {
	t.Helper()
	f := fakellm.Start(t)
	f.Respond(func(r fakellm.Request) fakellm.Reply {
		if len(r.Tools) > 0 && r.Contains("My name is Ada.") && r.Contains("Nice to meet you, Ada.") {
			return fakellm.Text("Your name is Ada.")
		}
		return fakellm.Text("I do not know.")
	})
	h := startHarness(t, entry, t.TempDir(), map[string]string{
		"LAP_MODEL":        model,
		"LITELLM_API_BASE": f.URL() + apiPath,
		"LITELLM_API_KEY":  "lapsb_test",
	})
	history := []protocol.Message{
		{Info: protocol.MessageInfo{ID: "u1", Role: "user", Time: protocol.MessageTime{Created: 1}}, Parts: []protocol.Part{{Type: "text", Text: "My name is Ada."}}},
		{Info: protocol.MessageInfo{ID: "a1", Role: "assistant", Time: protocol.MessageTime{Created: 2, Completed: 3}}, Parts: []protocol.Part{{Type: "text", Text: "Nice to meet you, Ada."}}},
	}
	session := h.newSession(protocol.CreateSessionRequest{Title: title, History: history})
	m := h.send(session, "What is my name?")
	require.Nil(t, m.Info.Error)
	assert.Equal(t, "Your name is Ada.", m.Text())
	var log []protocol.Message
	h.call("GET", "/session/"+session+"/message", nil, &log)
	assert.Equal(t, []string{"user", "assistant", "user", "assistant"}, roles(log))
	assert.Equal(t, "What is my name?", log[2].Text(), "the log keeps what the user typed")
	return f
}

// mockModelTurn asks about a cloned repo with lapd's offline demo model
// mock/tools (the gateway's mock over real HTTP), which runs ls through the
// agent's bash tool and answers with what came back. It returns the tools.
func mockModelTurn(t *testing.T, entry, title string) []protocol.Part {
	t.Helper()
	srv := httptest.NewServer(mockllm.Handler())
	t.Cleanup(srv.Close)
	h := startHarness(t, entry, t.TempDir(), map[string]string{
		"REPO_URL":         gitRepo(t),
		"LAP_MODEL":        mockllm.Tools,
		"LITELLM_API_BASE": srv.URL,
		"LITELLM_API_KEY":  "lapsb_test",
	})
	session := h.newSession(protocol.CreateSessionRequest{Title: title})
	m := h.send(session, "What is in this repo?")
	require.Nil(t, m.Info.Error)
	tools := parts(m, protocol.PartTool)
	require.NotEmpty(t, tools)
	assert.Equal(t, protocol.ToolCompleted, tools[0].State.Status)
	assert.Contains(t, tools[0].State.Output, "README.md")
	assert.Contains(t, m.Text(), "README.md")
	return tools
}
