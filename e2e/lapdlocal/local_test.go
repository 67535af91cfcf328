package lapdlocal

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/internal/waitfor"
)

func TestWarmPoolSessionIsReadyAtCreateAndAnswers(t *testing.T) {
	t.Parallel()
	p := platform.New(t, map[string]string{"WARM_POOL_SIZE": "1", "LOCAL_STOP_ON_EXIT": "true"})
	l := p.Start()
	defer l.Stop()
	l.CreateAgent("warm-e2e")
	waitfor.Within(t, platform.Deadline, "a warm sandbox", func() bool { return l.Warm("warm-e2e") == 1 })

	sess := l.CreateSession("warm-e2e")
	assert.Equal(t, api.SessionReady, sess.Status, "ready in the response to its create request")
	assert.NotEmpty(t, sess.SandboxID)

	p.LLM.Enqueue(fakellm.Text("hello from the fake LLM"))
	m := l.Send(sess.ID, "hello?")
	assert.Equal(t, "hello from the fake LLM", m.Text())
	reqs := p.LLM.Requests()
	require.NotEmpty(t, reqs)
	assert.Equal(t, "hello?", reqs[len(reqs)-1].LastUserText(), "the message went through the harness to the LLM")
	assert.NotContains(t, reqs[len(reqs)-1].Header.Get("Authorization"), "sk-real-upstream-key", "the harness holds a stub token only")

	waitfor.Within(t, platform.Deadline, "the pool refilled", func() bool { return l.Warm("warm-e2e") == 1 })
}

func TestIdleSessionSleepsAndAnswersAsIfItNeverSlept(t *testing.T) {
	t.Parallel()
	p := platform.New(t, map[string]string{"WARM_POOL_SIZE": "0", "SESSION_IDLE_TIMEOUT": "2s", "LOCAL_STOP_ON_EXIT": "true"})
	l := p.Start()
	defer l.Stop()
	l.CreateAgent("sleepy-e2e")
	sess := l.ReadySession("sleepy-e2e")

	p.LLM.Enqueue(
		fakellm.CallTool("write_file", map[string]any{"path": "notes.txt", "content": "written before the sleep\n"}),
		fakellm.Text("I wrote notes.txt."),
	)
	assert.Equal(t, "I wrote notes.txt.", l.Send(sess.ID, "Please write a note.").Text())
	pid := p.HarnessPID(sess.SandboxID)
	require.NotZero(t, pid)

	waitfor.Within(t, platform.Deadline, "the session to go idle", func() bool { return l.Session(sess.ID, "").Status == api.SessionIdle })
	assert.False(t, platform.Alive(pid), "the harness process is gone")
	b, err := os.ReadFile(filepath.Join(p.Workspace(sess.SandboxID), "repo", "notes.txt"))
	require.NoError(t, err, "the workspace is kept")
	assert.Equal(t, "written before the sleep\n", string(b))

	p.LLM.Enqueue(fakellm.CallTool("read_file", map[string]any{"path": "notes.txt"}), fakellm.Text("It says: written before the sleep."))
	m := l.Send(sess.ID, "What does the note say?")
	assert.Equal(t, "It says: written before the sleep.", m.Text())
	var tools []string
	for _, part := range m.Parts {
		if part.Type == "tool" && part.State != nil {
			tools = append(tools, part.State.Output)
		}
	}
	assert.Equal(t, []string{"written before the sleep\n"}, tools, "the file written before the sleep is still there")
	reqs := p.LLM.Requests()
	last := reqs[len(reqs)-1]
	assert.True(t, last.Contains("Please write a note."), "the LLM receives the earlier history")
	assert.True(t, last.Contains("I wrote notes.txt."), "the LLM receives the earlier history")
	assert.Equal(t, api.SessionReady, l.Session(sess.ID, "").Status)
	assert.NotEqual(t, pid, p.HarnessPID(sess.SandboxID), "a new harness process on the same workspace")
}

