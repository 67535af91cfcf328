package harness_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes/harness"
	"lap.dev/lap/sandboxes/protocol"
)

func TestTurnWithTools(t *testing.T) {
	t.Parallel()
	repo := gitRepo(t, "# Feature branch\nhello from feature\n")
	e := start(t, func(c *harness.Config) { c.RepoURL, c.Branch = repo, "feature" })
	ev := e.subscribe()
	e.llm.Enqueue(
		fakellm.Reply{Text: "Looking around.", ToolCalls: []fakellm.ToolCall{fakellm.Call("list_files", map[string]any{})}},
		fakellm.CallTool("read_file", map[string]any{"path": "README.md"}),
		fakellm.CallTool("write_file", map[string]any{"path": "notes/new.txt", "content": "written by the agent\n"}),
		fakellm.CallTool("bash", map[string]any{"command": "cat notes/new.txt"}),
		fakellm.Reply{Text: "Done: the README says hello.", Chunks: 4},
	)
	id := e.newSession(protocol.CreateSessionRequest{Title: "t", System: "Session note."})
	msg := e.send(id, "Look at the README and write a note.")

	assert.Nil(t, msg.Info.Error)
	assert.Equal(t, protocol.RoleAssistant, msg.Info.Role)
	assert.NotZero(t, msg.Info.Time.Completed)
	assert.Equal(t, "test/model", msg.Info.ModelID)
	assert.Positive(t, msg.Info.Tokens.Input)
	assert.Positive(t, msg.Info.Tokens.Output)
	assert.Equal(t, "Looking around.Done: the README says hello.", msg.Text())

	tools := toolParts(msg)
	require.Len(t, tools, 4)
	for i, want := range []string{"list_files", "read_file", "write_file", "bash"} {
		assert.Equal(t, want, tools[i].Tool)
		assert.Equal(t, protocol.ToolCompleted, tools[i].State.Status, "tool %s: %+v", want, tools[i].State)
		assert.NotEmpty(t, tools[i].CallID)
	}
	assert.Contains(t, tools[0].State.Output, "README.md")
	assert.Contains(t, tools[0].State.Output, "docs/guide.md")
	assert.Equal(t, "# Feature branch\nhello from feature\n", tools[1].State.Output, "the clone is of the feature branch")
	assert.Equal(t, "written by the agent\n", tools[3].State.Output)
	assert.Equal(t, "bash: cat notes/new.txt", tools[3].State.Title)
	assert.JSONEq(t, `{"command":"cat notes/new.txt"}`, string(tools[3].State.Input))

	b, err := os.ReadFile(filepath.Join(e.repo(), "notes", "new.txt"))
	require.NoError(t, err)
	assert.Equal(t, "written by the agent\n", string(b))

	// The model saw the tools, the prompts and each tool's result.
	reqs := e.llm.Requests()
	require.Len(t, reqs, 5)
	assert.ElementsMatch(t, []string{"bash", "read_file", "write_file", "edit_file", "list_files", "grep"}, reqs[0].ToolNames())
	assert.Contains(t, reqs[0].SystemText(), "You are a test agent.")
	assert.Contains(t, reqs[0].SystemText(), "Session note.")
	assert.Equal(t, "Bearer lapsb_test", reqs[0].Header.Get("Authorization"))
	assert.True(t, reqs[0].Stream && reqs[0].IncludeUsage)
	assert.Equal(t, "/v1/chat/completions", reqs[0].Path)
	last := reqs[4]
	out, ok := last.ToolResult(last.Messages[len(last.Messages)-2].ToolCalls[0].ID)
	require.True(t, ok)
	assert.Equal(t, "written by the agent\n", out)

	// The event stream told the same story, in order.
	all := ev.waitFor(t, idle(id))
	var seq []string
	states := map[string][]string{}
	var deltas string
	for _, x := range all {
		if x.Properties.SessionID != id {
			continue
		}
		seq = append(seq, x.Type)
		if x.Type == protocol.EventPartUpdated {
			p := x.Properties.Part
			switch p.Type {
			case protocol.PartTool:
				states[p.CallID] = append(states[p.CallID], p.State.Status)
			case protocol.PartText:
				deltas += x.Properties.Delta
			}
		}
	}
	assert.Equal(t, protocol.EventMessageUpdated, seq[0])
	assert.Equal(t, []string{protocol.EventMessageUpdated, protocol.EventSessionIdle}, seq[len(seq)-2:])
	assert.Equal(t, msg.Text(), deltas)
	require.Len(t, states, 4)
	for call, st := range states {
		assert.Equal(t, []string{"pending", "running", "completed"}, st, "call %s", call)
	}
	first := all[0]
	assert.Equal(t, protocol.EventServerConnected, first.Type)

	// GET /session/:id/message holds the user and the assistant message.
	var msgs []protocol.Message
	require.Equal(t, 200, e.do("GET", "/session/"+id+"/message", nil, &msgs))
	require.Len(t, msgs, 2)
	assert.Equal(t, "Look at the README and write a note.", msgs[0].Text())
	assert.Equal(t, msg.Info.ID, msgs[1].Info.ID)
	assert.Len(t, toolParts(msgs[1]), 4)
}

