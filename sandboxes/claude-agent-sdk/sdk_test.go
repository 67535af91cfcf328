package claudeagentsdk_test

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/sandboxes/protocol"
)

func parts(m protocol.Message, typ string) []protocol.Part {
	var out []protocol.Part
	for _, p := range m.Parts {
		if p.Type == typ {
			out = append(out, p)
		}
	}
	return out
}

// TestClaudeAgentSDKHarness drives the real SDK (and its Claude Code) through
// lap's protocol: a turn that reads, edits and runs commands in the cloned
// repo, an abort in the middle of a tool, and a restart on the same
// workspace that keeps the conversation.
func TestClaudeAgentSDKHarness(t *testing.T) {
	r := startEditRun(t, built(t, "server.js"), claudeCode)
	h := r.h

	var id protocol.Identity
	h.call("GET", "/", nil, &id)
	assert.Equal(t, "claude-agent-sdk", id.Harness)
	assert.Equal(t, filepath.Join(r.ws, "repo"), id.Workspace)
	status, err := httpGet(h.url + "/session")
	require.NoError(t, err)
	assert.Equal(t, http.StatusUnauthorized, status, "routes but GET / need the token")

	ev := h.subscribe()
	session := h.newSession(protocol.CreateSessionRequest{Title: "readme"})

	// Turn 1: Read, Edit and Bash in the repo.
	m, tools := r.fixTurn(t, session)
	assert.NotZero(t, m.Info.Time.Completed)
	assert.Equal(t, "claude-sonnet-4-5", m.Info.ModelID)
	assert.Positive(t, m.Info.Tokens.Output)
	for _, tool := range tools {
		assert.NotEmpty(t, tool.CallID)
	}
	assert.JSONEq(t, `{"file_path":"`+r.readme+`"}`, string(tools[0].State.Input))
	assert.Contains(t, tools[2].State.Title, "git diff --stat")
	assert.Contains(t, m.Text(), "Let me read it first.")

	// Its events, in lap's order.
	turnEvents(t, ev, session)
	var deltas []string
	for _, e := range ev.of(session) {
		if e.Properties.Part != nil && e.Properties.Part.Type == protocol.PartText {
			deltas = append(deltas, e.Properties.Delta)
		}
	}
	assert.Contains(t, strings.Join(deltas, ""), "I edited README.md.", "text streams as deltas")

	// What reached the model: the gateway's URL, key, model and prompt.
	main := mainRequest(r.f)
	assert.Equal(t, fakellm.FormatAnthropicMessages, main.Format)
	assert.Equal(t, "/llm/v1/messages", main.Path)
	assert.Equal(t, "claude-sonnet-4-5", main.Model)
	assert.Equal(t, "lapsb_test", main.Header.Get("X-Api-Key"))
	assert.True(t, main.Stream)
	assert.Contains(t, main.SystemText(), "You are a careful engineer.")
	assert.Contains(t, main.ToolNames(), "Bash")
	for _, req := range r.f.Requests() {
		assert.Equal(t, "claude-sonnet-4-5", req.Model, "every request uses the agent's model")
	}

	// Turn 2: abort while the tool runs; a second turn meanwhile is a 409.
	m2 := r.abortSlowTurn(t, ev, session)
	bash := parts(m2, protocol.PartTool)
	require.Len(t, bash, 1)
	assert.Equal(t, protocol.ToolError, bash[0].State.Status)

	// Restart on the same workspace: the conversation is still there, and
	// the SDK resumes it (the model sees the first turn).
	log := r.restartAndAsk(t, session)
	require.Len(t, log, 4)
	assert.Equal(t, "Aborted", log[3].Info.Error.Name)
}

// TestClaudeAgentSDKHistorySeeding: a session created with history on a
// fresh workspace (its old sandbox is gone) carries that history to the model.
func TestClaudeAgentSDKHistorySeeding(t *testing.T) {
	historySeeding(t, built(t, "server.js"), "claude-sonnet-4-5", "/llm/v1", "")
}

