package llmgateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tidwall/gjson"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/internal/waitfor"
)

// TestCodexThroughTheGateway: the pinned Codex, run by the terminal
// harness (bin/lap-harness-codex, from make build) with a live sandbox's
// stub token and lapd's gateway as its LLM, works a turn over the
// Responses API: its requests reach the upstream with lapd's key, its
// shell call edits the repo, the reply is drawn, and what the upstream
// reported is the session's usage, priced at gpt-5's list price.
//
// lapd does not start terminal harnesses yet (its /tty relay is another
// change), so the test takes the stub token of a lap-harness sandbox of a
// session and gives it to a Codex harness it starts itself, as lapd will.
func TestCodexThroughTheGateway(t *testing.T) {
	t.Parallel()
	launcher := codexLauncher(t)
	secret := "sk-upstream-" + randomHex(t)
	p := platform.New(t, settings(map[string]string{"LITELLM_API_KEY": secret}))
	const (
		prompt = "Fix the README"
		reply  = "README-fixed-by-the-fake-model" // no blanks: reads the same however tmux draws it
	)
	perRequest := fakellm.Usage{PromptTokens: 1000, CompletionTokens: 10}
	p.LLM.Respond(func(r fakellm.Request) fakellm.Reply {
		u := perRequest
		step, isFix := -1, false
		for i := len(r.Messages) - 1; i >= 0 && !isFix; i-- {
			if m := r.Messages[i]; m.Role == "user" && strings.Contains(m.Text, prompt) {
				isFix, step = true, 0
				for _, later := range r.Messages[i+1:] {
					if later.Role == "tool" {
						step++
					}
				}
			}
		}
		switch {
		case !isFix || len(r.Tools) == 0:
			return fakellm.Reply{Text: "ok", Usage: &u}
		case step == 0:
			return fakellm.Reply{ToolCalls: []fakellm.ToolCall{codexEdit(r.ToolNames())}, Usage: &u}
		default:
			return fakellm.Reply{Text: reply, Chunks: 1, Usage: &u}
		}
	})
	l := p.Start()
	defer l.Stop()
	l.CreateAgentWith(api.CreateAgentRequest{Name: "codex-token", HarnessID: "lap", Model: "gpt-5",
		RepoURL: platform.GitRepo(t, map[string]string{"README.md": "# demo\n"})})
	sess := l.ReadySession("codex-token")
	_, env := environ(t, p.HarnessPID(sess.SandboxID))
	stub := env["LITELLM_API_KEY"]
	require.True(t, strings.HasPrefix(stub, "lapsb_"), "LITELLM_API_KEY=%q", stub)

	repo := platform.GitRepo(t, map[string]string{"README.md": "# demo\nhello world\n"})
	h := startCodex(t, launcher,
		"REPO_URL="+repo, "BRANCH=main", "AGENT_PROMPT=You are a careful engineer.", "LAP_MODEL=gpt-5",
		"LITELLM_API_BASE="+l.URL+"/llm", "LITELLM_API_KEY="+stub, "OPENAI_API_KEY=must-not-be-used")

	tm := dialTerm(t, h.url, h.token)
	tm.resize(110, 35)
	tm.waitFor("Ask Codex to do anything", 2*time.Minute)
	tm.send(prompt + " please")
	tm.waitFor(prompt, 30*time.Second)
	// Codex takes Enter while it is still starting up for "queue this
	// message"; press it until the prompt reaches the model.
	sent := func() bool {
		return slices.ContainsFunc(p.LLM.Requests(), func(r fakellm.Request) bool { return strings.Contains(r.LastUserText(), prompt) })
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !sent() {
		require.False(t, time.Now().After(deadline), "Codex sent no request with the prompt:\n%s", tm.tail())
		tm.send("\r")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = p.LLM.WaitForRequests(ctx, len(p.LLM.Requests())+1)
		cancel()
	}
	tm.waitFor(reply, 2*time.Minute)

	onDisk, err := os.ReadFile(filepath.Join(h.ws, "repo", "README.md"))
	require.NoError(t, err)
	assert.Equal(t, "# demo\nhello from the agent\n", string(onDisk), "Codex's shell call, answered through lapd, edited the repo")

	// Every model call went through lapd over the Responses API, with
	// lapd's key; and the session was charged exactly what the upstream
	// reported for them.
	var calls []fakellm.Request
	waitfor.Within(t, platform.Deadline, "the session's usage to count every Codex request", func() bool {
		calls = nil
		for _, r := range p.LLM.Requests() {
			if r.Format == fakellm.FormatOpenAIResponses {
				calls = append(calls, r)
			}
		}
		return l.Session(sess.ID, "").Usage.Requests == int64(len(calls))
	})
	require.GreaterOrEqual(t, len(calls), 2, "the prompt and the tool's output")
	t.Logf("Codex made %d model calls through lapd; it offers the tools %v", len(calls), calls[len(calls)-1].ToolNames())
	for _, r := range calls {
		assert.Equal(t, "/v1/responses", r.Path)
		assert.Equal(t, "Bearer "+secret, r.Header.Get("Authorization"), "lapd sends the upstream key")
		assert.Equal(t, "gpt-5", r.Model)
		for _, tool := range gjson.GetBytes(r.Body, "tools.#.type").Array() {
			assert.NotContains(t, tool.Str, "web_search", "the harness disables the hosted web search, which lapd refuses")
		}
	}
	n := int64(len(calls))
	got := l.Session(sess.ID, "").Usage
	assert.Equal(t, n*perRequest.PromptTokens, got.InputTokens)
	assert.Equal(t, n*perRequest.CompletionTokens, got.OutputTokens)
	assert.InDelta(t, float64(n)*(1000*1.25e-6+10*10e-6), got.CostUSD, 1e-9, "gpt-5's list price")
}

// TestCodexOfflineWithMockModels: with no upstream at all (make run on a
// machine with no LLM), a Codex agent of mock/tools works a turn: the mock
// calls Codex's shell to list the repo, Codex runs it, and the mock's
// answer, naming what the shell printed, is drawn.
func TestCodexOfflineWithMockModels(t *testing.T) {
	t.Parallel()
	launcher := codexLauncher(t)
	p := platform.New(t, settings(map[string]string{"LITELLM_API_BASE": "", "LITELLM_API_KEY": ""}))
	l := p.Start()
	defer l.Stop()
	l.CreateAgentWith(api.CreateAgentRequest{Name: "codex-offline",
		RepoURL: platform.GitRepo(t, map[string]string{"README.md": "# demo\n"})})
	sess := l.ReadySession("codex-offline")
	_, env := environ(t, p.HarnessPID(sess.SandboxID))

	repo := platform.GitRepo(t, map[string]string{"README.md": "# demo\n", "mock-listed-me.go": "package main\n"})
	h := startCodex(t, launcher, "REPO_URL="+repo, "BRANCH=main", "LAP_MODEL=mock/tools",
		"LITELLM_API_BASE="+l.URL+"/llm", "LITELLM_API_KEY="+env["LITELLM_API_KEY"])
	tm := dialTerm(t, h.url, h.token)
	tm.resize(110, 35)
	tm.waitFor("Ask Codex to do anything", 2*time.Minute)
	const prompt = "What is in this repo?"
	tm.send(prompt)
	tm.waitFor(prompt, 30*time.Second)
	// Enter until the turn starts (see TestCodexThroughTheGateway).
	deadline := time.Now().Add(2 * time.Minute)
	started := func() bool { return l.Session(sess.ID, "").Usage.Requests > 0 }
	for !started() {
		require.False(t, time.Now().After(deadline), "Codex sent no request:\n%s", tm.tail())
		tm.send("\r")
		for wait := time.Now().Add(5 * time.Second); !started() && time.Now().Before(wait); {
			time.Sleep(100 * time.Millisecond) // a poll interval
		}
	}
	// "The <shell> tool returned:", whichever shell this Codex offers.
	tm.waitFor("tool returned:", 2*time.Minute)
	tm.waitFor("mock-listed-me.go", 30*time.Second)
	u := l.Session(sess.ID, "").Usage
	assert.GreaterOrEqual(t, u.Requests, int64(2), "the call and the answer, counted")
	assert.Positive(t, u.InputTokens)
	assert.Zero(t, u.CostUSD, "mock models are free")
	assert.Empty(t, p.LLM.Requests(), "lapd has no upstream")
}

// codexLauncher is bin/lap-harness-codex, which make build writes (with
// the pinned Codex it runs).
func codexLauncher(t *testing.T) string {
	t.Helper()
	platform.SkipInShortMode(t)
	launcher := filepath.Join(platform.RepoRoot(t), "bin", "lap-harness-codex")
	if _, err := os.Stat(launcher); err != nil {
		t.Fatalf("%s is not built (%v): run `make build` first", launcher, err)
	}
	return launcher
}

// codexEdit is the shell call that makes the README edit, in whichever
// shell tool this Codex offers.
func codexEdit(names []string) fakellm.ToolCall {
	const script = "sed -i 's/hello world/hello from the agent/' README.md"
	switch {
	case slices.Contains(names, "exec_command"):
		return fakellm.Call("exec_command", map[string]any{"cmd": script})
	case slices.Contains(names, "shell_command"):
		return fakellm.Call("shell_command", map[string]any{"command": script})
	default:
		return fakellm.Call("shell", map[string]any{"command": []string{"bash", "-lc", script}})
	}
}

// codexHarness is a terminal harness process.
type codexHarness struct {
	url, token, ws string
}

// startCodex runs the launcher with a sandbox's environment and waits
// until it answers; the test's cleanup stops it and its tmux server.
func startCodex(t *testing.T, launcher string, env ...string) codexHarness {
	t.Helper()
	ws, err := os.MkdirTemp("", "cx") // short: tmux's socket lives in it
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	h := codexHarness{url: fmt.Sprintf("http://127.0.0.1:%d", port), token: "harness-" + randomHex(t), ws: ws}

	cmd := exec.Command(launcher)
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), "HARNESS_HOST=127.0.0.1",
		"HARNESS_AUTH_TOKEN="+h.token, "WORKSPACE="+ws)
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	var outMu sync.Mutex
	cmd.Stdout = writerFunc(func(b []byte) (int, error) { outMu.Lock(); defer outMu.Unlock(); return out.Write(b) })
	cmd.Stderr = cmd.Stdout
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			t.Errorf("harness ignored SIGTERM for 30s")
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		_ = exec.Command("tmux", "-S", filepath.Join(ws, ".lap", "tmux.sock"), "kill-server").Run()
		if t.Failed() {
			outMu.Lock()
			t.Logf("harness output:\n%s", out.String())
			outMu.Unlock()
		}
		_ = os.RemoveAll(ws)
	})
	waitfor.Within(t, 3*time.Minute, "the Codex harness to answer GET /session", func() bool {
		req, _ := http.NewRequest(http.MethodGet, h.url+"/session", nil)
		req.Header.Set("Authorization", "Bearer "+h.token)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return h
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// term is a client of the harness's GET /tty: binary input, a text
// resize message, binary output, which it keeps.
type term struct {
	t       *testing.T
	conn    *websocket.Conn
	mu      sync.Mutex
	out     bytes.Buffer
	changed chan struct{}
	err     error
}

func dialTerm(t *testing.T, base, tok string) *term {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/tty",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	require.NoError(t, err)
	c.SetReadLimit(16 << 20)
	tm := &term{t: t, conn: c, changed: make(chan struct{})}
	go func() {
		for {
			typ, data, err := c.Read(context.Background())
			tm.mu.Lock()
			if err != nil {
				tm.err = err
			} else if typ == websocket.MessageBinary {
				tm.out.Write(data)
			}
			close(tm.changed)
			tm.changed = make(chan struct{})
			tm.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { _ = c.Close(websocket.StatusNormalClosure, "") })
	return tm
}

func (tm *term) write(typ websocket.MessageType, b []byte) {
	tm.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(tm.t, tm.conn.Write(ctx, typ, b))
}

func (tm *term) send(s string) { tm.write(websocket.MessageBinary, []byte(s)) }

func (tm *term) resize(cols, rows int) {
	b, err := json.Marshal(map[string]any{"type": "resize", "cols": cols, "rows": rows})
	require.NoError(tm.t, err)
	tm.write(websocket.MessageText, b)
}

var escapes = regexp.MustCompile(`\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[P^_][^\x1b]*\x1b\\|\x1b[()*+][0-9A-Za-z]|\x1b[ -/]*[0-~]`)

// plain strips terminal escapes, control characters and whitespace: tmux
// moves the cursor instead of writing blanks.
func plain(s string) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == 0x7f {
			return -1
		}
		return r
	}, escapes.ReplaceAllString(s, ""))
}

func (tm *term) tail() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	s := plain(tm.out.String())
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

// waitFor waits until the terminal has shown want (whitespace ignored).
func (tm *term) waitFor(want string, d time.Duration) {
	tm.t.Helper()
	want = plain(want)
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		tm.mu.Lock()
		shown, changed, err := strings.Contains(plain(tm.out.String()), want), tm.changed, tm.err
		tm.mu.Unlock()
		if shown {
			return
		}
		if err != nil {
			tm.t.Fatalf("terminal closed (%v) before it showed %q:\n%s", err, want, tm.tail())
		}
		select {
		case <-changed:
		case <-deadline.C:
			tm.t.Fatalf("the terminal did not show %q within %s:\n%s", want, d, tm.tail())
		}
	}
}
