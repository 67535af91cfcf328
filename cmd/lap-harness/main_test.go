package main_test

// Black-box tests of the lap-harness binary: it is built once in TestMain
// and run as a real process against the scripted fake LLM and a local
// bare git repository served by file://.

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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/gateway/mockllm"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/sandboxes/protocol/sse"
)

// binary is the lap-harness built for this test run.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lap-harness-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "lap-harness")
	goTool, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "find the go tool:", err)
		os.Exit(1)
	}
	build := exec.Command(goTool, "build", "-o", binary, "lap.dev/lap/cmd/lap-harness")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build lap-harness:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const token = "harness-e2e-token"

// harnessProc is one running lap-harness process.
type harnessProc struct {
	t      testing.TB
	cmd    *exec.Cmd
	url    string
	env    []string
	stderr *syncBuffer
	exited chan struct{}
	err    error // Wait's result, once exited is closed
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

// freePort returns a port that was free a moment ago.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// harnessEnv is a sandbox environment for a harness using llm.
func harnessEnv(t testing.TB, llm *fakellm.Server, workspace string, extra ...string) []string {
	env := append(os.Environ(),
		"PORT="+freePort(t),
		"HARNESS_AUTH_TOKEN="+token,
		"WORKSPACE="+workspace,
		"LAP_MODEL=anthropic/claude-sonnet-4-5",
		"AGENT_PROMPT=You are a careful engineer.",
		"LITELLM_API_BASE="+llm.URL(),
		"LITELLM_API_KEY=lapsb_e2e",
	)
	return append(env, extra...)
}

// startHarness runs lap-harness with env without waiting for it.
func startHarness(t testing.TB, env []string) *harnessProc {
	t.Helper()
	p := &harnessProc{t: t, env: env, stderr: &syncBuffer{}, exited: make(chan struct{})}
	for _, kv := range env {
		if port, ok := strings.CutPrefix(kv, "PORT="); ok {
			p.url = "http://127.0.0.1:" + port
		}
	}
	p.cmd = exec.Command(binary)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	require.NoError(t, p.cmd.Start())
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("lap-harness output:\n%s", p.stderr.String())
		}
	})
	return p
}

// runHarness starts lap-harness and waits until GET /session is 2xx.
func runHarness(t testing.TB, env []string) *harnessProc {
	t.Helper()
	p := startHarness(t, env)
	p.waitReady()
	return p
}

