package control

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/store"
)

// everyState is every state a transition can be asked to start from.
var everyState = []string{statusNew, api.SessionCreating, api.SessionReady, api.SessionIdle, api.SessionFailed, api.SessionDead}

// TestTransitions applies every transition to a session in every state:
// the states it allows must end as want says, every other state must be
// refused with the error it names and leave the session as it was.
func TestTransitions(t *testing.T) {
	t.Parallel()
	type outcome struct{ status, phase string }
	tests := []struct {
		name string
		tr   transition
		want map[string]outcome // by source state; absent: refused
		// refused is the kind of the refusal from a state (errConflict
		// unless named).
		refused map[string]error
		check   func(t *testing.T, got store.Session)
	}{{
		name: "queued",
		tr:   queued(),
		want: map[string]outcome{statusNew: {api.SessionCreating, phaseQueued}},
	}, {
		name: "claimed warm",
		tr:   claimedWarm("sb-1", "hs-1"),
		want: map[string]outcome{statusNew: {api.SessionReady, phaseReady}},
		check: func(t *testing.T, got store.Session) {
			assert.Equal(t, "sb-1", got.SandboxID)
			assert.Equal(t, "hs-1", got.HarnessSessionID)
		},
	}, {
		name: "progressed",
		tr:   progressed(phaseProvisioning),
		want: map[string]outcome{
			api.SessionCreating: {api.SessionCreating, phaseProvisioning},
			api.SessionReady:    {api.SessionReady, phaseProvisioning},
			api.SessionIdle:     {api.SessionIdle, phaseProvisioning},
		},
	}, {
		name: "attached",
		tr:   attached("sb-2", "hs-2", 7),
		want: map[string]outcome{
			api.SessionCreating: {api.SessionReady, phaseReady},
			api.SessionReady:    {api.SessionReady, phaseReady},
			api.SessionIdle:     {api.SessionReady, phaseReady},
		},
		check: func(t *testing.T, got store.Session) {
			assert.Equal(t, "sb-2", got.SandboxID)
			assert.Equal(t, "hs-2", got.HarnessSessionID)
			assert.EqualValues(t, 7, got.Generation)
			assert.Empty(t, got.FailureReason)
		},
	}, {
		name: "resumed",
		tr:   resumed(),
		want: map[string]outcome{
			api.SessionReady: {api.SessionReady, phaseReady},
			api.SessionIdle:  {api.SessionReady, phaseReady},
		},
	}, {
		name: "suspended",
		tr:   suspended(),
		want: map[string]outcome{api.SessionReady: {api.SessionIdle, phaseSuspended}},
	}, {
		name: "harness reopened",
		tr:   harnessReopened("hs-3"),
		want: map[string]outcome{
			api.SessionCreating: {api.SessionCreating, "before"},
			api.SessionReady:    {api.SessionReady, "before"},
			api.SessionIdle:     {api.SessionIdle, "before"},
		},
		check: func(t *testing.T, got store.Session) { assert.Equal(t, "hs-3", got.HarnessSessionID) },
	}, {
		name: "failed",
		tr:   failed("no sandbox"),
		want: map[string]outcome{
			api.SessionCreating: {api.SessionFailed, ""},
			api.SessionReady:    {api.SessionFailed, ""},
			api.SessionIdle:     {api.SessionFailed, ""},
		},
		check: func(t *testing.T, got store.Session) { assert.Equal(t, "no sandbox", got.FailureReason) },
	}, {
		name: "restarting",
		tr:   restarting(),
		want: map[string]outcome{
			api.SessionFailed: {api.SessionCreating, phaseRestarting},
			api.SessionReady:  {api.SessionCreating, phaseRestarting},
			api.SessionIdle:   {api.SessionCreating, phaseRestarting},
		},
		check: func(t *testing.T, got store.Session) { assert.Empty(t, got.FailureReason) },
	}, {
		name: "ended",
		tr:   ended(),
		want: map[string]outcome{
			api.SessionCreating: {api.SessionDead, ""},
			api.SessionReady:    {api.SessionDead, ""},
			api.SessionIdle:     {api.SessionDead, ""},
			api.SessionFailed:   {api.SessionDead, ""},
		},
	}}
	for _, tt := range tests {
		for _, from := range everyState {
			t.Run(fmt.Sprintf("%s from %q", tt.name, from), func(t *testing.T) {
				before := store.Session{ID: "s-1", Status: from, Phase: "before", FailureReason: "earlier", SandboxID: "sb-0", HarnessSessionID: "hs-0"}
				got := before
				err := tt.tr.on(&got)
				want, allowed := tt.want[from]
				if !allowed {
					kind := errConflict
					if from == api.SessionDead {
						kind = errEnded
					}
					require.Error(t, err, "%s from %q must be refused", tt.name, from)
					assert.ErrorIs(t, err, kind)
					assert.Equal(t, before, got, "a refused transition changes nothing")
					return
				}
				require.NoError(t, err)
				assert.Equal(t, want, outcome{got.Status, got.Phase})
				if tt.check != nil {
					tt.check(t, got)
				}
			})
		}
	}
}

// TestRestartRefusals keeps the messages a refused restart answers with.
func TestRestartRefusals(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		from, msg string
		kind      error
	}{
		{api.SessionDead, "session s-1 has ended; create a new one", errEnded},
		{api.SessionCreating, "session s-1 is already starting", errConflict},
	} {
		sess := store.Session{ID: "s-1", Status: tt.from}
		err := restarting().on(&sess)
		assert.ErrorIs(t, err, tt.kind, tt.from)
		assert.EqualError(t, err, tt.msg, tt.from)
	}
}