// TestClaudeAgentSDKAPIError: an LLM failure is a 200 with info.error.
func TestClaudeAgentSDKAPIError(t *testing.T) {
	entry := built(t, "server.js")
	f := fakellm.Start(t)
	f.Respond(func(fakellm.Request) fakellm.Reply { return fakellm.Fail(400, "model not allowed for this sandbox") })
	h := startHarness(t, entry, t.TempDir(), map[string]string{
		"LAP_MODEL":        "anthropic/claude-sonnet-4-5",
		"LITELLM_API_BASE": f.URL() + "/llm",
		"LITELLM_API_KEY":  "lapsb_test",
	})
	ev := h.subscribe()
	session := h.newSession(protocol.CreateSessionRequest{})
	m := h.send(session, "hello")
	require.NotNil(t, m.Info.Error)
	assert.Equal(t, "APIError", m.Info.Error.Name)
	assert.Equal(t, 400, m.Info.Error.Status)
	assert.Contains(t, m.Info.Error.Message, "model not allowed for this sandbox")
	assert.Empty(t, parts(m, protocol.PartText), "the error is not the reply")
	ev.wait(t, func(e protocol.Event) bool {
		return e.Type == protocol.EventSessionIdle && e.Properties.SessionID == session
	})
	got := summary(ev.of(session))
	assert.Equal(t, []string{"message.updated:open", "message.updated:completed", "session.error", "session.idle"}, got)
}

func roles(msgs []protocol.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, m.Info.Role)
	}
	return out
}

func httpGet(url string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestClaudeAgentSDKWithMockModel: lapd's offline demo model mock/tools
// (served here by the gateway's mock over real HTTP) drives the SDK: it
// calls Claude Code's Bash tool with ls and answers with what came back.
func TestClaudeAgentSDKWithMockModel(t *testing.T) {
	tools := mockModelTurn(t, built(t, "server.js"), "")
	require.Len(t, tools, 1)
	assert.Equal(t, "bash", tools[0].Tool)
}

// TestClaudeAgentSDKCrashMidTurn: a harness killed in the middle of a turn
// (SIGKILL, nothing saved at the end) comes back on the same workspace with
// that turn closed as failed, and the next turn still has the conversation.
func TestClaudeAgentSDKCrashMidTurn(t *testing.T) {
	entry := built(t, "server.js")
	f := fakellm.Start(t)
	ws := t.TempDir()
	f.Respond(func(r fakellm.Request) fakellm.Reply {
		if len(r.Tools) == 0 {
			return fakellm.Text("ok")
		}
		// The ask comes first: when a crash lost the SDK's transcript, the
		// harness puts the earlier turns, the slow prompt too, in front of it.
		prompt, step := turn(r, askPrompt, slowPrompt)
		switch {
		case prompt == slowPrompt && step == 0:
			return fakellm.CallTool("Bash", map[string]any{"command": "echo started > slow.txt && sleep 120 && echo finished >> slow.txt", "description": "Run the slow job"})
		case prompt == askPrompt && r.Contains(slowPrompt):
			return fakellm.Text("You asked me to run the slow job.")
		}
		return fakellm.Text("I do not remember.")
	})
	env := map[string]string{
		"LAP_MODEL":        "anthropic/claude-sonnet-4-5",
		"LITELLM_API_BASE": f.URL() + "/llm",
		"LITELLM_API_KEY":  "lapsb_test",
	}
	h := startHarness(t, entry, ws, env)
	ev := h.subscribe()
	session := h.newSession(protocol.CreateSessionRequest{})
	resp := h.request("POST", "/session/"+session+"/prompt_async", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: slowPrompt + " now."}}})
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	ev.wait(t, func(e protocol.Event) bool {
		p := e.Properties.Part
		return p != nil && p.Tool == "bash" && p.State != nil && p.State.Status == protocol.ToolRunning
	})

	require.NoError(t, syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL))
	<-h.exited
	h = startHarness(t, entry, ws, env)
	var log []protocol.Message
	h.call("GET", "/session/"+session+"/message", nil, &log)
	require.Equal(t, []string{"user", "assistant"}, roles(log))
	require.NotNil(t, log[1].Info.Error)
	assert.Equal(t, "HarnessError", log[1].Info.Error.Name)
	assert.NotZero(t, log[1].Info.Time.Completed)

	m := h.send(session, askPrompt+" you to do?")
	require.Nil(t, m.Info.Error)
	assert.Equal(t, "You asked me to run the slow job.", m.Text())
}
