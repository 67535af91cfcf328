package control

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/store"
)

// An idle session reads "idle" in lap's API and "ready" in LAP's view
// (api.LAPPrefix), where LAP's CLI resumes only a ready session; both
// show the sandbox scaled to zero, and both take the next message.
func TestLAPViewReadsAnIdleSessionAsReady(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("dozer", nil)
	sess := e.readySession("dozer")
	assert.Equal(t, api.SandboxRunning, sess.SandboxState)
	require.NoError(t, e.srv.o.suspendSession(t.Context(), sess.ID))

	own := e.session(sess.ID)
	assert.Equal(t, api.SessionIdle, own.Status)
	assert.Equal(t, api.SandboxScaledToZero, own.SandboxState)

	var lap api.Session
	status, body := e.raw(http.MethodGet, api.LAPPrefix+api.BasePath+"/sessions/"+sess.ID, "", nil, true)
	require.Equal(t, http.StatusOK, status, "%s", body)
	require.NoError(t, json.Unmarshal(body, &lap))
	assert.Equal(t, api.SessionReady, lap.Status)
	assert.Equal(t, api.SandboxScaledToZero, lap.SandboxState)

	var list api.List[api.Session]
	status, body = e.raw(http.MethodGet, api.LAPPrefix+api.BasePath+"/sessions", "", nil, true)
	require.Equal(t, http.StatusOK, status, "%s", body)
	require.NoError(t, json.Unmarshal(body, &list))
	require.Len(t, list.Data, 1)
	assert.Equal(t, api.SessionReady, list.Data[0].Status)

	status, _ = e.raw(http.MethodGet, api.LAPPrefix+api.BasePath+"/sessions/"+sess.ID, "", nil, false)
	assert.Equal(t, http.StatusUnauthorized, status, "LAP's view asks for the master key too")

	b, _ := json.Marshal(map[string]any{"parts": []map[string]string{{"type": "text", "text": "resumed"}}})
	status, body = e.raw(http.MethodPost, api.LAPPrefix+api.BasePath+"/sessions/"+sess.ID+"/opencode/session/"+sess.HarnessSessionID+"/message", "application/json", b, true)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, api.SessionReady, e.session(sess.ID).Status)
}

// Agents and sessions say whether their harness is a terminal one.
func TestSupportsTUI(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("chatty", nil)
	_, err := e.store.CreateAgent(t.Context(), store.Agent{Name: "tui", HarnessID: "claude-code", Model: "mock/echo", Branch: "main", Generation: 1})
	require.NoError(t, err)

	status, body := e.raw(http.MethodGet, api.BasePath+"/agents", "", nil, true)
	require.Equal(t, http.StatusOK, status, "%s", body)
	var raw struct {
		Data []map[string]any `json:"data"`
	}
	require.NoError(t, json.Unmarshal(body, &raw))
	tui := map[string]any{}
	for _, a := range raw.Data {
		tui[a["name"].(string)] = a["supports_tui"]
	}
	assert.Equal(t, map[string]any{"chatty": false, "tui": true}, tui, "supports_tui is always present")

	sess := e.readySession("chatty")
	status, body = e.raw(http.MethodGet, api.BasePath+"/sessions/"+sess.ID, "", nil, true)
	require.Equal(t, http.StatusOK, status)
	assert.Contains(t, string(body), `"supports_tui":false`)
}

// message_stream frames carry their name as "type" in their data, as
// LAP's do, and stay readable by lap's clients.
func TestStreamFramesAreTyped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("typist", nil)
	sess := e.readySession("typist")
	st := e.openSSE(http.MethodPost, "/sessions/"+sess.ID+"/message_stream", api.SendMessageRequest{Text: "frame me"})
	defer st.close()
	var harness int
	for ev, ok := st.next(); ok; ev, ok = st.next() {
		var typed struct {
			Type    string          `json:"type"`
			Event   json.RawMessage `json:"event"`
			Message string          `json:"message"`
		}
		require.NoError(t, json.Unmarshal(ev.data, &typed), "%s", ev.data)
		assert.Equal(t, ev.name, typed.Type, "frame %s: %s", ev.name, ev.data)
		switch ev.name {
		case api.EventReady:
			var s api.Session
			require.NoError(t, json.Unmarshal(ev.data, &s))
			assert.Equal(t, sess.ID, s.ID)
		case api.EventHarness:
			harness++
			assert.True(t, strings.HasPrefix(string(typed.Event), `{"type":"`), "the harness event is under event: %s", ev.data)
			he, err := api.DecodeHarnessEvent(ev.data)
			require.NoError(t, err)
			assert.NotEqual(t, api.EventHarness, he.Type)
		case api.EventDone:
			var m api.Message
			require.NoError(t, json.Unmarshal(ev.data, &m))
			assert.Equal(t, "echo: frame me", m.Text())
		}
	}
	assert.Positive(t, harness)

	// An error frame has type and message at the top, as LAP's.
	require.NoError(t, e.srv.o.endSession(t.Context(), sess.ID))
	ev := typedFrame(newEvent(api.EventError, api.ErrorDetail{Code: "x", Message: "it broke"}))
	assert.JSONEq(t, `{"type":"error","code":"x","message":"it broke"}`, string(ev.data))
	ev = typedFrame(newEvent(api.EventReady, struct{}{}))
	assert.JSONEq(t, `{"type":"ready"}`, string(ev.data))
}