func TestAuth(t *testing.T) {
	t.Parallel()
	e := start(t)
	tests := []struct {
		name, method, path, auth string
		want                     int
	}{
		{"identity needs no token", "GET", "/", "", 200},
		{"missing token", "GET", "/session", "", 401},
		{"wrong token", "GET", "/session", "Bearer nope", 401},
		{"not bearer", "GET", "/session", testToken, 401},
		{"right token", "GET", "/session", "Bearer " + testToken, 200},
		{"events need the token", "GET", "/event", "", 401},
		{"create needs the token", "POST", "/session", "Bearer wrong", 401},
		{"unknown route is 401 first", "GET", "/nope", "", 401},
		{"unknown route with token", "GET", "/nope", "Bearer " + testToken, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := e.raw(tt.method, tt.path, nil, tt.auth)
			assert.Equal(t, tt.want, status, "%s %s: %s", tt.method, tt.path, body)
		})
	}
}

func TestAuthOffWithoutToken(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *harness.Config) { c.AuthToken = "" })
	status, _ := e.raw("GET", "/session", nil, "")
	assert.Equal(t, 200, status)
	assert.Equal(t, "127.0.0.1:4096", harness.ListenAddr("", "4096", ""))
	assert.Equal(t, ":4096", harness.ListenAddr("", "4096", "secret"))
	assert.Equal(t, "127.0.0.1:4096", harness.ListenAddr("127.0.0.1", "4096", "secret"))
}

func TestPathEscapesRefused(t *testing.T) {
	t.Parallel()
	e := start(t)
	outside := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(outside, "secret.txt"), []byte("top secret"), 0o644))
	require.NoError(t, os.Symlink(outside, filepath.Join(e.repo(), "escape")))
	e.llm.Enqueue(
		fakellm.CallTools(
			fakellm.Call("read_file", map[string]any{"path": "../../etc/passwd"}),
			fakellm.Call("read_file", map[string]any{"path": "/etc/passwd"}),
			fakellm.Call("read_file", map[string]any{"path": "escape/secret.txt"}),
			fakellm.Call("write_file", map[string]any{"path": "escape/new.txt", "content": "x"}),
			fakellm.Call("edit_file", map[string]any{"path": "escape/secret.txt", "old_string": "top", "new_string": "no"}),
			fakellm.Call("grep", map[string]any{"pattern": "secret", "path": "escape"}),
		),
		fakellm.Text("refused"),
	)
	id := e.newSession(protocol.CreateSessionRequest{})
	msg := e.send(id, "escape")
	tools := toolParts(msg)
	require.Len(t, tools, 6)
	for _, p := range tools {
		assert.Equal(t, protocol.ToolError, p.State.Status, "%s %s", p.Tool, p.State.Input)
		assert.Contains(t, p.State.Error, "outside the workspace", "%s %s", p.Tool, p.State.Input)
		assert.NotContains(t, p.State.Output, "top secret")
	}
	_, err := os.Stat(filepath.Join(outside, "new.txt"))
	assert.True(t, os.IsNotExist(err), "nothing was written through the symlink")
	b, _ := os.ReadFile(filepath.Join(outside, "secret.txt"))
	assert.Equal(t, "top secret", string(b))

	// The model reads why.
	last := e.llm.Requests()[1]
	res, ok := last.ToolResult(last.Messages[len(last.Messages)-7].ToolCalls[0].ID)
	require.True(t, ok)
	assert.True(t, strings.HasPrefix(res, "Error: path \"../../etc/passwd\" is outside the workspace"), res)
}

