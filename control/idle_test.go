package control

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/store"
)

func TestIdleSessionIsScaledToZeroAndResumed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{settings: map[string]string{"SESSION_IDLE_TIMEOUT": "200ms"}})
	e.createAgent("napper", nil)
	sess := e.readySession("napper")
	status, _, body := e.send(sess.ID, "before the nap")
	require.Equal(t, http.StatusOK, status, "%s", body)

	waitfor.Cond(t, "the session to go idle", func() bool { return e.session(sess.ID).Status == api.SessionIdle })
	assert.Empty(t, e.backend.Running(), "the harness was stopped")
	sb, err := e.store.GetSandbox(context.Background(), sess.SandboxID)
	require.NoError(t, err)
	assert.Equal(t, store.SandboxSuspended, sb.State)

	status, m, body := e.send(sess.ID, "/history")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "history: 0 messages; last: ", m.Text(), "the same harness session, nothing replayed")
	assert.Equal(t, sess.SandboxID, e.session(sess.ID).SandboxID, "resumed, not replaced")
	assert.Contains(t, phasesOf(t, e, sess.ID), phaseResuming)
}

// A turn longer than the idle timeout is not cut short by the reaper.
func TestIdleReaperLeavesRunningTurnsAlone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{settings: map[string]string{"SESSION_IDLE_TIMEOUT": "100ms"}})
	e.createAgent("worker", nil)
	sess := e.readySession("worker")
	status, m, body := e.send(sess.ID, "/slow 1s")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Nil(t, m.Info.Error, "the turn ran to its end")
	assert.Equal(t, "echo: /slow 1s", m.Text())
}

func TestIdleTick(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ timeout, want time.Duration }{
		{2 * time.Second, 500 * time.Millisecond},
		{100 * time.Millisecond, 100 * time.Millisecond},
		{15 * time.Minute, 30 * time.Second},
	} {
		assert.Equal(t, tt.want, idleTick(tt.timeout), "idleTick(%s)", tt.timeout)
	}
}

func phasesOf(t *testing.T, e *env, id string) []string {
	t.Helper()
	var log api.List[api.LogEntry]
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+id+"/log", nil, &log))
	var phases []string
	for _, l := range log.Data {
		if l.Kind == "phase" {
			phases = append(phases, l.Message)
		}
	}
	return phases
}

func TestRepeatedCrashesFailTheSession(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("fragile", nil)
	sess := e.readySession("fragile")
	for i := 1; i < crashLimit; i++ {
		require.NoError(t, e.backend.Kill(sess.SandboxID))
		status, m, body := e.send(sess.ID, "still there?")
		require.Equal(t, http.StatusOK, status, "crash %d: %s", i, body)
		assert.Equal(t, "echo: still there?", m.Text())
	}
	assert.Contains(t, phasesOf(t, e, sess.ID), phaseRecovering, "a crashed harness is recovering, not resuming")

	require.NoError(t, e.backend.Kill(sess.SandboxID))
	status, _, body := e.send(sess.ID, "and now?")
	require.Equal(t, http.StatusBadGateway, status, "%s", body)
	failed := e.session(sess.ID)
	assert.Equal(t, api.SessionFailed, failed.Status)
	assert.Contains(t, failed.FailureReason, "crashed 3 times within 5m0s")
	assert.Contains(t, failed.FailureReason, "harness killed", "the reason carries the harness's output")
	assert.True(t, strings.HasPrefix(errorOf(t, body).Message, "session "+sess.ID+" failed"))

	var restarted api.Session
	require.Equal(t, http.StatusAccepted, e.do(http.MethodPost, "/sessions/"+sess.ID+"/restart", nil, &restarted))
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"?wait=ready&timeout=60s", nil, &restarted))
	assert.Equal(t, api.SessionReady, restarted.Status, "restart gives it a new sandbox")
}
