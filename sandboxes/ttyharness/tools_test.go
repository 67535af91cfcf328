package ttyharness_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/e2e/fakellm"
)

// These tests run the launchers make build writes (bin/lap-harness-claude-code,
// bin/lap-harness-codex): the real lap-tty-harness running the pinned CLI
// from the npm registry, against the scripted fake LLM on loopback.

// launcher returns bin/<name> of this checkout, failing with the fix when
// make build has not made it.
func launcher(t testing.TB, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "bin", name))
	require.NoError(t, err)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is not built (%v): run `make build` first", p, err)
	}
	return p
}

// syncBuffer collects a process's output.
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

// process is a terminal harness run as its own process.
type process struct {
	url  string
	ws   string
	out  *syncBuffer
	stop func() // SIGTERM, wait, and the tmux server gone
}

// startProcess runs the launcher with the sandbox environment lapd gives
// and waits until the tool runs in tmux.
func startProcess(t *testing.T, bin string, env ...string) *process {
	t.Helper()
	return startProcessIn(t, bin, shortTempDir(t), env...)
}

// startProcessIn is startProcess on a given workspace, e.g. one an
// earlier harness left (a sandbox resumed after scaling to zero).
func startProcessIn(t *testing.T, bin, ws string, env ...string) *process {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		fmt.Sprintf("PORT=%d", port),
		"HARNESS_HOST=127.0.0.1",
		"HARNESS_AUTH_TOKEN="+token,
		"WORKSPACE="+ws,
	)
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &process{url: fmt.Sprintf("http://127.0.0.1:%d", port), ws: ws, out: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				t.Errorf("harness ignored SIGTERM for 30s")
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
			// The tmux server is a daemon of its own; make sure it is gone.
			_, _ = tmuxOut(t, filepath.Join(ws, ".lap", "tmux.sock"), "kill-server")
		})
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("harness output:\n%s", p.out.String())
		}
	})
	waitReady(t, p.url, 3*time.Minute, p.out.String)
	return p
}

const (
	fixPrompt = "Fix the README"
	// reply has no blanks, so it reads the same however tmux draws it.
	reply = "README-fixed-by-the-fake-model"
)

// turn finds whether the request answers the fix prompt and how far the
// turn is: the tool results since the prompt.
func turn(r fakellm.Request) (isFix bool, step int) {
	for i := len(r.Messages) - 1; i >= 0; i-- {
		m := r.Messages[i]
		if m.Role == "user" && strings.Contains(m.Text, fixPrompt) {
			for _, later := range r.Messages[i+1:] {
				if later.Role == "tool" {
					step++
				}
			}
			return true, step
		}
	}
	return false, 0
}

