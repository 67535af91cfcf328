package control

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/sandboxestest"
	"lap.dev/lap/store"
)

// warmOf returns the agent's warm sandboxes.
func (e *env) warmOf(agentID string) []store.Sandbox {
	e.t.Helper()
	warm, err := e.store.ListSandboxes(context.Background(), store.SandboxFilter{AgentID: agentID, States: []string{store.SandboxWarm}})
	require.NoError(e.t, err)
	return warm
}

func (e *env) waitWarm(agentID string, n int) []store.Sandbox {
	e.t.Helper()
	var warm []store.Sandbox
	waitFor(e.t, "the warm pool", func() bool {
		warm = e.warmOf(agentID)
		return len(warm) == n
	})
	return warm
}

func TestWarmPoolIsFilledForANewAgentAndRefilledAfterAClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{settings: map[string]string{"WARM_POOL_SIZE": "1"}})
	a := e.createAgent("pooled", nil)
	first := e.waitWarm(a.ID, 1)

	var sess api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/pooled/session", nil, &sess))
	assert.Equal(t, api.SessionReady, sess.Status, "ready in the create response")
	assert.Equal(t, first[0].ID, sess.SandboxID)
	require.NotEmpty(t, first[0].HarnessSessionID, "the pool opened the harness session ahead")
	assert.Equal(t, first[0].HarnessSessionID, sess.HarnessSessionID, "the claim took the session opened ahead")
	status, m, body := e.send(sess.ID, "hello")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "echo: hello", m.Text())

	again := e.waitWarm(a.ID, 1)
	assert.NotEqual(t, first[0].ID, again[0].ID, "the pool was refilled with a new sandbox")
	var next api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/pooled/session", nil, &next))
	assert.Equal(t, api.SessionReady, next.Status)
	assert.Equal(t, again[0].ID, next.SandboxID)
}

func TestWarmPoolSizeFollowsTheAgent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{settings: map[string]string{"WARM_POOL_SIZE": "1"}})
	a := e.createAgent("sized", map[string]any{"warm_pool_size": 3})
	e.waitWarm(a.ID, 3)
	require.Equal(t, http.StatusOK, e.do(http.MethodPatch, "/agents/sized", map[string]any{"warm_pool_size": 1}, nil))
	e.waitWarm(a.ID, 1)
	require.Equal(t, http.StatusOK, e.do(http.MethodPatch, "/agents/sized", map[string]any{"warm_pool_size": 0}, nil))
	e.waitWarm(a.ID, 0)
	waitFor(t, "the drained sandboxes destroyed", func() bool { return len(e.backend.Running()) == 0 })
}

func TestWarmPoolReplacesAnOldGeneration(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{settings: map[string]string{"WARM_POOL_SIZE": "1"}})
	a := e.createAgent("regen", nil)
	old := e.waitWarm(a.ID, 1)[0]
	require.Equal(t, http.StatusOK, e.do(http.MethodPatch, "/agents/regen", map[string]any{"prompt": "a new prompt"}, nil))
	var fresh store.Sandbox
	waitFor(t, "a warm sandbox of generation 2", func() bool {
		warm := e.warmOf(a.ID)
		if len(warm) == 1 && warm[0].Generation == 2 {
			fresh = warm[0]
			return true
		}
		return false
	})
	assert.NotEqual(t, old.ID, fresh.ID)
	waitFor(t, "the old generation's sandbox destroyed", func() bool {
		sb, err := e.store.GetSandbox(context.Background(), old.ID)
		return err == nil && sb.State == store.SandboxDestroyed
	})
	var sess api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/regen/session", nil, &sess))
	assert.Equal(t, api.SessionReady, sess.Status)
	assert.Equal(t, fresh.ID, sess.SandboxID)
}

func TestWarmPoolOfADeletedAgentIsDestroyed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{settings: map[string]string{"WARM_POOL_SIZE": "2"}})
	a := e.createAgent("gone", nil)
	e.waitWarm(a.ID, 2)
	require.Equal(t, http.StatusNoContent, e.do(http.MethodDelete, "/agents/gone", nil, nil))
	waitFor(t, "every sandbox destroyed", func() bool { return len(e.backend.Running()) == 0 })
	assert.Empty(t, e.warmOf(a.ID))
}

