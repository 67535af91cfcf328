package lapdlocal

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
)

func TestWarmPoolSessionIsReadyAtCreateAndAnswers(t *testing.T) {
	t.Parallel()
	p := newPlatform(t, map[string]string{"WARM_POOL_SIZE": "1", "LOCAL_STOP_ON_EXIT": "true"})
	l := p.start()
	defer l.stop()
	l.createAgent("warm-e2e")
	waitFor(t, "a warm sandbox", func() bool { return l.warm("warm-e2e") == 1 })

	sess := l.createSession("warm-e2e")
	assert.Equal(t, api.SessionReady, sess.Status, "ready in the response to its create request")
	assert.NotEmpty(t, sess.SandboxID)

	p.llm.Enqueue(fakellm.Text("hello from the fake LLM"))
	m := l.send(sess.ID, "hello?")
	assert.Equal(t, "hello from the fake LLM", m.Text())
	reqs := p.llm.Requests()
	require.NotEmpty(t, reqs)
	assert.Equal(t, "hello?", reqs[len(reqs)-1].LastUserText(), "the message went through the harness to the LLM")
	assert.NotContains(t, reqs[len(reqs)-1].Header.Get("Authorization"), "sk-real-upstream-key", "the harness holds a stub token only")

	waitFor(t, "the pool refilled", func() bool { return l.warm("warm-e2e") == 1 })
}

func TestIdleSessionSleepsAndAnswersAsIfItNeverSlept(t *testing.T) {
	t.Parallel()
	p := newPlatform(t, map[string]string{"WARM_POOL_SIZE": "0", "SESSION_IDLE_TIMEOUT": "2s", "LOCAL_STOP_ON_EXIT": "true"})
	l := p.start()
	defer l.stop()
	l.createAgent("sleepy-e2e")
	sess := l.readySession("sleepy-e2e")

	p.llm.Enqueue(
		fakellm.CallTool("write_file", map[string]any{"path": "notes.txt", "content": "written before the sleep\n"}),
		fakellm.Text("I wrote notes.txt."),
	)
	assert.Equal(t, "I wrote notes.txt.", l.send(sess.ID, "Please write a note.").Text())
	pid := p.harnessPID(sess.SandboxID)
	require.NotZero(t, pid)

	waitFor(t, "the session to go idle", func() bool { return l.session(sess.ID, "").Status == api.SessionIdle })
	assert.False(t, alive(pid), "the harness process is gone")
	b, err := os.ReadFile(filepath.Join(p.workspace(sess.SandboxID), "repo", "notes.txt"))
	require.NoError(t, err, "the workspace is kept")
	assert.Equal(t, "written before the sleep\n", string(b))

	p.llm.Enqueue(fakellm.CallTool("read_file", map[string]any{"path": "notes.txt"}), fakellm.Text("It says: written before the sleep."))
	m := l.send(sess.ID, "What does the note say?")
	assert.Equal(t, "It says: written before the sleep.", m.Text())
	var tools []string
	for _, part := range m.Parts {
		if part.Type == "tool" && part.State != nil {
			tools = append(tools, part.State.Output)
		}
	}
	assert.Equal(t, []string{"written before the sleep\n"}, tools, "the file written before the sleep is still there")
	reqs := p.llm.Requests()
	last := reqs[len(reqs)-1]
	assert.True(t, last.Contains("Please write a note."), "the LLM receives the earlier history")
	assert.True(t, last.Contains("I wrote notes.txt."), "the LLM receives the earlier history")
	assert.Equal(t, api.SessionReady, l.session(sess.ID, "").Status)
	assert.NotEqual(t, pid, p.harnessPID(sess.SandboxID), "a new harness process on the same workspace")
}