func TestAbortKillsProcessGroup(t *testing.T) {
	t.Parallel()
	e := start(t)
	pidFile := filepath.Join(t.TempDir(), "pids")
	e.llm.Enqueue(fakellm.CallTool("bash", map[string]any{
		"command": "sleep 60 & echo $! > " + pidFile + "; echo $$ >> " + pidFile + "; sleep 60",
	}))
	id := e.newSession(protocol.CreateSessionRequest{})
	ev := e.subscribe()

	done := make(chan protocol.Message, 1)
	go func() { done <- e.send(id, "sleep") }()
	ev.waitFor(t, func(x protocol.Event) bool {
		return x.Type == protocol.EventPartUpdated && x.Properties.Part.State != nil && x.Properties.Part.State.Status == protocol.ToolRunning
	})
	var pids []int
	waitfor.Within(t, 10*time.Second, "pid file", func() bool {
		b, _ := os.ReadFile(pidFile)
		pids = nil
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return len(pids) == 2
	})

	began := time.Now()
	var aborted bool
	require.Equal(t, 200, e.do("POST", "/session/"+id+"/abort", nil, &aborted))
	assert.True(t, aborted)
	msg := <-done
	took := time.Since(began)
	require.NotNil(t, msg.Info.Error)
	assert.Equal(t, "Aborted", msg.Info.Error.Name)
	assert.Less(t, took, 30*time.Second, "the 60 s sleep was cut short")
	tools := toolParts(msg)
	require.Len(t, tools, 1)
	assert.Equal(t, protocol.ToolError, tools[0].State.Status)
	for _, pid := range pids {
		waitfor.Within(t, 10*time.Second, "process gone", func() bool { return syscall.Kill(pid, 0) == syscall.ESRCH })
	}
	all := ev.waitFor(t, idle(id))
	var sawError bool
	for _, x := range all {
		if x.Type == protocol.EventSessionError && x.Properties.SessionID == id {
			sawError = x.Properties.Error.Name == "Aborted"
		}
	}
	assert.True(t, sawError, "session.error with Aborted before session.idle")

	// The session takes the next turn; the model saw the aborted call.
	e.llm.Enqueue(fakellm.Text("ok"))
	next := e.send(id, "again")
	assert.Nil(t, next.Info.Error)
	reqs := e.llm.Requests()
	require.Len(t, reqs, 2)
	res, ok := reqs[1].ToolResult(tools[0].CallID)
	require.True(t, ok, "the aborted call has a result in the next conversation")
	assert.Contains(t, res, "command aborted")
}

func TestAbortCancelsLLMStream(t *testing.T) {
	t.Parallel()
	e := start(t)
	e.llm.Enqueue(fakellm.Reply{Text: "thinking about it", Hang: true})
	id := e.newSession(protocol.CreateSessionRequest{})
	done := make(chan protocol.Message, 1)
	go func() { done <- e.send(id, "hang") }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := e.llm.WaitForRequests(ctx, 1)
	require.NoError(t, err)

	var aborted bool
	require.Equal(t, 200, e.do("POST", "/session/"+id+"/abort", nil, &aborted))
	assert.True(t, aborted)
	msg := <-done
	require.NotNil(t, msg.Info.Error)
	assert.Equal(t, "Aborted", msg.Info.Error.Name)
	assert.Equal(t, "thinking about it", msg.Text(), "the streamed text is kept")

	// The next turn's conversation keeps the partial answer.
	e.llm.Enqueue(fakellm.Text("ok"))
	e.send(id, "next")
	reqs := e.llm.Requests()
	require.Len(t, reqs, 2)
	roles := []string{}
	for _, m := range reqs[1].Messages {
		roles = append(roles, m.Role)
	}
	assert.Equal(t, []string{"system", "user", "assistant", "user"}, roles)
	assert.Equal(t, "thinking about it", reqs[1].Messages[2].Text)

	// Aborting an idle session is a no-op.
	require.Equal(t, 200, e.do("POST", "/session/"+id+"/abort", nil, &aborted))
	assert.False(t, aborted)
}

