package claudeagentsdk_test

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/gateway/mockllm"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/sandboxes/protocol"
)

// opencodeScript is the fake model behind the opencode test: opencode's
// tool names and inputs, in the OpenAI wire format it speaks to the gateway.
func opencodeScript(readme string) fakellm.Responder {
	return func(r fakellm.Request) fakellm.Reply {
		if len(r.Tools) == 0 {
			return fakellm.Text("A title")
		}
		prompt, step := turn(r, fixPrompt, slowPrompt, askPrompt)
		switch prompt {
		case fixPrompt:
			switch step {
			case 0:
				return fakellm.Reply{Text: "Let me read it first.", ToolCalls: []fakellm.ToolCall{fakellm.Call("read", map[string]any{"filePath": readme})}}
			case 1:
				return fakellm.CallTool("edit", map[string]any{"filePath": readme, "oldString": "hello world", "newString": "hello from the agent"})
			case 2:
				return fakellm.CallTool("bash", map[string]any{"command": "git diff --stat && grep -c agent README.md && echo secrets=${HARNESS_AUTH_TOKEN:-none}/${GIT_TOKEN:-none}", "description": "Show the change"})
			default:
				return fakellm.Text("I edited README.md.")
			}
		case slowPrompt:
			if step == 0 {
				return fakellm.CallTool("bash", map[string]any{"command": "echo started > slow.txt && sleep 120 && echo finished >> slow.txt", "description": "Run the slow job"})
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

// TestOpencodeHarness drives the pinned opencode through lap's adapter, as
// TestClaudeAgentSDKHarness does the SDK: edit the repo, abort, restart.
func TestOpencodeHarness(t *testing.T) {
	entry := built(t, "opencode.js")
	if _, err := os.Stat(filepath.Join("..", "opencode", "node_modules")); err != nil {
		t.Fatalf("opencode is not installed (%v): run `make build` first", err)
	}
	f := fakellm.Start(t)
	ws := t.TempDir()
	readme := filepath.Join(ws, "repo", "README.md")
	f.Respond(opencodeScript(readme))
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
	assert.Equal(t, "opencode", id.Harness)
	assert.Equal(t, "1.18.33", id.Version)

	ev := h.subscribe()
	session := h.newSession(protocol.CreateSessionRequest{Title: "readme"})

	m := h.send(session, fixPrompt+", please.")
	require.Nil(t, m.Info.Error, "turn error")
	tools := parts(m, protocol.PartTool)
	require.Len(t, tools, 3, "one message holds every step's tools: %+v", m.Parts)
	for i, want := range []string{"read", "edit", "bash"} {
		assert.Equal(t, want, tools[i].Tool)
		assert.Equal(t, protocol.ToolCompleted, tools[i].State.Status, "%s: %+v", want, tools[i].State)
	}
	assert.Contains(t, tools[2].State.Output, "README.md")
	assert.Contains(t, tools[2].State.Output, "secrets=none/none", "the agent sees no harness or git token")
	assert.Contains(t, m.Text(), "I edited README.md.")
	assert.Positive(t, m.Info.Tokens.Input)
	onDisk, err := os.ReadFile(readme)
	require.NoError(t, err)
	assert.Equal(t, "# demo\nhello from the agent\n", string(onDisk))

	ev.wait(t, func(e protocol.Event) bool {
		return e.Type == protocol.EventSessionIdle && e.Properties.SessionID == session
	})
	got := summary(ev.of(session))
	assert.Equal(t, "message.updated:open", got[0])
	assert.Equal(t, []string{"message.updated:completed", "session.idle"}, got[len(got)-2:])
	assert.Equal(t, 2, strings.Count(strings.Join(got, " "), "message.updated"), "one message per turn: %v", got)
	for _, tool := range []string{"read", "edit", "bash"} {
		running := indexOf(got, "message.part.updated:"+tool+":running", 0)
		done := indexOf(got, "message.part.updated:"+tool+":completed", 0)
		assert.True(t, running > 0 && done > running, "%s: running at %d, completed at %d in %v", tool, running, done, got)
	}
	for _, e := range ev.of(session) {
		if e.Properties.Part != nil {
			assert.Equal(t, m.Info.ID, e.Properties.Part.MessageID, "parts of every step belong to the turn's message")
		}
	}

	var main fakellm.Request
	for _, r := range f.Requests() {
		if len(r.Tools) > 0 {
			main = r
			break
		}
	}
	assert.Equal(t, fakellm.FormatOpenAIChat, main.Format)
	assert.Equal(t, "/llm/v1/chat/completions", main.Path)
	assert.Equal(t, "anthropic/claude-sonnet-4-5", main.Model)
	assert.Equal(t, "Bearer lapsb_test", main.Header.Get("Authorization"))
	assert.Contains(t, main.SystemText(), "You are a careful engineer.")

	// Abort mid-tool; a second turn meanwhile is a 409.
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
	errEv := ev.wait(t, func(e protocol.Event) bool {
		return e.Type == protocol.EventSessionError && e.Properties.SessionID == session
	})
	assert.Equal(t, "Aborted", errEv.Properties.Error.Name)
	content, err := os.ReadFile(slow)
	require.NoError(t, err)
	assert.Equal(t, "started\n", string(content), "the job was stopped")

	// Restart on the same workspace: opencode's store is in the workspace.
	h.stop()
	h = startHarness(t, entry, ws, env)
	var list []protocol.SessionInfo
	h.call("GET", "/session", nil, &list)
	require.Len(t, list, 1)
	assert.Equal(t, session, list[0].ID)
	var log []protocol.Message
	h.call("GET", "/session/"+session+"/message", nil, &log)
	assert.Equal(t, []string{"user", "assistant", "user", "assistant"}, roles(log))
	m3 := h.send(session, askPrompt+" you to do first?")
	require.Nil(t, m3.Info.Error)
	assert.Equal(t, "You asked me to fix the README.", m3.Text())
}

// TestOpencodeHistorySeeding: history given at session creation reaches
// the model, and the log shows the conversation as the user had it.
func TestOpencodeHistorySeeding(t *testing.T) {
	entry := built(t, "opencode.js")
	f := fakellm.Start(t)
	f.Respond(func(r fakellm.Request) fakellm.Reply {
		if len(r.Tools) > 0 && r.Contains("My name is Ada.") && r.Contains("Nice to meet you, Ada.") {
			return fakellm.Text("Your name is Ada.")
		}
		return fakellm.Text("I do not know.")
	})
	h := startHarness(t, entry, t.TempDir(), map[string]string{
		"LAP_MODEL":        "mock/tools",
		"LITELLM_API_BASE": f.URL() + "/llm",
		"LITELLM_API_KEY":  "lapsb_test",
	})
	history := []protocol.Message{
		{Info: protocol.MessageInfo{ID: "u1", Role: "user", Time: protocol.MessageTime{Created: 1}}, Parts: []protocol.Part{{Type: "text", Text: "My name is Ada."}}},
		{Info: protocol.MessageInfo{ID: "a1", Role: "assistant", Time: protocol.MessageTime{Created: 2, Completed: 3}}, Parts: []protocol.Part{{Type: "text", Text: "Nice to meet you, Ada."}}},
	}
	session := h.newSession(protocol.CreateSessionRequest{Title: "ada", History: history})
	m := h.send(session, "What is my name?")
	require.Nil(t, m.Info.Error)
	assert.Equal(t, "Your name is Ada.", m.Text())
	var log []protocol.Message
	h.call("GET", "/session/"+session+"/message", nil, &log)
	assert.Equal(t, []string{"user", "assistant", "user", "assistant"}, roles(log))
	assert.Equal(t, "What is my name?", log[2].Text())
	for _, r := range f.Requests() {
		assert.Equal(t, "mock/tools", r.Model, "lap's model name reaches the gateway whole")
	}
}

// TestOpencodeWithMockModel: lapd's offline demo model mock/tools drives
// opencode through the gateway's OpenAI format: bash with ls, then the answer.
func TestOpencodeWithMockModel(t *testing.T) {
	entry := built(t, "opencode.js")
	srv := httptest.NewServer(mockllm.Handler())
	t.Cleanup(srv.Close)
	h := startHarness(t, entry, t.TempDir(), map[string]string{
		"REPO_URL":         gitRepo(t),
		"LAP_MODEL":        mockllm.Tools,
		"LITELLM_API_BASE": srv.URL,
		"LITELLM_API_KEY":  "lapsb_test",
	})
	session := h.newSession(protocol.CreateSessionRequest{Title: "demo"})
	m := h.send(session, "What is in this repo?")
	require.Nil(t, m.Info.Error)
	tools := parts(m, protocol.PartTool)
	require.NotEmpty(t, tools)
	assert.Equal(t, protocol.ToolCompleted, tools[0].State.Status)
	assert.Contains(t, tools[0].State.Output, "README.md")
	assert.Contains(t, m.Text(), "README.md")
}