func TestKilledHarnessIsRestartedAtTheNextMessage(t *testing.T) {
	t.Parallel()
	p := newPlatform(t, map[string]string{"WARM_POOL_SIZE": "0", "LOCAL_STOP_ON_EXIT": "true"})
	l := p.start()
	defer l.stop()
	l.createAgent("crashy-e2e")
	sess := l.readySession("crashy-e2e")
	p.llm.Enqueue(fakellm.Text("first answer"))
	l.send(sess.ID, "first")
	pid := p.harnessPID(sess.SandboxID)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	waitFor(t, "the harness to die", func() bool { return !alive(pid) })

	p.llm.Enqueue(fakellm.Text("still here"))
	assert.Equal(t, "still here", l.send(sess.ID, "are you there?").Text())
	after := l.session(sess.ID, "")
	assert.Equal(t, sess.SandboxID, after.SandboxID, "restarted on the same sandbox")
	assert.True(t, alive(p.harnessPID(sess.SandboxID)))
}

func TestLapdKilledAndRestartedAdoptsTheHarness(t *testing.T) {
	t.Parallel()
	p := newPlatform(t, map[string]string{"WARM_POOL_SIZE": "0"})
	first := p.start()
	first.createAgent("phoenix-e2e")
	sess := first.readySession("phoenix-e2e")
	p.llm.Enqueue(fakellm.Text("before"))
	first.send(sess.ID, "before the restart")
	pid := p.harnessPID(sess.SandboxID)
	first.kill()
	require.True(t, alive(pid), "the harness outlives lapd")

	p.env["LOCAL_STOP_ON_EXIT"] = "true"
	second := p.start()
	p.llm.Enqueue(fakellm.Text("after"))
	assert.Equal(t, "after", second.send(sess.ID, "after the restart").Text())
	assert.Equal(t, pid, p.harnessPID(sess.SandboxID), "answered by the same harness process")
	assert.True(t, alive(pid))
	reqs := p.llm.Requests()
	assert.True(t, reqs[len(reqs)-1].Contains("before the restart"), "the harness session went on: no replay needed")

	second.stop()
	assert.False(t, alive(pid), "with LOCAL_STOP_ON_EXIT lapd stops the harness it adopted")
}

// LOCAL_SANDBOX_URL: the LiteLLM Agent Platform's local-development flow.
// The developer runs one harness; every session is a session inside it,
// with no warm pool, and lapd never stops it.
func TestLocalSandboxURLServesEverySessionFromOneHarness(t *testing.T) {
	t.Parallel()
	p := newPlatform(t, nil)
	port := freePort(t)
	ws := t.TempDir()
	harness := exec.Command(filepath.Join(binDir, "lap-harness"))
	harness.Env = []string{"PORT=" + port, "WORKSPACE=" + ws, "LITELLM_API_BASE=" + p.llm.URL(), "LAP_MODEL=test/model", "PATH=" + os.Getenv("PATH")}
	require.NoError(t, harness.Start())
	t.Cleanup(func() {
		_ = harness.Process.Kill()
		_ = harness.Wait()
	})

	p.env["LOCAL_SANDBOX_URL"] = "http://localhost:" + port
	p.env["WARM_POOL_SIZE"] = "0"
	l := p.start()
	var a api.Agent
	status, body := l.do(http.MethodPost, api.BasePath+"/agents", map[string]any{
		"name":       "my-sdk-agent",
		"harness_id": "claude-agent-sdk",
		"model":      "anthropic/claude-sonnet-4-5",
		"prompt":     "You are a helpful assistant.",
		"repo_url":   "https://github.com/your-org/your-repo",
	}, &a)
	require.Equal(t, http.StatusCreated, status, "%s", body)

	first, second := l.readySession("my-sdk-agent"), l.readySession("my-sdk-agent")
	assert.NotEqual(t, first.HarnessSessionID, second.HarnessSessionID, "two sessions inside the one harness")
	p.llm.Enqueue(fakellm.Text("answered by the external harness"))
	assert.Equal(t, "answered by the external harness", l.send(first.ID, "hello").Text())
	assert.Zero(t, l.warm("my-sdk-agent"), "no warm pool")

	status, body = l.do(http.MethodDelete, api.BasePath+"/sessions/"+first.ID, nil, nil)
	require.Equal(t, http.StatusNoContent, status, "%s", body)
	l.stop()
	assert.True(t, alive(harness.Process.Pid), "lapd does not stop the external harness")
	entries, _ := os.ReadDir(filepath.Join(p.dir, "data", "sandboxes"))
	assert.Empty(t, entries, "no local sandboxes were made")
}

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