// Refills run with bounded concurrency, and an empty pool falls back to a
// cold start.
func TestWarmPoolProvisionsAFewAtATime(t *testing.T) {
	t.Parallel()
	var inFlight, most atomic.Int32
	g := newGate()
	defer g.open()
	hook := func(ctx context.Context, spec sandboxes.Spec) error {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		if spec.Role == sandboxes.RoleSession {
			return nil // cold starts are not held
		}
		return g.hook(ctx, spec)
	}
	e := newEnv(t, envOptions{settings: map[string]string{"WARM_POOL_SIZE": "1"}, backend: sandboxestest.Options{BeforeProvision: hook}})
	a := e.createAgent("busy", map[string]any{"warm_pool_size": 8})
	waitFor(t, "provisions to queue up", func() bool { return inFlight.Load() == warmConcurrency })

	var sess api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/busy/session", nil, &sess))
	assert.Equal(t, api.SessionCreating, sess.Status, "nothing warm yet: a cold start")
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"?wait=ready&timeout=60s", nil, &sess))
	assert.Equal(t, api.SessionReady, sess.Status)

	g.open()
	e.waitWarm(a.ID, 8)
	assert.LessOrEqual(t, most.Load(), int32(warmConcurrency+1), "at most warmConcurrency warm provisions (plus the cold start) at once")
}

func TestNoWarmPoolWithALocalSandboxURL(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{settings: map[string]string{"WARM_POOL_SIZE": "2", "LOCAL_SANDBOX_URL": "http://127.0.0.1:4096"}})
	a := e.createAgent("shared", map[string]any{"warm_pool_size": 2})
	// A reconcile ran for the new agent once the pool manager saw it.
	e.srv.o.pool.reconcile(context.Background())
	assert.Empty(t, e.warmOf(a.ID))
	assert.Zero(t, e.backend.Provisions())
}

// A provision failure backs off instead of retrying in a loop.
func TestWarmPoolBacksOffAfterFailures(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	var once sync.Once
	failed := make(chan struct{})
	hook := func(ctx context.Context, spec sandboxes.Spec) error {
		calls.Add(1)
		once.Do(func() { close(failed) })
		return assert.AnError
	}
	e := newEnv(t, envOptions{settings: map[string]string{"WARM_POOL_SIZE": "1"}, backend: sandboxestest.Options{BeforeProvision: hook}})
	e.createAgent("broken", nil)
	<-failed
	for range 5 {
		e.srv.o.pool.reconcile(context.Background())
	}
	assert.Equal(t, int32(1), calls.Load(), "no retry before the backoff ends")
}

// A failed warm provision holds back only its own generation: an agent
// updated while it failed, or after, gets a warm sandbox of the new
// generation at once (its failure, say a repo that could not be cloned,
// may be what the update fixed) — not at the pool's next tick, which these
// tests never reach.
func TestWarmPoolProvisionsANewGenerationAtOnceAfterAFailure(t *testing.T) {
	t.Parallel()
	for _, updatedDuring := range []bool{true, false} {
		t.Run(map[bool]string{true: "updated during the failing provision", false: "updated after it"}[updatedDuring], func(t *testing.T) {
			t.Parallel()
			entered, updated, failed := make(chan struct{}), make(chan struct{}), make(chan struct{})
			var once, failOnce sync.Once
			hook := func(ctx context.Context, spec sandboxes.Spec) error {
				if spec.Agent.Generation > 1 {
					return nil
				}
				once.Do(func() { close(entered) })
				if updatedDuring {
					<-updated
				}
				failOnce.Do(func() { close(failed) })
				return assert.AnError
			}
			e := newEnv(t, envOptions{settings: map[string]string{"WARM_POOL_SIZE": "1"}, backend: sandboxestest.Options{BeforeProvision: hook}, warmTick: time.Hour})
			a := e.createAgent("fixed", nil)
			<-entered
			if !updatedDuring {
				<-failed
				waitFor(t, "the failed provision to end", func() bool {
					e.srv.o.pool.mu.Lock()
					defer e.srv.o.pool.mu.Unlock()
					return e.srv.o.pool.running[a.ID] == 0
				})
			}
			require.Equal(t, http.StatusOK, e.do(http.MethodPatch, "/agents/fixed", map[string]any{"prompt": "fixed"}, nil))
			if updatedDuring {
				close(updated)
			}
			warm := e.waitWarm(a.ID, 1)
			assert.Equal(t, int64(2), warm[0].Generation)
		})
	}
}

// After a failure the pool retries when the backoff ends, not at its next
// tick.
func TestWarmPoolRetriesWhenTheBackoffEnds(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	hook := func(ctx context.Context, spec sandboxes.Spec) error {
		if calls.Add(1) == 1 {
			return assert.AnError
		}
		return nil
	}
	e := newEnv(t, envOptions{settings: map[string]string{"WARM_POOL_SIZE": "1"}, backend: sandboxestest.Options{BeforeProvision: hook}, warmTick: time.Hour})
	a := e.createAgent("flaky", nil)
	e.waitWarm(a.ID, 1)
	assert.Equal(t, int32(2), calls.Load())
}