// TestClaudeCode runs Claude Code in the terminal harness and works it
// through the WebSocket as a user would: the prompt typed, the model's
// Read and Edit tool calls run in the repo, the reply drawn, a resize,
// detach, and a re-attach that shows the reply again.
func TestClaudeCode(t *testing.T) {
	t.Parallel()
	bin := launcher(t, "lap-harness-claude-code")
	f := fakellm.Start(t)
	var readme string
	f.Respond(func(r fakellm.Request) fakellm.Reply {
		isFix, step := turn(r)
		switch {
		case len(r.Tools) == 0 || !isFix:
			return fakellm.Text("ok") // side requests: titles, summaries
		case step == 0:
			return fakellm.Reply{Text: "Let me read it.", ToolCalls: []fakellm.ToolCall{fakellm.ClaudeCodeTools.Read(readme)}}
		case step == 1:
			return fakellm.CallTools(fakellm.ClaudeCodeTools.Edit(readme, "hello world", "hello from the agent"))
		default:
			return fakellm.Reply{Text: reply, Chunks: 1}
		}
	})
	env := []string{
		"REPO_URL=" + gitRepo(t),
		"BRANCH=main",
		"AGENT_PROMPT=You are a careful engineer.",
		"LAP_MODEL=anthropic/claude-sonnet-4-5",
		"LITELLM_API_BASE=" + f.URL() + "/llm",
		"LITELLM_API_KEY=lapsb_stub",
		"ANTHROPIC_API_KEY=must-not-be-used",
	}
	p := startProcess(t, bin, env...)
	readme = filepath.Join(p.ws, "repo", "README.md")

	began := time.Now()
	tm := dial(t, p.url, token, false)
	tm.resize(110, 35)
	// Claude Code at its prompt, no onboarding, no questions.
	tm.waitFor("bypass permissions on", 1, 2*time.Minute)
	t.Logf("attach → Claude Code's prompt: %s", time.Since(began).Round(time.Millisecond))
	socket := filepath.Join(p.ws, ".lap", "tmux.sock")
	size, err := tmuxOut(t, socket, "display-message", "-p", "-t", "lap", "#{window_width}x#{window_height}")
	require.NoError(t, err)
	assert.Equal(t, "110x35", size)

	// Type the prompt; Enter on its own, as a person's keystroke (in one
	// write with the text a TUI may take it for a pasted newline).
	mark := tm.mark()
	tm.send(fixPrompt + " please")
	tm.waitAfter(mark, fixPrompt, 30*time.Second)
	tm.send("\r")
	tm.waitFor(reply, 1, 2*time.Minute)

	onDisk, err := os.ReadFile(readme)
	require.NoError(t, err)
	assert.Equal(t, "# demo\nhello from the agent\n", string(onDisk), "Claude Code's Edit tool changed the repo")

	// What reached the model: the agent's prompt, the stub token as a
	// bearer token, the agent's model.
	var main fakellm.Request
	for _, r := range f.Requests() {
		if len(r.Tools) > 0 {
			main = r
			break
		}
	}
	require.NotEmpty(t, main.Tools, "a request offering tools reached the fake")
	assert.Equal(t, "/llm/v1/messages", main.Path)
	assert.Equal(t, "Bearer lapsb_stub", main.Header.Get("Authorization"))
	assert.Empty(t, main.Header.Get("X-Api-Key"), "ANTHROPIC_API_KEY of the sandbox is not used")
	assert.Equal(t, "claude-sonnet-4-5", main.Model)
	assert.Contains(t, main.SystemText(), "You are a careful engineer.")
	for _, r := range f.Requests() {
		assert.Equal(t, "claude-sonnet-4-5", r.Model, "every request uses the agent's model")
	}

	// Detach; the agent keeps running; re-attach redraws the reply.
	tm.close()
	_, err = tmuxOut(t, socket, "has-session", "-t", "lap")
	require.NoError(t, err, "Claude Code runs on after the client detached")
	began = time.Now()
	again := dial(t, p.url, token, true)
	again.waitFor(reply, 1, 30*time.Second)
	t.Logf("re-attach → screen with the reply: %s", time.Since(began).Round(time.Millisecond))
	var identity struct {
		Harness string `json:"harness"`
		Running bool   `json:"running"`
	}
	require.Equal(t, http.StatusOK, get(t, p.url, "/", "", &identity))
	assert.Equal(t, "claude-code", identity.Harness)
	assert.True(t, identity.Running)

	// The sandbox stops (scaled to zero) and a new harness starts on its
	// workspace: Claude Code continues the conversation, which it shows.
	again.close()
	p.stop()
	resumed := startProcessIn(t, bin, p.ws, env...)
	cmdline, err := tmuxOut(t, socket, "display-message", "-p", "-t", "lap", "#{pane_start_command}")
	require.NoError(t, err)
	assert.Contains(t, cmdline, "--continue")
	third := dial(t, resumed.url, token, false)
	third.waitFor(reply, 1, 2*time.Minute)
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

// TestCodex runs Codex in the terminal harness as TestClaudeCode runs
// Claude Code; Codex speaks the Responses API (POST /v1/responses).
func TestCodex(t *testing.T) {
	t.Parallel()
	bin := launcher(t, "lap-harness-codex")
	f := fakellm.Start(t)
	f.Respond(func(r fakellm.Request) fakellm.Reply {
		isFix, step := turn(r)
		switch {
		case len(r.Tools) == 0 || !isFix:
			return fakellm.Text("ok")
		case step == 0:
			return fakellm.CallTools(codexEdit(r.ToolNames()))
		default:
			return fakellm.Reply{Text: reply, Chunks: 1}
		}
	})
	env := []string{
		"REPO_URL=" + gitRepo(t),
		"BRANCH=main",
		"AGENT_PROMPT=You are a careful engineer.",
		"LAP_MODEL=gpt-5",
		"LITELLM_API_BASE=" + f.URL() + "/llm",
		"LITELLM_API_KEY=lapsb_stub",
		"OPENAI_API_KEY=must-not-be-used",
	}
	p := startProcess(t, bin, env...)
	readme := filepath.Join(p.ws, "repo", "README.md")

	began := time.Now()
	tm := dial(t, p.url, token, false)
	tm.resize(110, 35)
	tm.waitFor("Ask Codex to do anything", 1, 2*time.Minute)
	t.Logf("attach → Codex's prompt: %s", time.Since(began).Round(time.Millisecond))

	mark := tm.mark()
	tm.send(fixPrompt + " please")
	tm.waitAfter(mark, fixPrompt, 30*time.Second)
	// Codex shows its composer while it is still starting up, and then
	// takes Enter for "queue this message" (tab) and does nothing, as a
	// person would see; press Enter again until the prompt reaches the
	// model. Enter on a sent (empty) composer does nothing.
	submitted := func() bool {
		return slices.ContainsFunc(f.Requests(), func(r fakellm.Request) bool { isFix, _ := turn(r); return isFix })
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !submitted() {
		require.False(t, time.Now().After(deadline), "Codex sent no request with the prompt")
		tm.send("\r")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = f.WaitForRequests(ctx, len(f.Requests())+1)
		cancel()
	}
	tm.waitFor(reply, 1, 2*time.Minute)

	reqs := f.Requests()
	require.NotEmpty(t, reqs)
	main := reqs[0]
	for _, r := range reqs {
		if isFix, _ := turn(r); isFix {
			main = r
			break
		}
	}
	t.Logf("Codex offers the tools %v", main.ToolNames())
	assert.Equal(t, fakellm.FormatOpenAIResponses, main.Format)
	assert.Equal(t, "/llm/v1/responses", main.Path)
	assert.Equal(t, "Bearer lapsb_stub", main.Header.Get("Authorization"))
	assert.Equal(t, "gpt-5", main.Model)
	assert.Contains(t, main.SystemText(), "You are a careful engineer.")

	onDisk, err := os.ReadFile(readme)
	require.NoError(t, err)
	assert.Equal(t, "# demo\nhello from the agent\n", string(onDisk), "Codex's shell tool changed the repo")

	tm.close()
	again := dial(t, p.url, token, true)
	again.waitFor(reply, 1, 30*time.Second)

	// A new harness on the workspace resumes Codex's last conversation.
	again.close()
	p.stop()
	resumed := startProcessIn(t, bin, p.ws, env...)
	cmdline, err := tmuxOut(t, filepath.Join(p.ws, ".lap", "tmux.sock"), "display-message", "-p", "-t", "lap", "#{pane_start_command}")
	require.NoError(t, err)
	assert.Contains(t, cmdline, "resume --last")
	third := dial(t, resumed.url, token, false)
	third.waitFor(reply, 1, 2*time.Minute)
}