func TestOneTurnAtATime(t *testing.T) {
	t.Parallel()
	e := start(t)
	e.llm.Enqueue(fakellm.Hang())
	id := e.newSession(protocol.CreateSessionRequest{})
	require.Equal(t, 204, e.do("POST", "/session/"+id+"/prompt_async", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "one"}}}, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := e.llm.WaitForRequests(ctx, 1)
	require.NoError(t, err)

	status, body := e.raw("POST", "/session/"+id+"/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "two"}}}, "Bearer "+testToken)
	assert.Equal(t, http.StatusConflict, status, "%s", body)
	assert.Contains(t, string(body), `"code":"conflict"`)

	// Another session is not blocked.
	e.llm.Enqueue(fakellm.Text("other"))
	other := e.newSession(protocol.CreateSessionRequest{})
	assert.Equal(t, "other", e.send(other, "hi").Text())

	var aborted bool
	require.Equal(t, 200, e.do("POST", "/session/"+id+"/abort", nil, &aborted))
	assert.True(t, aborted)
}

func TestLLMErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		replies  []fakellm.Reply
		requests int
		text     string
		err      *protocol.MessageError
	}{
		{"retried rate limit", []fakellm.Reply{fakellm.Fail(429, "slow"), fakellm.Fail(503, "busy"), fakellm.Text("fine")}, 3, "fine", nil},
		{"retries bounded", []fakellm.Reply{fakellm.Fail(500, "a"), fakellm.Fail(500, "b"), fakellm.Fail(500, "c"), fakellm.Fail(502, "still down")}, 3,
			"", &protocol.MessageError{Name: "APIError", Message: "c", Status: 500}},
		{"client error not retried", []fakellm.Reply{fakellm.Fail(400, "model not found: x/y")}, 1,
			"", &protocol.MessageError{Name: "APIError", Message: "model not found: x/y", Status: 400}},
		{"failure mid-stream not retried", []fakellm.Reply{{Text: "half", StreamError: "overloaded"}}, 1,
			"half", &protocol.MessageError{Name: "APIError", Message: "overloaded"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := start(t, func(c *harness.Config) { c.MaxRetries = 2 })
			e.llm.Enqueue(tt.replies...)
			id := e.newSession(protocol.CreateSessionRequest{})
			msg := e.send(id, "hi")
			assert.Equal(t, tt.err, msg.Info.Error)
			assert.Equal(t, tt.text, msg.Text())
			assert.Len(t, e.llm.Requests(), tt.requests)
		})
	}
}

func TestNonJSONErrorKeepsStatus(t *testing.T) {
	t.Parallel()
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream is down", http.StatusBadGateway)
	}))
	t.Cleanup(proxy.Close)
	e := start(t, func(c *harness.Config) { c.LLMBaseURL, c.MaxRetries = proxy.URL+"/v1", -1 })
	id := e.newSession(protocol.CreateSessionRequest{})
	msg := e.send(id, "hi")
	assert.Equal(t, &protocol.MessageError{Name: "APIError", Message: "upstream is down", Status: 502}, msg.Info.Error)
}

func TestStepLimit(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *harness.Config) { c.MaxSteps = 3 })
	e.llm.Respond(func(fakellm.Request) fakellm.Reply {
		return fakellm.CallTool("bash", map[string]any{"command": "true"})
	})
	id := e.newSession(protocol.CreateSessionRequest{})
	msg := e.send(id, "loop forever")
	require.NotNil(t, msg.Info.Error)
	assert.Equal(t, "HarnessError", msg.Info.Error.Name)
	assert.Contains(t, msg.Info.Error.Message, "stopped after 3 steps")
	assert.Len(t, e.llm.Requests(), 3)
	assert.Len(t, toolParts(msg), 3)
}