func (p *harnessProc) waitReady() {
	p.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, _, err := p.request("GET", "/session", nil, "Bearer "+token)
		if err == nil && status == 200 {
			return
		}
		select {
		case <-p.exited:
			p.t.Fatalf("lap-harness exited: %v\n%s", p.err, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("lap-harness not ready (last status %d, %v)\n%s", status, err, p.stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the process to end.
func (p *harnessProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func (p *harnessProc) request(method, path string, body any, auth string) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, p.url+path, r)
	if err != nil {
		return 0, nil, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, b, err
}

// do sends an authenticated request and decodes a 2xx answer into out.
func (p *harnessProc) do(method, path string, body, out any) int {
	p.t.Helper()
	status, b, err := p.request(method, path, body, "Bearer "+token)
	require.NoError(p.t, err)
	if out != nil && status < 300 {
		require.NoError(p.t, json.Unmarshal(b, out), "%s", b)
	}
	return status
}

func (p *harnessProc) newSession() string {
	p.t.Helper()
	var info protocol.SessionInfo
	require.Equal(p.t, 200, p.do("POST", "/session", protocol.CreateSessionRequest{Title: "e2e"}, &info))
	return info.ID
}

func (p *harnessProc) send(id, text string) protocol.Message {
	p.t.Helper()
	var msg protocol.Message
	require.Equal(p.t, 200, p.do("POST", "/session/"+id+"/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: text}}}, &msg))
	return msg
}

// eventLog is a GET /event subscription.
type eventLog struct {
	mu   sync.Mutex
	all  []protocol.Event
	more chan struct{}
}

func (p *harnessProc) subscribe() *eventLog {
	p.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p.t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", p.url+"/event", nil)
	require.NoError(p.t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	require.NoError(p.t, err)
	require.Equal(p.t, 200, res.StatusCode)
	log := &eventLog{more: make(chan struct{}, 1)}
	go func() {
		defer res.Body.Close()
		r := sse.NewReader(res.Body)
		for {
			m, err := r.Next()
			if err != nil {
				return
			}
			var ev protocol.Event
			if json.Unmarshal(m.Data, &ev) != nil {
				continue
			}
			log.mu.Lock()
			log.all = append(log.all, ev)
			log.mu.Unlock()
			select {
			case log.more <- struct{}{}:
			default:
			}
		}
	}()
	log.waitFor(p.t, func(ev protocol.Event) bool { return ev.Type == protocol.EventServerConnected })
	return log
}

func (l *eventLog) waitFor(t testing.TB, match func(protocol.Event) bool) []protocol.Event {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		l.mu.Lock()
		all := append([]protocol.Event(nil), l.all...)
		l.mu.Unlock()
		for _, ev := range all {
			if match(ev) {
				return all
			}
		}
		select {
		case <-l.more:
		case <-deadline:
			t.Fatalf("event not seen among %d: %+v", len(all), all)
		}
	}
}

// bareRepo makes a bare repository whose non-default branch "feature"
// holds README.md, and returns its file:// URL.
func bareRepo(t testing.TB, readme string) string {
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
	git(src, "init", "-q", "-b", "main")
	require.NoError(t, os.WriteFile(filepath.Join(src, "README.md"), []byte("# main\n"), 0o644))
	git(src, "add", ".")
	git(src, "commit", "-q", "-m", "main")
	git(src, "checkout", "-q", "-b", "feature")
	require.NoError(t, os.WriteFile(filepath.Join(src, "README.md"), []byte(readme), 0o644))
	git(src, "commit", "-q", "-am", "feature")
	git(src, "checkout", "-q", "main")
	git(dir, "clone", "-q", "--bare", src, "repo.git")
	return "file://" + filepath.Join(dir, "repo.git")
}

func tools(msg protocol.Message) []protocol.Part {
	var out []protocol.Part
	for _, p := range msg.Parts {
		if p.Type == protocol.PartTool {
			out = append(out, p)
		}
	}
	return out
}

func TestTurnWithToolsOnClonedRepo(t *testing.T) {
	t.Parallel()
	llm := fakellm.Start(t)
	ws := t.TempDir()
	repo := bareRepo(t, "# lap e2e\nThe feature branch.\n")
	h := runHarness(t, harnessEnv(t, llm, ws, "REPO_URL="+repo, "BRANCH=feature"))
	events := h.subscribe()

	llm.Enqueue(
		fakellm.CallTool("list_files", map[string]any{}),
		fakellm.CallTool("read_file", map[string]any{"path": "README.md"}),
		fakellm.CallTool("write_file", map[string]any{"path": "SUMMARY.md", "content": "The feature branch of lap e2e.\n"}),
		fakellm.CallTool("bash", map[string]any{"command": "cat SUMMARY.md"}),
		fakellm.Reply{Text: "I wrote SUMMARY.md: the README describes the feature branch.", Chunks: 5},
	)
	id := h.newSession()
	msg := h.send(id, "Summarise the README into SUMMARY.md.")

	assert.Nil(t, msg.Info.Error)
	assert.Equal(t, "I wrote SUMMARY.md: the README describes the feature branch.", msg.Text())
	parts := tools(msg)
	require.Len(t, parts, 4)
	for i, name := range []string{"list_files", "read_file", "write_file", "bash"} {
		assert.Equal(t, name, parts[i].Tool)
		assert.Equal(t, protocol.ToolCompleted, parts[i].State.Status, "%s: %+v", name, parts[i].State)
	}
	assert.Equal(t, "README.md", parts[0].State.Output)
	assert.Equal(t, "# lap e2e\nThe feature branch.\n", parts[1].State.Output)
	assert.Equal(t, "The feature branch of lap e2e.\n", parts[3].State.Output)

	b, err := os.ReadFile(filepath.Join(ws, "repo", "SUMMARY.md"))
	require.NoError(t, err)
	assert.Equal(t, "The feature branch of lap e2e.\n", string(b))

	all := events.waitFor(t, func(ev protocol.Event) bool {
		return ev.Type == protocol.EventSessionIdle && ev.Properties.SessionID == id
	})
	completed := map[string]string{}
	var text string
	for _, ev := range all {
		if ev.Type != protocol.EventPartUpdated {
			continue
		}
		p := ev.Properties.Part
		if p.Type == protocol.PartTool && p.State.Status == protocol.ToolCompleted {
			completed[p.CallID] = p.Tool
		}
		text += ev.Properties.Delta
	}
	assert.ElementsMatch(t, []string{"list_files", "read_file", "write_file", "bash"}, mapValues(completed))
	assert.Equal(t, msg.Text(), text)

	reqs := llm.Requests()
	require.Len(t, reqs, 5)
	assert.Equal(t, "anthropic/claude-sonnet-4-5", reqs[0].Model)
	assert.Equal(t, "Bearer lapsb_e2e", reqs[0].Header.Get("Authorization"))
	assert.True(t, strings.HasPrefix(reqs[0].SystemText(), "You are a careful engineer."))
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func TestPathEscapesRefused(t *testing.T) {
	t.Parallel()
	llm := fakellm.Start(t)
	ws := t.TempDir()
	h := runHarness(t, harnessEnv(t, llm, ws))
	outside := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("do not read"), 0o644))
	require.NoError(t, os.Symlink(outside, filepath.Join(ws, "repo", "link")))

	llm.Enqueue(fakellm.CallTools(
		fakellm.Call("read_file", map[string]any{"path": "../../etc/passwd"}),
		fakellm.Call("read_file", map[string]any{"path": "link/secret"}),
		fakellm.Call("write_file", map[string]any{"path": "link/planted", "content": "x"}),
	), fakellm.Text("could not"))
	msg := h.send(h.newSession(), "read secrets")
	parts := tools(msg)
	require.Len(t, parts, 3)
	for _, p := range parts {
		assert.Equal(t, protocol.ToolError, p.State.Status)
		assert.Contains(t, p.State.Error, "outside the workspace")
		assert.NotContains(t, p.State.Output, "do not read")
	}
	assert.NoFileExists(t, filepath.Join(outside, "planted"))
}

func TestAbortLongSleep(t *testing.T) {
	t.Parallel()
	llm := fakellm.Start(t)
	mark := marker(t)
	h := runHarness(t, harnessEnv(t, llm, t.TempDir(), mark))
	events := h.subscribe()
	llm.Enqueue(fakellm.CallTool("bash", map[string]any{"command": "sleep 60 & sleep 60"}))
	id := h.newSession()

	done := make(chan protocol.Message, 1)
	go func() {
		var msg protocol.Message
		status, b, err := h.request("POST", "/session/"+id+"/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "wait a minute"}}}, "Bearer "+token)
		if err == nil && status == 200 {
			_ = json.Unmarshal(b, &msg)
		}
		done <- msg
	}()
	events.waitFor(t, func(ev protocol.Event) bool {
		p := ev.Properties.Part
		return p != nil && p.Tool == "bash" && p.State.Status == protocol.ToolRunning
	})
	deadline := time.Now().Add(10 * time.Second)
	for len(markedProcesses(t, mark)) < 2 { // the two sleeps
		require.False(t, time.Now().After(deadline), "sleeps not started: %q", markedProcesses(t, mark))
		time.Sleep(5 * time.Millisecond)
	}

	began := time.Now()
	var aborted bool
	require.Equal(t, 200, h.do("POST", "/session/"+id+"/abort", nil, &aborted))
	msg := <-done
	took := time.Since(began)
	t.Logf("abort of a 60 s sleep took %s", took)
	require.True(t, aborted)
	require.NotNil(t, msg.Info.Error)
	assert.Equal(t, "Aborted", msg.Info.Error.Name)
	// A behaviour check, not a benchmark: the sleep did not run its course.
	assert.Less(t, took, 30*time.Second)
	require.Len(t, tools(msg), 1)
	assert.Equal(t, protocol.ToolError, tools(msg)[0].State.Status)
	waitGone(t, mark) // both sleeps were killed with their process group
}

// markedProcesses returns the command lines of the live processes, other
// than lap-harness itself, whose environment holds marker (a variable
// given to one harness, which its tools inherit), so other processes on
// the machine are never counted.
func markedProcesses(t *testing.T, marker string) []string {
	t.Helper()
	var cmds []string
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		environ, err := os.ReadFile(filepath.Join(dir, "environ"))
		if err != nil || !strings.Contains("\x00"+string(environ), "\x00"+marker+"\x00") {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join(dir, "stat"))
		if strings.Contains(string(stat), ") Z ") {
			continue // dead, waiting to be reaped
		}
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		if cmd := strings.Join(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"), " "); cmd != binary {
			cmds = append(cmds, cmd)
		}
	}
	return cmds
}

// waitGone waits until no process carries marker.
func waitGone(t *testing.T, marker string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := markedProcesses(t, marker)
		if len(left) == 0 {
			return
		}
		require.False(t, time.Now().After(deadline), "processes left running: %q", left)
		time.Sleep(5 * time.Millisecond)
	}
}

// marker returns a unique environment entry for one harness.
func marker(t *testing.T) string {
	return fmt.Sprintf("LAP_E2E_MARKER=%s-%d", t.Name(), time.Now().UnixNano())
}

func TestAuth(t *testing.T) {
	t.Parallel()
	llm := fakellm.Start(t)
	h := runHarness(t, harnessEnv(t, llm, t.TempDir()))
	tests := []struct {
		name, method, path, auth string
		want                     int
	}{
		{"missing token", "GET", "/session", "", 401},
		{"wrong token", "GET", "/session", "Bearer not-the-token", 401},
		{"wrong token on a turn", "POST", "/session/x/message", "Bearer not-the-token", 401},
		{"events without token", "GET", "/event", "", 401},
		{"identity is open", "GET", "/", "", 200},
		{"right token", "GET", "/session", "Bearer " + token, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body, err := h.request(tt.method, tt.path, nil, tt.auth)
			require.NoError(t, err)
			assert.Equal(t, tt.want, status, "%s", body)
		})
	}
}

func TestNoTokenListensOnLoopbackOnly(t *testing.T) {
	t.Parallel()
	llm := fakellm.Start(t)
	env := harnessEnv(t, llm, t.TempDir(), "HARNESS_AUTH_TOKEN=")
	h := startHarness(t, env)
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, _, err := h.request("GET", "/session", nil, "")
		if err == nil && status == 200 {
			break
		}
		require.False(t, time.Now().After(deadline), "not ready: %s", h.stderr.String())
		time.Sleep(5 * time.Millisecond)
	}
	port := strings.TrimPrefix(h.url, "http://127.0.0.1:")
	assert.Contains(t, h.stderr.String(), "addr=127.0.0.1:"+port)
}

func TestKilledHarnessResumesSession(t *testing.T) {
	t.Parallel()
	llm := fakellm.Start(t)
	ws := t.TempDir()
	mark := marker(t)
	env := harnessEnv(t, llm, ws, mark)
	h := runHarness(t, env)

	llm.Enqueue(fakellm.CallTool("bash", map[string]any{"command": "echo remembered > fact.txt"}), fakellm.Text("Noted: the answer is 42."))
	id := h.newSession()
	h.send(id, "Remember that the answer is 42.")
	var before []protocol.Message
	require.Equal(t, 200, h.do("GET", "/session/"+id+"/message", nil, &before))

	// Killed in the middle of a second turn, while a tool runs.
	events := h.subscribe()
	llm.Enqueue(fakellm.CallTool("bash", map[string]any{"command": "sleep 60"}))
	require.Equal(t, 204, h.do("POST", "/session/"+id+"/prompt_async", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "Now wait."}}}, nil))
	events.waitFor(t, func(ev protocol.Event) bool {
		p := ev.Properties.Part
		return p != nil && p.Tool == "bash" && p.State.Status == protocol.ToolRunning
	})
	h.kill()
	waitGone(t, mark) // the tool does not outlive the harness

	h2 := runHarness(t, env)
	var after []protocol.Message
	require.Equal(t, 200, h2.do("GET", "/session/"+id+"/message", nil, &after))
	require.Len(t, after, 4)
	assert.Equal(t, before, after[:2], "the finished turn is intact")
	require.NotNil(t, after[3].Info.Error, "the interrupted turn is recorded as such")
	assert.Equal(t, "HarnessError", after[3].Info.Error.Name)

	llm.Enqueue(fakellm.Text("The answer is 42."))
	reply := h2.send(id, "What is the answer?")
	assert.Equal(t, "The answer is 42.", reply.Text())
	reqs := llm.Requests()
	last := reqs[len(reqs)-1]
	assert.True(t, last.Contains("Remember that the answer is 42."), "the model receives the earlier messages")
	assert.True(t, last.Contains("Noted: the answer is 42."))
	assert.True(t, last.Contains("Now wait."))
	assert.Equal(t, "What is the answer?", last.LastUserText())
	b, err := os.ReadFile(filepath.Join(ws, "repo", "fact.txt"))
	require.NoError(t, err)
	assert.Equal(t, "remembered\n", string(b), "the workspace survives the restart")
}

