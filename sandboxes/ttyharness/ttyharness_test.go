package ttyharness_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/sandboxes/ttyharness"
)

// fakeTool is a terminal program standing in for Claude Code: it shows
// its terminal size, what it can see of the sandbox's secrets and its
// arguments and how often it was started, echoes each line typed, and
// exits on "exit".
const fakeTool = `#!/bin/sh
run=$(( $(cat "$HOME/runs" 2>/dev/null || echo 0) + 1 )); echo $run > "$HOME/runs"
echo "fake tool ready size=$(stty size | tr ' ' x) run=$run secrets=${HARNESS_AUTH_TOKEN:-none}/${LITELLM_API_KEY:-none}/${GIT_TOKEN:-none} auth=$ANTHROPIC_AUTH_TOKEN home=$HOME args=$*"
while IFS= read -r line; do
  [ "$line" = exit ] && exit 0
  [ "$line" = size ] && echo "size=$(stty size | tr ' ' x)"
  echo "echo:$line"
done
`

// inProcess is a terminal harness served in the test's process with the
// fake tool.
type inProcess struct {
	srv  *ttyharness.Server
	url  string
	ws   string
	stop context.CancelFunc
	done chan error
}

func startInProcess(t testing.TB) *inProcess {
	t.Helper()
	ws := shortTempDir(t)
	bin := filepath.Join(t.TempDir(), "fake-claude")
	require.NoError(t, os.WriteFile(bin, []byte(fakeTool), 0o755))
	srv, err := ttyharness.New(ttyharness.Config{
		Tool:        ttyharness.ToolClaudeCode,
		ToolBin:     bin,
		AuthToken:   token,
		Workspace:   ws,
		RepoURL:     gitRepo(t),
		Branch:      "main",
		GitToken:    "git-secret",
		AgentPrompt: "Be brief.",
		Model:       "anthropic/claude-sonnet-4-5",
		LLMBaseURL:  "http://127.0.0.1:1/llm",
		LLMAPIKey:   "lapsb_stub",
		Env:         append(os.Environ(), "HARNESS_AUTH_TOKEN="+token, "LITELLM_API_KEY=lapsb_stub", "GIT_TOKEN=git-secret"),
		Rows:        30,
		Cols:        100,
		Logger:      testLogger(t),
	})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	h := &inProcess{srv: srv, url: "http://" + ln.Addr().String(), ws: ws, stop: cancel, done: make(chan error, 1)}
	go func() { h.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(20 * time.Second):
			t.Errorf("Serve did not return after its context ended")
		}
	})
	waitReady(t, h.url, 60*time.Second, func() string { return "" })
	return h
}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	ws := shortTempDir(t)
	for _, tc := range []struct {
		name string
		cfg  ttyharness.Config
		want string
	}{
		{"no workspace", ttyharness.Config{Tool: "codex", LLMBaseURL: "http://x"}, "WORKSPACE"},
		{"no gateway", ttyharness.Config{Tool: "codex", Workspace: ws}, "LITELLM_API_BASE"},
		{"bad gateway", ttyharness.Config{Tool: "codex", Workspace: ws, LLMBaseURL: "ftp://x"}, "not an http(s) URL"},
		{"unknown tool", ttyharness.Config{Tool: "vim", Workspace: ws, LLMBaseURL: "http://x"}, `unknown terminal tool "vim"`},
		{"long socket path", ttyharness.Config{Tool: "codex", Workspace: filepath.Join(ws, strings.Repeat("w", 100)), LLMBaseURL: "http://x"}, "too long for a unix socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ttyharness.New(tc.cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestRoutesNeedToken(t *testing.T) {
	t.Parallel()
	h := startInProcess(t)

	var id ttyharness.Identity
	require.Equal(t, http.StatusOK, get(t, h.url, "/", "", &id), "GET / needs no token")
	assert.Equal(t, "claude-code", id.Harness)
	assert.True(t, id.TTY)
	assert.True(t, id.Ready)
	assert.True(t, id.Running)
	assert.Equal(t, filepath.Join(h.ws, "repo"), id.Workspace)

	for _, path := range []string{"/session", "/tty", "/tty/activity"} {
		assert.Equal(t, http.StatusUnauthorized, get(t, h.url, path, "", nil), path)
		assert.Equal(t, http.StatusUnauthorized, get(t, h.url, path, "wrong", nil), path)
	}
	var sessions []any
	require.Equal(t, http.StatusOK, get(t, h.url, "/session", token, &sessions))
	assert.Empty(t, sessions, "a terminal harness has no protocol sessions")

	_, err := tryDial(h.url, "wrong", true)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "401")
	dial(t, h.url, token, true).waitFor("fake tool ready", 1, 30*time.Second)
}

