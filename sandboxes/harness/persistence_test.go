package harness_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/sandboxes/harness"
	"lap.dev/lap/sandboxes/protocol"
)

func TestRestartKeepsSessions(t *testing.T) {
	t.Parallel()
	e := start(t)
	e.llm.Enqueue(fakellm.CallTool("write_file", map[string]any{"path": "kept.txt", "content": "kept"}), fakellm.Text("first answer"))
	id := e.newSession(protocol.CreateSessionRequest{Title: "persisted", System: "Session system."})
	e.send(id, "first question")
	var before []protocol.Message
	require.Equal(t, 200, e.do("GET", "/session/"+id+"/message", nil, &before))

	e.restart()

	var list []protocol.SessionInfo
	require.Equal(t, 200, e.do("GET", "/session", nil, &list))
	assert.Equal(t, []protocol.SessionInfo{{ID: id, Title: "persisted"}}, list)
	var after []protocol.Message
	require.Equal(t, 200, e.do("GET", "/session/"+id+"/message", nil, &after))
	assert.Equal(t, before, after)
	assert.FileExists(t, filepath.Join(e.repo(), "kept.txt"), "the workspace is kept, not cloned again")

	e.llm.Enqueue(fakellm.Text("second answer"))
	e.send(id, "second question")
	reqs := e.llm.Requests()
	last := reqs[len(reqs)-1]
	var roles []string
	for _, m := range last.Messages {
		roles = append(roles, m.Role)
	}
	assert.Equal(t, []string{"system", "user", "assistant", "tool", "assistant", "user"}, roles)
	assert.Equal(t, "first question", last.Messages[1].Text)
	assert.Equal(t, "write_file", last.Messages[2].ToolCalls[0].Name)
	assert.Equal(t, "first answer", last.Messages[4].Text)
	assert.Contains(t, last.SystemText(), "Session system.")
}