func TestSIGTERMExitsCleanly(t *testing.T) {
	t.Parallel()
	llm := fakellm.Start(t)
	h := runHarness(t, harnessEnv(t, llm, t.TempDir()))
	require.NoError(t, h.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-h.exited:
		assert.NoError(t, h.err)
	case <-time.After(30 * time.Second):
		t.Fatal("lap-harness did not exit on SIGTERM")
	}
}

func TestBadConfigFailsFast(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(binary)
	cmd.Env = []string{"WORKSPACE=" + t.TempDir(), "PORT=" + freePort(t)}
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "LITELLM_API_BASE")
}

// The offline demo model of lapd's gateway drives this harness's tools.
func TestMockToolsModel(t *testing.T) {
	t.Parallel()
	mock := httptest.NewServer(mockllm.Handler())
	t.Cleanup(mock.Close)
	ws := t.TempDir()
	llm := fakellm.Start(t) // unused by the turn; only harnessEnv wants one
	env := harnessEnv(t, llm, ws, "LITELLM_API_BASE="+mock.URL, "LAP_MODEL="+mockllm.Tools)
	h := runHarness(t, env)
	require.NoError(t, os.WriteFile(filepath.Join(ws, "repo", "hello.txt"), []byte("hi"), 0o644))

	msg := h.send(h.newSession(), "What files are there?")
	require.Nil(t, msg.Info.Error)
	parts := tools(msg)
	require.Len(t, parts, 1)
	assert.Equal(t, "list_files", parts[0].Tool)
	assert.Equal(t, protocol.ToolCompleted, parts[0].State.Status)
	assert.Contains(t, msg.Text(), "The list_files tool returned:\n\nhello.txt")
	assert.Empty(t, llm.Requests())
}