func TestModelSelection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ref  *protocol.ModelRef
		want string
	}{
		{"LAP_MODEL by default", nil, "test/model"},
		{"provider and model joined", &protocol.ModelRef{ProviderID: "anthropic", ModelID: "claude-sonnet-4-5"}, "anthropic/claude-sonnet-4-5"},
		{"full name passed through", &protocol.ModelRef{ProviderID: "litellm", ModelID: "anthropic/claude-sonnet-4-5"}, "anthropic/claude-sonnet-4-5"},
		{"model alone", &protocol.ModelRef{ModelID: "gpt-4o"}, "gpt-4o"},
	}
	e := start(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.llm.Enqueue(fakellm.Text("ok"))
			id := e.newSession(protocol.CreateSessionRequest{})
			var msg protocol.Message
			require.Equal(t, 200, e.do("POST", "/session/"+id+"/message", protocol.SendMessageRequest{
				Parts: []protocol.InputPart{{Type: "text", Text: "hi"}}, Model: tt.ref, System: "Message note.",
			}, &msg))
			reqs := e.llm.Requests()
			assert.Equal(t, tt.want, reqs[len(reqs)-1].Model)
			assert.Equal(t, tt.want, msg.Info.ModelID)
			assert.Contains(t, reqs[len(reqs)-1].SystemText(), "Message note.")
		})
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *harness.Config) { c.Model = "" })
	id := e.newSession(protocol.CreateSessionRequest{})
	tests := []struct {
		name, method, path string
		body               any
		want               int
	}{
		{"empty message", "POST", "/session/" + id + "/message", protocol.SendMessageRequest{}, 400},
		{"no model anywhere", "POST", "/session/" + id + "/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "x"}}}, 400},
		{"unknown session", "POST", "/session/nope/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "x"}}}, 404},
		{"unknown session messages", "GET", "/session/nope/message", nil, 404},
		{"bad json", "POST", "/session", "{", 400},
		{"bad history role", "POST", "/session", protocol.CreateSessionRequest{History: []protocol.Message{{Info: protocol.MessageInfo{Role: "tool"}}}}, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, b := e.raw(tt.method, tt.path, tt.body, "Bearer "+testToken)
			assert.Equal(t, tt.want, status, "%s", b)
			assert.Contains(t, string(b), `"error":{"code":`)
		})
	}
}

func TestDeleteSession(t *testing.T) {
	t.Parallel()
	e := start(t)
	id := e.newSession(protocol.CreateSessionRequest{Title: "bye"})
	file := filepath.Join(e.cfg.Workspace, harness.SessionsDir, id+".json")
	require.FileExists(t, file)
	var info protocol.SessionInfo
	require.Equal(t, 200, e.do("GET", "/session/"+id, nil, &info))
	assert.Equal(t, "bye", info.Title)

	var ok bool
	require.Equal(t, 200, e.do("DELETE", "/session/"+id, nil, &ok))
	assert.True(t, ok)
	assert.NoFileExists(t, file)
	assert.Equal(t, 404, e.do("GET", "/session/"+id, nil, nil))
	assert.Equal(t, 404, e.do("DELETE", "/session/"+id, nil, nil))
	var list []protocol.SessionInfo
	require.Equal(t, 200, e.do("GET", "/session", nil, &list))
	assert.Empty(t, list)
}

func TestHeartbeat(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *harness.Config) { c.HeartbeatInterval = 20 * time.Millisecond })
	ev := e.subscribe()
	all := ev.waitFor(t, func(x protocol.Event) bool { return x.Type == protocol.EventServerHeartbeat })
	assert.Equal(t, protocol.EventServerConnected, all[0].Type)
}

func TestToolEnvironmentHasNoSecrets(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *harness.Config) {
		c.Env = append(os.Environ(), "HARNESS_AUTH_TOKEN="+testToken, "LITELLM_API_KEY=lapsb_test", "GIT_TOKEN=ghp_secret", "AGENT_SECRET=kept")
		c.GitToken = "ghp_secret"
	})
	e.llm.Enqueue(fakellm.CallTool("bash", map[string]any{"command": "env"}), fakellm.Text("ok"))
	id := e.newSession(protocol.CreateSessionRequest{})
	out := toolParts(e.send(id, "env"))[0].State.Output
	assert.NotContains(t, out, testToken)
	assert.NotContains(t, out, "lapsb_test")
	assert.NotContains(t, out, "ghp_secret")
	assert.Contains(t, out, "AGENT_SECRET=kept", "the agent's own variables stay")
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  harness.Config
		want string
	}{
		{"no workspace", harness.Config{LLMBaseURL: "http://x"}, "workspace is required (WORKSPACE)"},
		{"no LLM", harness.Config{Workspace: t.TempDir()}, "LLM base URL is required (LITELLM_API_BASE)"},
		{"bad LLM URL", harness.Config{Workspace: t.TempDir(), LLMBaseURL: "lapd:3000/llm"}, `LLM base URL "lapd:3000/llm" (LITELLM_API_BASE) is not an http(s) URL`},
	}
	for _, tt := range tests {
		_, err := harness.New(tt.cfg)
		assert.EqualError(t, err, tt.want, tt.name)
	}
}