func TestKilledHarnessIsRestartedAtTheNextMessage(t *testing.T) {
	t.Parallel()
	p := platform.New(t, map[string]string{"WARM_POOL_SIZE": "0", "LOCAL_STOP_ON_EXIT": "true"})
	l := p.Start()
	defer l.Stop()
	l.CreateAgent("crashy-e2e")
	sess := l.ReadySession("crashy-e2e")
	p.LLM.Enqueue(fakellm.Text("first answer"))
	l.Send(sess.ID, "first")
	pid := p.HarnessPID(sess.SandboxID)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	waitfor.Within(t, platform.Deadline, "the harness to die", func() bool { return !platform.Alive(pid) })

	p.LLM.Enqueue(fakellm.Text("still here"))
	assert.Equal(t, "still here", l.Send(sess.ID, "are you there?").Text())
	after := l.Session(sess.ID, "")
	assert.Equal(t, sess.SandboxID, after.SandboxID, "restarted on the same sandbox")
	assert.True(t, platform.Alive(p.HarnessPID(sess.SandboxID)))
}

func TestLapdKilledAndRestartedAdoptsTheHarness(t *testing.T) {
	t.Parallel()
	p := platform.New(t, map[string]string{"WARM_POOL_SIZE": "0"})
	first := p.Start()
	first.CreateAgent("phoenix-e2e")
	sess := first.ReadySession("phoenix-e2e")
	p.LLM.Enqueue(fakellm.Text("before"))
	first.Send(sess.ID, "before the restart")
	pid := p.HarnessPID(sess.SandboxID)
	first.Kill()
	require.True(t, platform.Alive(pid), "the harness outlives lapd")

	p.Env["LOCAL_STOP_ON_EXIT"] = "true"
	second := p.Start()
	p.LLM.Enqueue(fakellm.Text("after"))
	assert.Equal(t, "after", second.Send(sess.ID, "after the restart").Text())
	assert.Equal(t, pid, p.HarnessPID(sess.SandboxID), "answered by the same harness process")
	assert.True(t, platform.Alive(pid))
	reqs := p.LLM.Requests()
	assert.True(t, reqs[len(reqs)-1].Contains("before the restart"), "the harness session went on: no replay needed")

	second.Stop()
	assert.False(t, platform.Alive(pid), "with LOCAL_STOP_ON_EXIT lapd stops the harness it adopted")
}

// LOCAL_SANDBOX_URL: the LiteLLM Agent Platform's local-development flow.
// The developer runs one harness; every session is a session inside it,
// with no warm pool, and lapd never stops it.
func TestLocalSandboxURLServesEverySessionFromOneHarness(t *testing.T) {
	t.Parallel()
	p := platform.New(t, nil)
	port := platform.FreePort(t)
	ws := t.TempDir()
	harness := exec.Command(filepath.Join(platform.Bin, "lap-harness"))
	harness.Env = []string{"PORT=" + port, "WORKSPACE=" + ws, "LITELLM_API_BASE=" + p.LLM.URL(), "LAP_MODEL=test/model", "PATH=" + os.Getenv("PATH")}
	require.NoError(t, harness.Start())
	t.Cleanup(func() {
		_ = harness.Process.Kill()
		_ = harness.Wait()
	})

	p.Env["LOCAL_SANDBOX_URL"] = "http://localhost:" + port
	p.Env["WARM_POOL_SIZE"] = "0"
	l := p.Start()
	var a api.Agent
	status, body := l.Do(http.MethodPost, api.BasePath+"/agents", map[string]any{
		"name":       "my-sdk-agent",
		"harness_id": "claude-agent-sdk",
		"model":      "anthropic/claude-sonnet-4-5",
		"prompt":     "You are a helpful assistant.",
		"repo_url":   "https://github.com/your-org/your-repo",
	}, &a)
	require.Equal(t, http.StatusCreated, status, "%s", body)

	first, second := l.ReadySession("my-sdk-agent"), l.ReadySession("my-sdk-agent")
	assert.NotEqual(t, first.HarnessSessionID, second.HarnessSessionID, "two sessions inside the one harness")
	p.LLM.Enqueue(fakellm.Text("answered by the external harness"))
	assert.Equal(t, "answered by the external harness", l.Send(first.ID, "hello").Text())
	assert.Zero(t, l.Warm("my-sdk-agent"), "no warm pool")

	status, body = l.Do(http.MethodDelete, api.BasePath+"/sessions/"+first.ID, nil, nil)
	require.Equal(t, http.StatusNoContent, status, "%s", body)
	l.Stop()
	assert.True(t, platform.Alive(harness.Process.Pid), "lapd does not stop the external harness")
	entries, _ := os.ReadDir(filepath.Join(p.Dir, "data", "sandboxes"))
	assert.Empty(t, entries, "no local sandboxes were made")
}
