package control

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/store"
)

// passSend sends text as LAP's CLI does: POST …/opencode/session/<hsID>/<op>
// with {"parts":[…]}.
func (e *env) passSend(sessionID, hsID, op, text string) (int, api.Message, []byte) {
	e.t.Helper()
	b, _ := json.Marshal(map[string]any{"parts": []map[string]string{{"type": "text", "text": text}}})
	status, body := e.raw(http.MethodPost, api.BasePath+"/sessions/"+sessionID+"/opencode/session/"+hsID+"/"+op, "application/json", b, true)
	var m api.Message
	if status == http.StatusOK {
		require.NoError(e.t, json.Unmarshal(body, &m))
	}
	return status, m, body
}

// Turns through the pass-through are in the durable log like any other.
func TestPassThroughTurnsAreLogged(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("logged", nil)
	sess := e.readySession("logged")

	status, m, body := e.passSend(sess.ID, sess.HarnessSessionID, "message", "hello")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "echo: hello", m.Text())
	assert.Equal(t, sess.HarnessSessionID, m.Info.SessionID, "the answer names the harness session addressed")
	log := e.messages(sess.ID)
	require.Len(t, log, 2)
	assert.Equal(t, "hello", log[0].Text())
	assert.Equal(t, store.MessageCompleted, log[0].Info.Status)
	assert.Equal(t, "echo: hello", log[1].Text())

	status, _, body = e.passSend(sess.ID, sess.HarnessSessionID, "prompt_async", "later")
	require.Equal(t, http.StatusNoContent, status, "%s", body)
	waitfor.Cond(t, "the async turn in the log", func() bool {
		log := e.messages(sess.ID)
		return len(log) == 4 && log[3].Info.Status == store.MessageCompleted
	})
	assert.Equal(t, "echo: later", e.messages(sess.ID)[3].Text())
}

// A pass-through turn longer than the idle timeout is not cut by the
// reaper (it was: 502 mid-turn).
func TestPassThroughTurnIsNotReaped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{settings: map[string]string{"SESSION_IDLE_TIMEOUT": "100ms"}})
	e.createAgent("longturn", nil)
	sess := e.readySession("longturn")
	status, m, body := e.passSend(sess.ID, sess.HarnessSessionID, "message", "/slow 1s")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Nil(t, m.Info.Error, "the turn ran to its end")
	assert.Equal(t, "echo: /slow 1s", m.Text())
}

// The pass-through resumes an idle sandbox and brings back a crashed one,
// for turns and for any other harness call.
func TestPassThroughResumesIdleAndCrashed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("phoenix", nil)
	sess := e.readySession("phoenix")

	require.NoError(t, e.srv.o.suspendSession(t.Context(), sess.ID))
	status, m, body := e.passSend(sess.ID, sess.HarnessSessionID, "message", "wake up")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "echo: wake up", m.Text())

	require.NoError(t, e.backend.Kill(sess.SandboxID))
	status, m, body = e.passSend(sess.ID, sess.HarnessSessionID, "message", "still there?")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "echo: still there?", m.Text())

	require.NoError(t, e.backend.Kill(sess.SandboxID))
	status, body = e.raw(http.MethodGet, api.BasePath+"/sessions/"+sess.ID+"/opencode/session/"+sess.HarnessSessionID+"/message", "", nil, true)
	require.Equal(t, http.StatusOK, status, "a crashed harness is brought back for any call: %s", body)
	assert.Len(t, e.messages(sess.ID), 4)
}

// A client that read the harness session id before its sandbox was
// replaced (a new harness session) keeps working with it.
func TestPassThroughOldHarnessSessionID(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("amnesiac", nil)
	sess := e.readySession("amnesiac")
	status, _, body := e.passSend(sess.ID, sess.HarnessSessionID, "message", "first")
	require.Equal(t, http.StatusOK, status, "%s", body)
	require.NoError(t, e.srv.o.suspendSession(t.Context(), sess.ID))
	require.NoError(t, e.backend.Forget(sess.SandboxID))

	status, m, body := e.passSend(sess.ID, sess.HarnessSessionID, "message", "/history")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "history: 2 messages; last: echo: first", m.Text())
	after := e.session(sess.ID)
	require.NotEqual(t, sess.HarnessSessionID, after.HarnessSessionID, "a new harness session")

	status, body = e.raw(http.MethodGet, api.BasePath+"/sessions/"+sess.ID+"/opencode/session/"+sess.HarnessSessionID+"/message", "", nil, true)
	require.Equal(t, http.StatusOK, status, "the old id reaches the current harness session: %s", body)
	status, m, body = e.passSend(sess.ID, sess.HarnessSessionID, "message", "again")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "echo: again", m.Text())
}

// A relayed call in flight — here a turn in a harness session the client
// opened itself, which lapd passes through untouched — keeps the reaper
// away too.
func TestPassThroughCallInFlightIsActivity(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{settings: map[string]string{"SESSION_IDLE_TIMEOUT": "100ms"}})
	e.createAgent("ownsession", nil)
	sess := e.readySession("ownsession")
	status, body := e.raw(http.MethodPost, api.BasePath+"/sessions/"+sess.ID+"/opencode/session", "application/json", []byte(`{"title":"mine"}`), true)
	require.Equal(t, http.StatusOK, status, "%s", body)
	var own struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal(body, &own))
	require.NotEqual(t, sess.HarnessSessionID, own.ID)

	status, m, body := e.passSend(sess.ID, own.ID, "message", "/slow 1s")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Nil(t, m.Info.Error)
	assert.Equal(t, "echo: /slow 1s", m.Text())
	assert.Empty(t, e.messages(sess.ID), "a client's own harness session is not lapd's conversation")
}
