package lapclient_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/cli/clitest"
	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/lapclient"
	"lap.dev/lap/internal/waitfor"
)

// lapUser is LAP's CLI configured as the README tells a LAP user:
// base = lapd's URL + api.LAPPrefix, key = the master key.
func lapUser(srv *clitest.Server) *lapclient.Client {
	return &lapclient.Client{Base: srv.URL + api.LAPPrefix, Key: srv.Key, PollEvery: 20 * time.Millisecond}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// squash collapses runs of the same request (the CLI's polling) into one.
func squash(log []string) []string {
	var out []string
	for _, l := range log {
		if len(out) == 0 || out[len(out)-1] != l {
			out = append(out, l)
		}
	}
	return out
}

// lapMessages is the session's durable log, read through lap's own API.
func lapMessages(t *testing.T, srv *clitest.Server, id string) []api.Message {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+api.BasePath+"/sessions/"+id+"/messages", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+srv.Key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var list api.List[api.Message]
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&list))
	return list.Data
}

// lapStatus is the session's status in lap's own API.
func lapStatus(t *testing.T, srv *clitest.Server, id string) api.Session {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+api.BasePath+"/sessions/"+id, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+srv.Key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var sess api.Session
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&sess))
	return sess
}

// `lap my-sdk-agent`, two lines typed, exactly as LAP's CLI does it.
func TestREPLMode(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := clitest.NewServer(t, clitest.Options{})
	a := srv.AddAgent(t, api.CreateAgentRequest{Name: "my-sdk-agent", HarnessID: "claude-agent-sdk", Model: "anthropic/claude-sonnet-4-5"})
	c := lapUser(srv)

	agents, err := c.Agents(ctx)
	require.NoError(t, err)
	require.Len(t, agents, 1)
	require.NotNil(t, agents[0].SupportsTUI, "lapd says supports_tui, so the CLI does not guess")
	assert.Empty(t, lapclient.TUIAgents(agents))

	agent, sess, err := c.Open(ctx, "my-sdk-agent")
	require.NoError(t, err)
	assert.Equal(t, a.ID, agent.ID)
	assert.Equal(t, "ready", sess.Status)
	assert.Equal(t, lapclient.ModeREPL, lapclient.Mode(agent, sess, false))

	repl, err := c.StartREPL(ctx, sess.ID)
	require.NoError(t, err)
	assert.False(t, repl.Skills, "lapd has no skills: 404")
	for _, line := range []string{"hello", "and again"} {
		reply, err := repl.Send(ctx, line)
		require.NoError(t, err)
		assert.Equal(t, "echo: "+line, reply.Text)
	}

	base := "/api/v1/managed_agents"
	msg := "POST " + base + "/sessions/" + sess.ID + "/opencode/session/" + sess.HarnessSessionID + "/message"
	assert.Equal(t, []string{
		"GET " + base + "/agents", // the read above, then Open's own
		"POST " + base + "/agents/" + a.ID + "/session",
		"GET " + base + "/sessions/" + sess.ID,
		"GET /api/v1/skills",
		"GET " + base + "/sessions/" + sess.ID,
		msg,
	}, squash(c.Log()))
	log := lapMessages(t, srv, sess.ID)
	require.Len(t, log, 4, "the CLI's turns are in lapd's durable log")
	assert.Equal(t, "hello", log[0].Text())
	assert.Equal(t, "echo: and again", log[3].Text())
}

// `lap --resume <url>` of a session lapd scaled to zero: LAP's CLI sees it
// ready, resumes it and chats on.
func TestResumeScaledToZero(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv := clitest.NewServer(t, clitest.Options{Settings: map[string]string{"SESSION_IDLE_TIMEOUT": "200ms"}})
	srv.AddAgent(t, api.CreateAgentRequest{Name: "my-sdk-agent", HarnessID: "claude-agent-sdk", Model: "anthropic/claude-sonnet-4-5"})
	first := lapUser(srv)
	_, sess, err := first.Open(ctx, "my-sdk-agent")
	require.NoError(t, err)
	repl, err := first.StartREPL(ctx, sess.ID)
	require.NoError(t, err)
	_, err = repl.Send(ctx, "before the nap")
	require.NoError(t, err)

	waitfor.Cond(t, "lapd to scale the session to zero", func() bool {
		return lapStatus(t, srv, sess.ID).Status == api.SessionIdle
	})
	own := lapStatus(t, srv, sess.ID)
	assert.Equal(t, api.SandboxScaledToZero, own.SandboxState)

	// A new CLI run, given the session's URL as LAP prints it.
	c := lapUser(srv)
	resumed, mode, err := c.Resume(ctx, srv.URL+api.LAPPrefix+"/sessions/"+sess.ID)
	require.NoError(t, err)
	assert.Equal(t, "ready", resumed.Status)
	assert.Equal(t, lapclient.ModeREPL, mode)
	repl, err = c.StartREPL(ctx, resumed.ID)
	require.NoError(t, err)
	reply, err := repl.Send(ctx, "after the nap")
	require.NoError(t, err)
	assert.Equal(t, "echo: after the nap", reply.Text)
	assert.Equal(t, api.SessionReady, lapStatus(t, srv, sess.ID).Status, "the message resumed the sandbox")

	base := "/api/v1/managed_agents/sessions/" + sess.ID
	assert.Equal(t, []string{
		"GET " + base,
		"GET /api/v1/skills",
		"GET " + base,
		"POST " + base + "/opencode/session/" + resumed.HarnessSessionID + "/message",
	}, c.Log())
	log := lapMessages(t, srv, sess.ID)
	require.Len(t, log, 4)
	assert.True(t, strings.HasSuffix(log[3].Text(), "after the nap"))

	// lap's own clients still read "idle" once it sleeps again.
	waitfor.Cond(t, "the session to sleep again", func() bool {
		return lapStatus(t, srv, sess.ID).Status == api.SessionIdle
	})
	_, _, err = c.Resume(ctx, sess.ID)
	require.NoError(t, err, "and LAP's CLI still reads it ready")
}