// TestTurnRefusals: which states take a turn, and what the others say.
func TestTurnRefusals(t *testing.T) {
	t.Parallel()
	for _, from := range everyState {
		sess := store.Session{ID: "s-1", Status: from, FailureReason: "boom"}
		err := acceptsTurn(sess)
		switch from {
		case api.SessionDead:
			assert.ErrorIs(t, err, errEnded)
		case api.SessionFailed:
			assert.ErrorIs(t, err, errFailed)
		default:
			assert.NoError(t, err, from)
		}
		err = readyErr(sess, nil)
		switch from {
		case api.SessionDead:
			assert.ErrorIs(t, err, errEnded)
		case api.SessionFailed:
			assert.ErrorIs(t, err, errNotReady)
		default:
			assert.NoError(t, err, from)
		}
	}
}

// TestMarkWritesTimeline: a transition applied through mark stores status
// and phase and the timeline gets both, in one update; a refused one
// writes nothing.
func TestMarkWritesTimeline(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.createAgent("timeline", nil)
	sess := e.readySession("timeline")
	ctx := t.Context()

	_, got, err := e.srv.o.mark(ctx, sess.ID, failed("broken on purpose"))
	require.NoError(t, err)
	assert.Equal(t, api.SessionFailed, got.Status)
	log, err := e.store.ListLog(ctx, sess.ID, 0)
	require.NoError(t, err)
	require.NotEmpty(t, log)
	last := log[len(log)-1]
	assert.Equal(t, store.LogStatus, last.Kind)
	assert.Equal(t, "failed: broken on purpose", last.Message)

	_, _, err = e.srv.o.mark(ctx, sess.ID, suspended())
	assert.ErrorIs(t, err, errConflict)
	after, err := e.store.ListLog(ctx, sess.ID, 0)
	require.NoError(t, err)
	assert.Equal(t, log, after, "a refused transition leaves the timeline")
}

// TestClassify keeps what clients read for each kind of failure,
// including the next step the API adds, and checks that every error
// known to orchestration has a status of its own (not 500).
func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err    error
		status int
		code   string
		msg    string
	}{
		{busyError("s-1"), http.StatusConflict, api.CodeConflict,
			"a turn is already running on session s-1; wait for it or POST " + api.BasePath + "/sessions/s-1/abort"},
		{acceptsTurn(store.Session{ID: "s-1", Status: api.SessionFailed, FailureReason: "boom"}), http.StatusConflict, api.CodeConflict,
			"session s-1 failed: boom; POST " + api.BasePath + "/sessions/s-1/restart to start it again"},
		{readyErr(store.Session{ID: "s-1", Status: api.SessionFailed, FailureReason: "boom"}, nil), http.StatusConflict, api.CodeConflict,
			"session s-1 failed: boom"},
		{endedError("s-1"), http.StatusConflict, api.CodeConflict, "session s-1 has ended"},
		{fmt.Errorf("update session s-1: %w", endedError("s-1")), http.StatusConflict, api.CodeConflict, "session s-1 has ended"},
		{errShuttingDown, http.StatusServiceUnavailable, api.CodeUnavailable, "lapd is shutting down; retry shortly"},
		{errorf(abortShutdown.kind, "%s", abortShutdown.message), http.StatusServiceUnavailable, api.CodeUnavailable, "lapd is shutting down"},
		{errorf(abortUser.kind, "%s", abortUser.message), http.StatusConflict, api.CodeConflict, "the turn was aborted"},
		{errorf(abortEnded.kind, "%s", abortEnded.message), http.StatusConflict, api.CodeConflict, "the session was deleted"},
		{errorf(abortTimeout.kind, "%s", abortTimeout.message), http.StatusGatewayTimeout, api.CodeTimeout, "the turn ran longer than LAP_TURN_TIMEOUT"},
		{harnessFailure("session s-1: x"), http.StatusBadGateway, api.CodeHarness, "session s-1: x"},
		{notFound("session x not found"), http.StatusNotFound, api.CodeNotFound, "session x not found"},
		{badRequest("bad"), http.StatusBadRequest, api.CodeBadRequest, "bad"},
		{unprocessable("no"), http.StatusUnprocessableEntity, api.CodeUnprocessable, "no"},
		{newAPIError(http.StatusUnauthorized, api.CodeUnauthorized, "who?"), http.StatusUnauthorized, api.CodeUnauthorized, "who?"},
		{newAPIError(http.StatusUnsupportedMediaType, api.CodeUnsupportedMedia, "json"), http.StatusUnsupportedMediaType, api.CodeUnsupportedMedia, "json"},
	}
	for _, tt := range tests {
		status, detail := classify(tt.err)
		assert.Equal(t, tt.status, status, "%v", tt.err)
		assert.Equal(t, api.ErrorDetail{Code: tt.code, Message: tt.msg}, detail)
		assert.True(t, known(tt.err), "%v", tt.err)
	}
	for _, k := range kindStatus {
		err := errorf(k.kind, "x")
		status, _ := classify(err)
		assert.Equal(t, k.status, status, "%v", k.kind)
		assert.True(t, known(err))
	}
	for _, err := range []error{store.ErrNotFound, store.ErrConflict, store.ErrInvalidCursor, store.ErrClosed} {
		status, _ := classify(err)
		assert.NotEqual(t, http.StatusInternalServerError, status, "%v", err)
		assert.True(t, known(err), "%v", err)
	}
	unknown := errors.New("connection reset")
	status, _ := classify(unknown)
	assert.Equal(t, http.StatusInternalServerError, status)
	assert.False(t, known(unknown), "an error lapd cannot name becomes a harness failure in a turn")
}
