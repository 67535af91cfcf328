package claudeagentsdk_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/gateway/mockllm"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/sandboxes/protocol"
)

const (
	fixPrompt  = "Fix the README"
	slowPrompt = "Run the slow job"
	askPrompt  = "What did I ask"
)

// sdkScript is the fake model behind the claude-agent-sdk test: Claude
// Code's own tool names and inputs, chosen by the turn's prompt and step.
func sdkScript(readme string) fakellm.Responder {
	return func(r fakellm.Request) fakellm.Reply {
		if len(r.Tools) == 0 {
			// Claude Code's side requests (titles, summaries) offer no tools.
			return fakellm.Text("ok")
		}
		prompt, step := turn(r, fixPrompt, slowPrompt, askPrompt)
		switch prompt {
		case fixPrompt:
			switch step {
			case 0:
				return fakellm.Reply{Text: "Let me read it first.", ToolCalls: []fakellm.ToolCall{fakellm.Call("Read", map[string]any{"file_path": readme})}}
			case 1:
				return fakellm.CallTool("Edit", map[string]any{"file_path": readme, "old_string": "hello world", "new_string": "hello from the agent"})
			case 2:
				return fakellm.CallTool("Bash", map[string]any{"command": "git diff --stat && grep -c agent README.md && echo secrets=${HARNESS_AUTH_TOKEN:-none}/${GIT_TOKEN:-none}", "description": "Show the change"})
			default:
				return fakellm.Text("I edited README.md.")
			}
		case slowPrompt:
			if step == 0 {
				return fakellm.CallTool("Bash", map[string]any{"command": "echo started > slow.txt && sleep 120 && echo finished >> slow.txt", "description": "Run the slow job"})
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
	entry := built(t, "server.js")
	f := fakellm.Start(t)
	ws := t.TempDir()
	readme := filepath.Join(ws, "repo", "README.md")
	f.Respond(sdkScript(readme))
	env := map[string]string{
		"REPO_URL":         gitRepo(t),
		"BRANCH":           "main",
		"GIT_TOKEN":        "git-secret",
		"AGENT_PROMPT":     "You are a careful engineer.",
		"LAP_MODEL":        "anthropic/claude-sonnet-4-5",
		"LITELLM_API_BASE": f.URL() + "/llm",
		"LITELLM_API_KEY":  "lapsb_test",
	}
	h := startHarness(t, entry, ws, env)

	var id protocol.Identity
	h.call("GET", "/", nil, &id)
	assert.Equal(t, "claude-agent-sdk", id.Harness)
	assert.Equal(t, filepath.Join(ws, "repo"), id.Workspace)
	status, err := httpGet(h.url + "/session")
	require.NoError(t, err)
	assert.Equal(t, http.StatusUnauthorized, status, "routes but GET / need the token")

	ev := h.subscribe()
	session := h.newSession(protocol.CreateSessionRequest{Title: "readme"})

	// Turn 1: Read, Edit and Bash in the repo.
	m := h.send(session, fixPrompt+", please.")
	require.Nil(t, m.Info.Error, "turn error")
	assert.NotZero(t, m.Info.Time.Completed)
	assert.Equal(t, "claude-sonnet-4-5", m.Info.ModelID)
	assert.Positive(t, m.Info.Tokens.Input)
	assert.Positive(t, m.Info.Tokens.Output)
	tools := parts(m, protocol.PartTool)
	require.Len(t, tools, 3)
	for i, want := range []string{"read", "edit", "bash"} {
		assert.Equal(t, want, tools[i].Tool)
		assert.Equal(t, protocol.ToolCompleted, tools[i].State.Status, "%s: %+v", want, tools[i].State)
		assert.NotEmpty(t, tools[i].CallID)
	}
	assert.JSONEq(t, `{"file_path":"`+readme+`"}`, string(tools[0].State.Input))
	assert.Contains(t, tools[2].State.Output, "README.md")
	assert.Contains(t, tools[2].State.Output, "secrets=none/none", "the agent sees no harness or git token")
	assert.Contains(t, tools[2].State.Title, "git diff --stat")
	assert.Contains(t, m.Text(), "Let me read it first.")
	assert.Contains(t, m.Text(), "I edited README.md.")
	onDisk, err := os.ReadFile(readme)
	require.NoError(t, err)
	assert.Equal(t, "# demo\nhello from the agent\n", string(onDisk), "the edit is on disk")

	// Its events, in lap's order.
	ev.wait(t, func(e protocol.Event) bool {
		return e.Type == protocol.EventSessionIdle && e.Properties.SessionID == session
	})
	got := summary(ev.of(session))
	require.NotEmpty(t, got)
	assert.Equal(t, "message.updated:open", got[0])
	assert.Equal(t, "session.idle", got[len(got)-1])
	assert.Equal(t, "message.updated:completed", got[len(got)-2])
	for _, tool := range []string{"read", "edit", "bash"} {
		running := indexOf(got, "message.part.updated:"+tool+":running", 0)
		done := indexOf(got, "message.part.updated:"+tool+":completed", 0)
		assert.True(t, running > 0 && done > running, "%s: running at %d, completed at %d in %v", tool, running, done, got)
	}
	var deltas []string
	for _, e := range ev.of(session) {
		if e.Properties.Part != nil && e.Properties.Part.Type == protocol.PartText {
			deltas = append(deltas, e.Properties.Delta)
		}
	}
	assert.Contains(t, strings.Join(deltas, ""), "I edited README.md.", "text streams as deltas")

	// What reached the model: the gateway's URL, key, model and prompt.
	var main fakellm.Request
	for _, r := range f.Requests() {
		if len(r.Tools) > 0 {
			main = r
			break
		}
	}
	assert.Equal(t, fakellm.FormatAnthropicMessages, main.Format)
	assert.Equal(t, "/llm/v1/messages", main.Path)
	assert.Equal(t, "claude-sonnet-4-5", main.Model)
	assert.Equal(t, "lapsb_test", main.Header.Get("X-Api-Key"))
	assert.True(t, main.Stream)
	assert.Contains(t, main.SystemText(), "You are a careful engineer.")
	assert.Contains(t, main.ToolNames(), "Bash")
	for _, r := range f.Requests() {
		assert.Equal(t, "claude-sonnet-4-5", r.Model, "every request uses the agent's model")
	}

	// Turn 2: abort while the tool runs; a second turn meanwhile is a 409.
	slow := filepath.Join(ws, "repo", "slow.txt")
	reply := make(chan protocol.Message, 1)
	go func() { reply <- h.send(session, slowPrompt+" now.") }()
	ev.wait(t, func(e protocol.Event) bool {
		p := e.Properties.Part
		return p != nil && p.Tool == "bash" && p.State != nil && p.State.Status == protocol.ToolRunning && strings.Contains(string(p.State.Input), "sleep 120")
	})
	require.Eventually(t, func() bool { _, err := os.Stat(slow); return err == nil }, time.Minute, 50*time.Millisecond, "the command started")
	resp := h.request("POST", "/session/"+session+"/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "another"}}})
	resp.Body.Close()
	assert.Equal(t, 409, resp.StatusCode)
	var aborted bool
	h.call("POST", "/session/"+session+"/abort", nil, &aborted)
	assert.True(t, aborted)
	var m2 protocol.Message
	select {
	case m2 = <-reply:
	case <-time.After(2 * time.Minute):
		t.Fatal("the aborted turn did not return")
	}
	require.NotNil(t, m2.Info.Error)
	assert.Equal(t, "Aborted", m2.Info.Error.Name)
	bash := parts(m2, protocol.PartTool)
	require.Len(t, bash, 1)
	assert.Equal(t, protocol.ToolError, bash[0].State.Status)
	errEv := ev.wait(t, func(e protocol.Event) bool {
		return e.Type == protocol.EventSessionError && e.Properties.SessionID == session
	})
	assert.Equal(t, "Aborted", errEv.Properties.Error.Name)
	content, err := os.ReadFile(slow)
	require.NoError(t, err)
	assert.Equal(t, "started\n", string(content), "the job was stopped")

	// Restart on the same workspace: the conversation is still there, and
	// the SDK resumes it (the model sees the first turn).
	h.stop()
	h = startHarness(t, entry, ws, env)
	var list []protocol.SessionInfo
	h.call("GET", "/session", nil, &list)
	require.Len(t, list, 1)
	assert.Equal(t, session, list[0].ID)
	var log []protocol.Message
	h.call("GET", "/session/"+session+"/message", nil, &log)
	require.Len(t, log, 4)
	assert.Equal(t, []string{"user", "assistant", "user", "assistant"}, roles(log))
	assert.Equal(t, "Aborted", log[3].Info.Error.Name)
	m3 := h.send(session, askPrompt+" you to do first?")
	require.Nil(t, m3.Info.Error)
	assert.Equal(t, "You asked me to fix the README.", m3.Text())
}

// TestClaudeAgentSDKHistorySeeding: a session created with history on a
// fresh workspace (its old sandbox is gone) carries that history to the model.
func TestClaudeAgentSDKHistorySeeding(t *testing.T) {
	entry := built(t, "server.js")
	f := fakellm.Start(t)
	f.Respond(func(r fakellm.Request) fakellm.Reply {
		if len(r.Tools) > 0 && r.Contains("My name is Ada.") && r.Contains("Nice to meet you, Ada.") {
			return fakellm.Text("Your name is Ada.")
		}
		return fakellm.Text("I do not know.")
	})
	h := startHarness(t, entry, t.TempDir(), map[string]string{
		"LAP_MODEL":        "claude-sonnet-4-5",
		"LITELLM_API_BASE": f.URL() + "/llm/v1",
		"LITELLM_API_KEY":  "lapsb_test",
	})
	history := []protocol.Message{
		{Info: protocol.MessageInfo{ID: "u1", Role: "user", Time: protocol.MessageTime{Created: 1}}, Parts: []protocol.Part{{Type: "text", Text: "My name is Ada."}}},
		{Info: protocol.MessageInfo{ID: "a1", Role: "assistant", Time: protocol.MessageTime{Created: 2, Completed: 3}}, Parts: []protocol.Part{{Type: "text", Text: "Nice to meet you, Ada."}}},
	}
	session := h.newSession(protocol.CreateSessionRequest{History: history})
	m := h.send(session, "What is my name?")
	require.Nil(t, m.Info.Error)
	assert.Equal(t, "Your name is Ada.", m.Text())
	var log []protocol.Message
	h.call("GET", "/session/"+session+"/message", nil, &log)
	assert.Equal(t, []string{"user", "assistant", "user", "assistant"}, roles(log))
	assert.Equal(t, "What is my name?", log[2].Text(), "the log keeps what the user typed")
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
	entry := built(t, "server.js")
	srv := httptest.NewServer(mockllm.Handler())
	t.Cleanup(srv.Close)
	h := startHarness(t, entry, t.TempDir(), map[string]string{
		"REPO_URL":         gitRepo(t),
		"LAP_MODEL":        mockllm.Tools,
		"LITELLM_API_BASE": srv.URL,
		"LITELLM_API_KEY":  "lapsb_test",
	})
	session := h.newSession(protocol.CreateSessionRequest{})
	m := h.send(session, "What is in this repo?")
	require.Nil(t, m.Info.Error)
	tools := parts(m, protocol.PartTool)
	require.Len(t, tools, 1)
	assert.Equal(t, "bash", tools[0].Tool)
	assert.Equal(t, protocol.ToolCompleted, tools[0].State.Status)
	assert.Contains(t, tools[0].State.Output, "README.md")
	assert.Contains(t, m.Text(), "README.md")
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
