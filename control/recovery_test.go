package control

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/store"
)

// TestStartRepairsWhatACrashLeft writes the state a SIGKILL mid-work
// leaves (an open turn, a session being created, a half-provisioned
// sandbox, a claimed sandbox with no session) and starts a control plane
// on it.
func TestStartRepairsWhatACrashLeft(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, store.FileName), store.Options{})
	require.NoError(t, err)
	a, err := st.CreateAgent(ctx, store.Agent{Name: "survivor", HarnessID: "lap", Model: "mock/echo", Branch: "main"})
	require.NoError(t, err)
	ready, err := st.CreateSession(ctx, store.Session{AgentID: a.ID, Status: api.SessionReady})
	require.NoError(t, err)
	_, err = st.AppendMessage(ctx, store.Message{SessionID: ready.ID, Role: "user", Status: store.MessagePending, Data: json.RawMessage(`{"info":{"role":"user"},"parts":[{"type":"text","text":"lost?"}]}`)})
	require.NoError(t, err)
	creating, err := st.CreateSession(ctx, store.Session{AgentID: a.ID, Status: api.SessionCreating, Phase: phaseProvisioning})
	require.NoError(t, err)
	half, err := st.PutSandbox(ctx, store.Sandbox{AgentID: a.ID, Generation: 1, State: store.SandboxProvisioning, SessionID: creating.ID})
	require.NoError(t, err)
	orphan, err := st.PutSandbox(ctx, store.Sandbox{AgentID: a.ID, Generation: 1, State: store.SandboxClaimed, SessionID: "never-stored"})
	require.NoError(t, err)
	require.NoError(t, st.Close())

	e := startEnv(t, dir, envOptions{})
	msgs := e.messages(ready.ID)
	require.Len(t, msgs, 1, "the interrupted turn is neither lost nor duplicated")
	assert.Equal(t, store.MessageFailed, msgs[0].Info.Status)
	assert.Equal(t, "Interrupted", msgs[0].Info.Error.Name)

	var sess api.Session
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+creating.ID+"?wait=ready", nil, &sess))
	assert.Equal(t, api.SessionReady, sess.Status, "a session being created is provisioned again")
	status, m, body := e.send(creating.ID, "made it")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "echo: made it", m.Text())

	for _, id := range []string{half.ID, orphan.ID} {
		waitfor.Cond(t, "sandbox "+id+" retired", func() bool {
			sb, err := e.store.GetSandbox(ctx, id)
			return err == nil && !sb.Live()
		})
	}
}
