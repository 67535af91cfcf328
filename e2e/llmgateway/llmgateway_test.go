// Package llmgateway checks the promises of lapd's LLM gateway through the
// built platform (issue 5): lapd holds the upstream key and sandboxes only a
// per-sandbox token that is worthless elsewhere and dies with its sandbox;
// usage and cost land on the session and the agent as the upstream reported
// them; answers stream through as they arrive; a spent budget stops the
// answers with a reply that says why; and lapd with no upstream at all
// answers from its mock models (`make run`'s offline path). lapd runs with
// the local backend, its harnesses reaching the scripted fake LLM through
// the gateway at /llm, as in production.
package llmgateway

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes/protocol"
)

func TestMain(m *testing.M) {
	os.Exit(platform.Main(m))
}

// settings are lapd's: the harnesses reach the LLM through lapd's gateway,
// sessions get a sandbox of their own, and harnesses stop with lapd.
func settings(extra map[string]string) map[string]string {
	out := map[string]string{
		"LAP_SANDBOX_GATEWAY_URL": "",
		"WARM_POOL_SIZE":          "0",
		"LOCAL_STOP_ON_EXIT":      "true",
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// gpt4o's list price (built into lapd), US dollars per token.
const gpt4oIn, gpt4oOut = 2.50 / 1e6, 10.0 / 1e6

// llmCall calls lapd's gateway at path with the bearer token (none when
// "") and returns the status and body.
func llmCall(t *testing.T, l *platform.Lapd, method, path, token string, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, l.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := platform.Client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// environ reads the initial environment of pid.
func environ(t *testing.T, pid int) (raw []byte, env map[string]string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
	require.NoError(t, err)
	env = map[string]string{}
	for _, kv := range bytes.Split(raw, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	return raw, env
}

// TestUpstreamKeyStaysInLapd: with a real key configured, a turn succeeds
// with the key sent upstream by lapd, while the harness's environment and
// every file of its workspace hold no trace of it (nor of the master key);
// usage and cost on the session and agent are what the upstream reported;
// the sandbox's token opens /llm only while its sandbox lives, and nothing
// else opens it.
func TestUpstreamKeyStaysInLapd(t *testing.T) {
	t.Parallel()
	secret := "sk-upstream-" + randomHex(t)
	p := platform.New(t, settings(map[string]string{"LITELLM_API_KEY": secret}))
	// A turn of two steps (a tool call, then the answer), each reporting
	// its own usage.
	p.LLM.Enqueue(
		fakellm.Reply{
			ToolCalls: []fakellm.ToolCall{fakellm.Call("write_file", map[string]any{"path": "notes.txt", "content": "a note\n"})},
			Usage:     &fakellm.Usage{PromptTokens: 1200, CompletionTokens: 30},
		},
		fakellm.Reply{Text: "I wrote notes.txt.", Usage: &fakellm.Usage{PromptTokens: 1300, CompletionTokens: 7}},
	)
	l := p.Start()
	defer l.Stop()
	agent := l.CreateAgentWith(api.CreateAgentRequest{
		Name: "keeper", HarnessID: "lap", Model: "gpt-4o", Prompt: "You keep notes.",
		RepoURL: platform.GitRepo(t, map[string]string{"README.md": "# demo\n"}),
	})
	sess := l.ReadySession("keeper")

	m := l.Send(sess.ID, "Please write a note.")
	assert.Equal(t, "I wrote notes.txt.", m.Text())
	reqs := p.LLM.Requests()
	require.Len(t, reqs, 2)
	for _, r := range reqs {
		assert.Equal(t, "Bearer "+secret, r.Header.Get("Authorization"), "lapd sends the upstream key")
		assert.Equal(t, "gpt-4o", r.Model)
	}

	// The harness holds a sandbox token and the gateway's URL, no key.
	pid := p.HarnessPID(sess.SandboxID)
	require.NotZero(t, pid)
	raw, env := environ(t, pid)
	assert.NotContains(t, string(raw), secret, "the upstream key is not in the harness's environment")
	assert.NotContains(t, string(raw), platform.MasterKey, "the master key is not in the harness's environment")
	token := env["LITELLM_API_KEY"]
	assert.True(t, strings.HasPrefix(token, "lapsb_"), "LITELLM_API_KEY=%q is a sandbox token", token)
	assert.Equal(t, l.URL+"/llm", env["LITELLM_API_BASE"])

	// Nor is either in any file of the workspace: the clone, the file the
	// agent wrote, the harness's transcripts.
	ws := p.Workspace(sess.SandboxID)
	var files []string
	require.NoError(t, filepath.WalkDir(ws, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(ws, path)
		files = append(files, rel)
		assert.NotContains(t, string(b), secret, "%s holds the upstream key", rel)
		assert.NotContains(t, string(b), platform.MasterKey, "%s holds the master key", rel)
		return nil
	}))
	assert.Contains(t, files, filepath.Join("repo", "notes.txt"))
	assert.Contains(t, files, filepath.Join("repo", "README.md"))
	assert.True(t, containsPrefix(files, ".lap"+string(filepath.Separator)), "the harness's state is in the workspace: %v", files)

	// Usage: what the fake reported, priced at gpt-4o's list price.
	wantIn, wantOut := int64(1200+1300), int64(30+7)
	wantCost := float64(wantIn)*gpt4oIn + float64(wantOut)*gpt4oOut
	got := l.Session(sess.ID, "").Usage
	assert.Equal(t, wantIn, got.InputTokens)
	assert.Equal(t, wantOut, got.OutputTokens)
	assert.Equal(t, int64(2), got.Requests)
	assert.InDelta(t, wantCost, got.CostUSD, 1e-9)
	var a api.Agent
	status, body := l.Do(http.MethodGet, api.BasePath+"/agents/"+agent.ID, nil, &a)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, got, a.Usage, "the agent's only session's usage is the agent's")

	// The token opens /llm (a mock model, so no upstream call) and
	// nothing else; nothing else opens /llm.
	const echo = `{"model":"mock/echo","messages":[{"role":"user","content":"hi"}]}`
	status, out := llmCall(t, l, http.MethodPost, "/llm/v1/chat/completions", token, echo)
	assert.Equal(t, http.StatusOK, status, "a live sandbox's token: %s", out)
	status, out = llmCall(t, l, http.MethodGet, api.BasePath+"/agents", token, "")
	assert.Equal(t, http.StatusUnauthorized, status, "a sandbox token on the management API: %s", out)
	status, out = llmCall(t, l, http.MethodPost, "/llm/v1/chat/completions", platform.MasterKey, echo)
	assert.Equal(t, http.StatusUnauthorized, status, "the master key at /llm: %s", out)
	status, out = llmCall(t, l, http.MethodPost, "/llm/v1/chat/completions", "", echo)
	assert.Equal(t, http.StatusUnauthorized, status, "no token at /llm: %s", out)
	status, out = llmCall(t, l, http.MethodPost, "/llm/v1/chat/completions", secret, echo)
	assert.Equal(t, http.StatusUnauthorized, status, "the upstream key at /llm: %s", out)

	// Once the sandbox is destroyed, its token is worthless.
	status, body = l.Do(http.MethodDelete, api.BasePath+"/sessions/"+sess.ID, nil, nil)
	require.Equal(t, http.StatusNoContent, status, "%s", body)
	waitfor.Within(t, platform.Deadline, "the sandbox's directory to go", func() bool {
		_, err := os.Stat(ws)
		return os.IsNotExist(err)
	})
	status, out = llmCall(t, l, http.MethodPost, "/llm/v1/chat/completions", token, echo)
	assert.Equal(t, http.StatusUnauthorized, status, "a destroyed sandbox's token: %s", out)
	assert.Contains(t, out, "no longer live")
	assert.Len(t, p.LLM.Requests(), 2, "no request reached the upstream since the turn")
}

func containsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

// TestStreamReachesTheHarnessBeforeTheUpstreamEnds: the upstream streams
// the first words of its answer and then holds the stream open; those
// words reach the harness (which streams them on as text deltas to lapd's
// client) while the upstream has not sent its last byte. The upstream never
// finishes on its own, so this shows no layer waits for a whole answer.
// Aborting the turn then ends the upstream call too.
func TestStreamReachesTheHarnessBeforeTheUpstreamEnds(t *testing.T) {
	t.Parallel()
	p := platform.New(t, settings(nil))
	const first = "The first words of a long answer"
	p.LLM.Enqueue(fakellm.Reply{Text: first, Hang: true, Chunks: 4})
	l := p.Start()
	defer l.Stop()
	l.CreateAgent("streamer")
	sess := l.ReadySession("streamer")

	st, err := l.StreamMessage(platform.Context(t), sess.ID, "Tell me a long story.")
	require.NoError(t, err)
	var text strings.Builder
	for !strings.Contains(text.String(), first) {
		ev, err := st.Next()
		require.NoError(t, err, "the stream ended before the first words came: %q", text.String())
		require.NotEqual(t, api.EventDone, ev.Name, "the turn ended before the upstream did: %s", ev.Data)
		require.NotEqual(t, api.EventError, ev.Name, "%s", ev.Data)
		if ev.Name != api.EventHarness {
			continue
		}
		he, err := api.DecodeHarnessEvent(ev.Data)
		require.NoError(t, err)
		if part := he.Properties.Part; part != nil && part.Type == protocol.PartText {
			text.WriteString(he.Properties.Delta)
		}
	}
	reqs := p.LLM.Requests()
	require.Len(t, reqs, 1)
	assert.True(t, reqs[0].Stream, "the harness asked for a stream")

	// The upstream is still holding its stream open; end the turn.
	status, body := l.Do(http.MethodPost, api.BasePath+"/sessions/"+sess.ID+"/abort", nil, nil)
	require.Equal(t, http.StatusOK, status, "%s", body)
	out := st.Finish()
	require.NotNil(t, out.Done, "the aborted turn ends with done: %+v", out)
	require.NotNil(t, out.Done.Info.Error)
	assert.Equal(t, "Aborted", out.Done.Info.Error.Name)
	assert.Contains(t, out.Done.Text(), first, "what streamed before the abort is kept")
	// The harness has hung up on the gateway; the gateway hangs up on the
	// upstream, though it is silent, instead of holding it until
	// LAP_LLM_TIMEOUT.
	waitfor.Within(t, platform.Deadline, "lapd to cancel the silent upstream call", func() bool {
		return strings.Contains(l.Output(), "LLM stream client went away; upstream call cancelled")
	})
}

// TestSpentBudgetStopsAnswers: an agent or a session with max_budget_usd
// gets answers until its spending reaches the limit; then the gateway
// refuses before calling the upstream, and the reply, in the API and in
// the CLI, says the budget is spent.
func TestSpentBudgetStopsAnswers(t *testing.T) {
	t.Parallel()
	budget := 0.001
	// One answer costs 1000 × $2.50/M + 10 × $10/M = $0.0026, over budget.
	usage := &fakellm.Usage{PromptTokens: 1000, CompletionTokens: 10}
	p := platform.New(t, settings(nil))
	l := p.Start()
	defer l.Stop()
	l.CreateAgentWith(api.CreateAgentRequest{Name: "thrifty", HarnessID: "lap", Model: "gpt-4o", MaxBudgetUSD: &budget})
	l.CreateAgentWith(api.CreateAgentRequest{Name: "spender", HarnessID: "lap", Model: "gpt-4o"})

	for _, tc := range []struct {
		name, agent string
		session     *float64 // the session's max_budget_usd
		want        string   // in the refusal
	}{
		{name: "agent budget", agent: "thrifty", want: "agent"},
		{name: "session budget", agent: "spender", session: &budget, want: "session"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sess api.Session
			status, body := l.Do(http.MethodPost, api.BasePath+"/agents/"+tc.agent+"/session", api.CreateSessionRequest{MaxBudgetUSD: tc.session}, &sess)
			require.Equal(t, http.StatusCreated, status, "%s", body)
			sess = l.Session(sess.ID, "?wait=ready&timeout=120s")
			require.Equal(t, api.SessionReady, sess.Status)

			before := len(p.LLM.Requests())
			p.LLM.Enqueue(fakellm.Reply{Text: "An answer within budget.", Usage: usage})
			assert.Equal(t, "An answer within budget.", l.Send(sess.ID, "First question").Text())
			spent := l.Session(sess.ID, "").Usage.CostUSD
			assert.Greater(t, spent, budget)

			var m api.Message
			status, body = l.Do(http.MethodPost, api.BasePath+"/sessions/"+sess.ID+"/message", api.SendMessageRequest{Text: "Second question"}, &m)
			require.Equal(t, http.StatusOK, status, "%s", body)
			require.NotNil(t, m.Info.Error, "the second turn is refused: %s", body)
			assert.Contains(t, m.Info.Error.Message, "budget exceeded")
			assert.Contains(t, m.Info.Error.Message, tc.want)
			assert.Contains(t, m.Info.Error.Message, "max_budget_usd")
			assert.Equal(t, http.StatusPaymentRequired, m.Info.Error.Status)
			assert.Len(t, p.LLM.Requests(), before+1, "the refused turn never reached the upstream")
			assert.Equal(t, spent, l.Session(sess.ID, "").Usage.CostUSD, "a refusal costs nothing")

			// What the user of the CLI reads.
			cmd := exec.Command(platform.Lap(), "resume", sess.ID[:8], "-m", "Third question")
			cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH"), "LAP_URL=" + l.URL, "LAP_MASTER_KEY=" + platform.MasterKey}
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			require.ErrorAs(t, err, &exit, "%s", out)
			assert.Equal(t, 6, exit.ExitCode(), "a failed turn: %s", out)
			assert.Contains(t, string(out), "budget exceeded", "the CLI says why")
		})
	}
}

// TestOfflineWithMockModels is `make run` with no LLM configured: lapd
// says at start-up that new agents use the mock model; an agent created
// without a model gets it, and a message gets a real answer computed by
// lapd — the harness's list_files tool run on the repo, then a reply naming
// what it saw. An agent of a real model gets an error naming
// LITELLM_API_BASE.
func TestOfflineWithMockModels(t *testing.T) {
	t.Parallel()
	p := platform.New(t, settings(map[string]string{"LITELLM_API_BASE": "", "LITELLM_API_KEY": ""}))
	l := p.Start()
	defer l.Stop()
	waitfor.Within(t, platform.Deadline, "lapd to say that new agents use the mock model", func() bool {
		return strings.Contains(l.Output(), "no LITELLM_API_BASE: new agents default to mock/tools")
	})

	agent := l.CreateAgentWith(api.CreateAgentRequest{
		Name:    "offline",
		RepoURL: platform.GitRepo(t, map[string]string{"README.md": "# demo\n", "main.go": "package main\n"}),
	})
	assert.Equal(t, "mock/tools", agent.Model)
	assert.Equal(t, "lap", agent.HarnessID)
	sess := l.ReadySession("offline")
	m := l.Send(sess.ID, "What is in this repo?")
	var tools []protocol.Part
	for _, part := range m.Parts {
		if part.Type == protocol.PartTool {
			tools = append(tools, part)
		}
	}
	require.Len(t, tools, 1, "%+v", m.Parts)
	assert.Equal(t, "list_files", tools[0].Tool)
	require.NotNil(t, tools[0].State)
	assert.Equal(t, protocol.ToolCompleted, tools[0].State.Status)
	assert.Contains(t, tools[0].State.Output, "README.md")
	assert.Contains(t, tools[0].State.Output, "main.go")
	assert.Contains(t, m.Text(), "README.md")
	assert.Contains(t, m.Text(), "main.go")
	assert.Equal(t, int64(2), l.Session(sess.ID, "").Usage.Requests, "the mock's answers are counted")

	l.CreateAgentWith(api.CreateAgentRequest{Name: "online", Model: "gpt-4o"})
	sess = l.ReadySession("online")
	var reply api.Message
	status, body := l.Do(http.MethodPost, api.BasePath+"/sessions/"+sess.ID+"/message", api.SendMessageRequest{Text: "hello?"}, &reply)
	require.Equal(t, http.StatusOK, status, "%s", body)
	require.NotNil(t, reply.Info.Error, "%s", body)
	assert.Contains(t, reply.Info.Error.Message, "LITELLM_API_BASE")
	assert.Contains(t, reply.Info.Error.Message, "gpt-4o")
	assert.Empty(t, p.LLM.Requests(), "lapd has no upstream")
}