// TestTerminal drives the fake tool through the WebSocket as lap's CLI
// would: type, resize, garbage ignored, detach with the tool still
// running, re-attach with the screen redrawn, the tool restarted when it
// exits; and checks what the tool sees of the sandbox.
func TestTerminal(t *testing.T) {
	t.Parallel()
	h := startInProcess(t)
	socket := h.srv.Socket()

	tm := dial(t, h.url, token, false)
	tm.waitFor("fake tool ready size=30x100", 1, 30*time.Second)
	// The tmux server is the harness's child, not a daemon that would
	// outlive it.
	pid, err := tmuxOut(t, socket, "display-message", "-p", "#{pid}")
	require.NoError(t, err)
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	require.NoError(t, err)
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	assert.Equal(t, strconv.Itoa(os.Getpid()), fields[1], "the tmux server's parent is the harness")
	s := tm.screen()
	assert.Contains(t, s, "secrets=none/none/none", "the tool sees no harness, gateway or git token")
	assert.Contains(t, s, "auth=lapsb_stub", "the stub token is Claude Code's bearer token")
	assert.Contains(t, s, "home="+filepath.Join(h.ws, ".lap", "home"))
	assert.Contains(t, s, plain("args=--dangerously-skip-permissions --append-system-prompt Be brief."))

	var act ttyharness.Activity
	require.Equal(t, http.StatusOK, get(t, h.url, "/tty/activity", token, &act))
	assert.Equal(t, 1, act.Attached)
	assert.True(t, act.LastInput.IsZero(), "nothing typed yet")

	before := time.Now()
	tm.send("hello there")
	tm.send("\r")
	tm.waitFor("echo:hello there", 1, 30*time.Second)
	require.Equal(t, http.StatusOK, get(t, h.url, "/tty/activity", token, &act))
	assert.False(t, act.LastInput.Before(before.Add(-time.Second)), "keystrokes are activity: %v", act.LastInput)

	// Resize: the window follows, and so does the tool's terminal.
	tm.text(`{"type":"resize"`)                          // not JSON: ignored
	tm.text(`{"type":"paste","data":"x"}`)               // unknown: ignored
	tm.text(`{"type":"resize","cols":100000,"rows":10}`) // out of range: ignored
	tm.resize(90, 25)
	waitUntil(t, 10*time.Second, "window resized to 90x25", func() bool {
		out, err := tmuxOut(t, socket, "display-message", "-p", "-t", "lap", "#{window_width}x#{window_height}")
		return err == nil && out == "90x25"
	})
	tm.send("size\r")
	tm.waitFor("size=25x90", 1, 30*time.Second)

	// Detach: the tool keeps running; nobody is attached.
	tm.close()
	waitUntil(t, 10*time.Second, "attached count back to 0", func() bool {
		return get(t, h.url, "/tty/activity", token, &act) == http.StatusOK && act.Attached == 0
	})
	_, err = tmuxOut(t, socket, "has-session", "-t", "lap")
	require.NoError(t, err, "the tool's session outlives the client")

	// Re-attach: tmux redraws the screen, earlier output included.
	again := dial(t, h.url, token, true)
	again.waitFor("echo:hello there", 1, 30*time.Second)

	// The tool exits: the same client sees it start again.
	again.send("exit\r")
	again.waitFor("run=2", 1, 60*time.Second)
	again.send("back\r")
	again.waitFor("echo:back", 1, 30*time.Second)

	// Claude Code's configuration: unattended, the repo trusted.
	var cfg map[string]any
	b, err := os.ReadFile(filepath.Join(h.ws, ".lap", "home", ".claude.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &cfg))
	assert.Equal(t, true, cfg["hasCompletedOnboarding"])
	assert.Equal(t, true, cfg["bypassPermissionsModeAccepted"])
	project := cfg["projects"].(map[string]any)[filepath.Join(h.ws, "repo")].(map[string]any)
	assert.Equal(t, true, project["hasTrustDialogAccepted"])
	assert.FileExists(t, filepath.Join(h.ws, "repo", "README.md"), "the repo is cloned")
}

// TestShutdownEndsTool checks that stopping the harness ends the tool's
// tmux server and closes attached clients.
func TestShutdownEndsTool(t *testing.T) {
	t.Parallel()
	h := startInProcess(t)
	tm := dial(t, h.url, token, false)
	tm.waitFor("fake tool ready", 1, 30*time.Second)
	h.stop()
	select {
	case err := <-h.done:
		require.NoError(t, err)
		h.done <- err // for the cleanup
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return")
	}
	select {
	case <-tm.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the client was not closed")
	}
	_, err := tmuxOut(t, h.srv.Socket(), "has-session", "-t", "lap")
	assert.Error(t, err, "no tmux session after shutdown")
}

// TestMissingCLI checks that a harness whose tool is not installed says so
// at GET / and on the readiness probe instead of looking ready.
func TestMissingCLI(t *testing.T) {
	t.Parallel()
	srv, err := ttyharness.New(ttyharness.Config{
		Tool:       ttyharness.ToolCodex,
		ToolBin:    filepath.Join(t.TempDir(), "no-codex"),
		AuthToken:  token,
		Workspace:  shortTempDir(t),
		LLMBaseURL: "http://127.0.0.1:1/llm",
	})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	url := "http://" + ln.Addr().String()
	var id ttyharness.Identity
	waitUntil(t, 30*time.Second, "GET / reports the failure", func() bool {
		return get(t, url, "/", "", &id) == http.StatusOK && id.Error != ""
	})
	assert.Contains(t, id.Error, "codex's CLI")
	assert.False(t, id.Ready)
	assert.Equal(t, http.StatusServiceUnavailable, get(t, url, "/session", token, nil))
	assert.Equal(t, http.StatusServiceUnavailable, get(t, url, "/tty", token, nil))
}
