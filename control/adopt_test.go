package control

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/sandboxestest"
	"lap.dev/lap/store"
)

// A restarted control plane adopts the sandboxes that ran on: a live one
// serves its session as it was (no provision, no replay), a dead one is
// resumed at the next message, a lost one is replaced with the history
// replayed, one no record claims is destroyed, and one of an agent this
// lapd never had (another lapd's) is left alone.
func TestRestartAdoptsRunningSandboxes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	backend := sandboxestest.New(sandboxestest.Options{})
	t.Cleanup(backend.Close)
	first := startEnv(t, dir, envOptions{sandboxes: backend, noCleanup: true})
	a := first.createAgent("phoenix", nil)
	live, dead, lost := first.readySession("phoenix"), first.readySession("phoenix"), first.readySession("phoenix")
	for _, s := range []api.Session{live, dead, lost} {
		status, _, body := first.send(s.ID, "before the restart")
		require.Equal(t, http.StatusOK, status, "%s", body)
	}
	first.stop()

	agent := sandboxes.AgentSpec{ID: a.ID, Name: a.Name, HarnessID: "lap", Generation: 1}
	orphan, err := backend.Provision(ctx, sandboxes.Spec{ID: store.NewID(), Role: sandboxes.RoleSession, Agent: agent,
		Env: map[string]string{"HARNESS_AUTH_TOKEN": "t"}})
	require.NoError(t, err)
	require.NoError(t, backend.Kill(dead.SandboxID))
	deadRec, err := backend.Suspend(ctx, sandboxes.Sandbox{ID: dead.SandboxID}) // observed stopped
	require.NoError(t, err)
	require.False(t, deadRec.Running)
	require.NoError(t, backend.Forget(lost.SandboxID))
	// A sandbox of an agent this lapd never had: another lapd's, on the
	// same backend. It is left running.
	stranger := sandboxes.AgentSpec{ID: store.NewID(), Name: "stranger", HarnessID: "lap", Generation: 1}
	theirs, err := backend.Provision(ctx, sandboxes.Spec{ID: store.NewID(), Role: sandboxes.RoleSession, Agent: stranger,
		Env: map[string]string{"HARNESS_AUTH_TOKEN": "t"}})
	require.NoError(t, err)
	provisioned := backend.Provisions()

	second := startEnv(t, dir, envOptions{sandboxes: backend})
	waitfor.Cond(t, "the orphan destroyed", func() bool {
		_, err := backend.Logs(ctx, orphan, 1)
		return err != nil
	})

	status, m, body := second.send(live.ID, "/history")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "history: 0 messages; last: ", m.Text(), "the adopted harness session goes on, nothing replayed")
	assert.Equal(t, live.SandboxID, second.session(live.ID).SandboxID)
	assert.NotContains(t, phasesOf(t, second, live.ID), phaseRecovering)

	status, m, body = second.send(dead.ID, "/history")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "history: 0 messages; last: ", m.Text(), "resumed on its workspace")
	assert.Equal(t, dead.SandboxID, second.session(dead.ID).SandboxID)
	assert.Contains(t, phasesOf(t, second, dead.ID), phaseRecovering)

	status, m, body = second.send(lost.ID, "/history")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "history: 2 messages; last: echo: before the restart", m.Text(), "replayed into a new sandbox")
	assert.NotEqual(t, lost.SandboxID, second.session(lost.ID).SandboxID)

	assert.Equal(t, provisioned+1, backend.Provisions(), "only the lost sandbox was provisioned anew")
	_, err = backend.Logs(ctx, theirs, 1)
	assert.NoError(t, err, "another lapd's sandbox is left alone")
}