func TestTranscriptSavedAfterEveryStep(t *testing.T) {
	t.Parallel()
	e := start(t)
	e.llm.Enqueue(fakellm.CallTool("bash", map[string]any{"command": "echo step one"}), fakellm.Hang())
	id := e.newSession(protocol.CreateSessionRequest{})
	require.Equal(t, 204, e.do("POST", "/session/"+id+"/prompt_async", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "go"}}}, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := e.llm.WaitForRequests(ctx, 2)
	require.NoError(t, err)

	// While the second model call hangs, the file holds the first step.
	var tr struct {
		Messages []protocol.Message `json:"messages"`
		LLM      []struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"llm"`
	}
	b, err := os.ReadFile(filepath.Join(e.cfg.Workspace, harness.SessionsDir, id+".json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &tr))
	require.Len(t, tr.LLM, 3)
	assert.Equal(t, "tool", tr.LLM[2].Role)
	assert.Equal(t, "step one\n", tr.LLM[2].Content)
	require.Len(t, tr.Messages, 2)
	assert.Zero(t, tr.Messages[1].Info.Time.Completed, "the turn is still running")
	assert.Equal(t, protocol.ToolCompleted, toolParts(tr.Messages[1])[0].State.Status)

	var aborted bool
	require.Equal(t, 200, e.do("POST", "/session/"+id+"/abort", nil, &aborted))
}

func TestInterruptedTurnRepairedOnLoad(t *testing.T) {
	t.Parallel()
	ws := t.TempDir()
	dir := filepath.Join(ws, harness.SessionsDir)
	require.NoError(t, os.MkdirAll(dir, 0o700))
	require.NoError(t, os.MkdirAll(filepath.Join(ws, harness.RepoDir), 0o755))
	id := "0190f0f0-0000-7000-8000-000000000001"
	// What a harness killed while running a tool leaves behind.
	file := `{"version":1,"id":"` + id + `","created":1,"messages":[
	 {"info":{"id":"u1","sessionID":"` + id + `","role":"user","time":{"created":1,"completed":1},"tokens":{"input":0,"output":0},"cost":0},"parts":[{"type":"text","text":"run it"}]},
	 {"info":{"id":"a1","sessionID":"` + id + `","role":"assistant","time":{"created":1},"tokens":{"input":0,"output":0},"cost":0},"parts":[{"type":"tool","tool":"bash","callID":"c1","state":{"status":"running","input":{"command":"make"}}}]}],
	 "llm":[{"role":"user","content":"run it"},{"role":"assistant","tool_calls":[{"id":"c1","name":"bash","arguments":"{\"command\":\"make\"}"}]}]}`
	require.NoError(t, os.WriteFile(filepath.Join(dir, id+".json"), []byte(file), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, id+".json.123.tmp"), []byte("{torn"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "garbage.json"), []byte("not json"), 0o600))

	e := start(t, func(c *harness.Config) { c.Workspace = ws })
	var msgs []protocol.Message
	require.Equal(t, 200, e.do("GET", "/session/"+id+"/message", nil, &msgs))
	require.Len(t, msgs, 2)
	require.NotNil(t, msgs[1].Info.Error)
	assert.Equal(t, "HarnessError", msgs[1].Info.Error.Name)
	assert.NotZero(t, msgs[1].Info.Time.Completed)
	assert.Equal(t, protocol.ToolError, msgs[1].Parts[0].State.Status)
	assert.NoFileExists(t, filepath.Join(dir, id+".json.123.tmp"))
	assert.FileExists(t, filepath.Join(dir, "garbage.json"), "unreadable files are left for a human")

	// The fake LLM rejects a conversation with an unanswered tool call,
	// so this turn succeeding shows the repair.
	e.llm.Enqueue(fakellm.Text("recovered"))
	msg := e.send(id, "continue")
	assert.Nil(t, msg.Info.Error)
	assert.Equal(t, "recovered", msg.Text())
	res, ok := e.llm.Requests()[0].ToolResult("c1")
	require.True(t, ok)
	assert.Contains(t, res, "the harness stopped before this turn finished")
}

func TestHistorySeedsSession(t *testing.T) {
	t.Parallel()
	e := start(t)
	history := []protocol.Message{
		{Info: protocol.MessageInfo{ID: "m1", Role: protocol.RoleUser}, Parts: []protocol.Part{{Type: protocol.PartText, Text: "What is 2+2?"}}},
		{Info: protocol.MessageInfo{ID: "m2", Role: protocol.RoleAssistant}, Parts: []protocol.Part{
			{Type: protocol.PartTool, Tool: "bash", CallID: "old", State: &protocol.ToolState{Status: protocol.ToolCompleted, Output: "4"}},
			{Type: protocol.PartText, Text: "It is 4."},
		}},
	}
	id := e.newSession(protocol.CreateSessionRequest{History: history})
	var msgs []protocol.Message
	require.Equal(t, 200, e.do("GET", "/session/"+id+"/message", nil, &msgs))
	require.Len(t, msgs, 2)
	assert.Equal(t, "m2", msgs[1].Info.ID)
	assert.Equal(t, id, msgs[1].Info.SessionID)

	e.llm.Enqueue(fakellm.Text("And 3+3 is 6."))
	e.send(id, "And 3+3?")
	req := e.llm.Requests()[0]
	var got []fakellm.Message
	for _, m := range req.Messages[1:] {
		got = append(got, fakellm.Message{Role: m.Role, Text: m.Text})
	}
	assert.Equal(t, []fakellm.Message{
		{Role: "user", Text: "What is 2+2?"},
		{Role: "assistant", Text: "It is 4."},
		{Role: "user", Text: "And 3+3?"},
	}, got)
}

func TestEmptyWorkspaceWithoutRepo(t *testing.T) {
	t.Parallel()
	e := start(t)
	var id protocol.Identity
	require.Equal(t, 200, e.do("GET", "/", nil, &id))
	assert.Equal(t, protocol.Identity{Harness: "lap", Version: "dev", Ready: true, Workspace: e.repo()}, id)
	entries, err := os.ReadDir(e.repo())
	require.NoError(t, err)
	assert.Empty(t, entries)
}

func TestFailedClone(t *testing.T) {
	t.Parallel()
	repo := gitRepo(t, "x")
	ws := t.TempDir()
	stale := filepath.Join(ws, harness.StateDir, "clone-123", "repo")
	require.NoError(t, os.MkdirAll(stale, 0o755)) // left by a crash mid-clone
	e := start(t, func(c *harness.Config) { c.RepoURL, c.Branch, c.Workspace = repo, "no-such-branch", ws })
	var id protocol.Identity
	require.Equal(t, 200, e.do("GET", "/", nil, &id))
	assert.False(t, id.Ready)
	assert.Contains(t, id.Error, "Remote branch no-such-branch not found")
	status, body := e.raw("GET", "/session", nil, "Bearer "+testToken)
	assert.Equal(t, 503, status)
	assert.Contains(t, string(body), "no-such-branch")
	status, _ = e.raw("POST", "/session/x/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "x"}}}, "Bearer "+testToken)
	assert.Equal(t, 404, status)
	sid := e.newSession(protocol.CreateSessionRequest{})
	status, _ = e.raw("POST", "/session/"+sid+"/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "x"}}}, "Bearer "+testToken)
	assert.Equal(t, 503, status, "no turn without a workspace")
	assert.NoDirExists(t, e.repo())
	assert.NoDirExists(t, filepath.Dir(stale))
}

func TestRepoDirIsUsedInPlace(t *testing.T) {
	t.Parallel()
	checkout := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(checkout, "main.go"), []byte("package main\n"), 0o644))
	e := start(t, func(c *harness.Config) { c.RepoDir, c.RepoURL = checkout, "file:///not/cloned" })
	var id protocol.Identity
	require.Equal(t, 200, e.do("GET", "/", nil, &id))
	assert.True(t, id.Ready)
	assert.Equal(t, checkout, id.Workspace)
	assert.NoDirExists(t, e.repo(), "nothing is cloned")

	e.llm.Enqueue(fakellm.CallTool("read_file", map[string]any{"path": "main.go"}), fakellm.Text("read"))
	msg := e.send(e.newSession(protocol.CreateSessionRequest{}), "read main.go")
	assert.Equal(t, "package main\n", toolParts(msg)[0].State.Output)

	missing := start(t, func(c *harness.Config) { c.RepoDir = filepath.Join(checkout, "nope") })
	require.Equal(t, 200, missing.do("GET", "/", nil, &id))
	assert.False(t, id.Ready)
	assert.Contains(t, id.Error, "no such file or directory")
}
