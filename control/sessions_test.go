package control

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/sandboxes/sandboxestest"
	"lap.dev/lap/store"
)

// gate holds provisioning until released, so a session stays creating.
type gate struct {
	once    sync.Once
	release chan struct{}
	fail    error
}

func newGate() *gate { return &gate{release: make(chan struct{})} }

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

func (g *gate) hook(ctx context.Context, spec sandboxes.Spec) error {
	select {
	case <-g.release:
		return g.fail
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestColdSessionCreate(t *testing.T) {
	t.Parallel()
	g := newGate()
	e := newEnv(t, envOptions{backend: sandboxestest.Options{BeforeProvision: g.hook}})
	defer g.open()
	e.createAgent("cold", nil)

	var sess api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/cold/session", map[string]any{"title": "hello"}, &sess))
	assert.Equal(t, api.SessionCreating, sess.Status, "no warm sandbox: the session is created in the background")
	assert.Equal(t, "cold", sess.AgentName)
	assert.Equal(t, "hello", sess.Title)
	waitfor.Cond(t, "the provisioning phase", func() bool { return e.session(sess.ID).Phase == phaseProvisioning })

	var still api.Session
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"?wait=ready&timeout=20ms", nil, &still))
	assert.Equal(t, api.SessionCreating, still.Status, "a long poll that times out answers with the current state")

	g.open()
	var ready api.Session
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"?wait=ready&timeout=60s", nil, &ready))
	assert.Equal(t, api.SessionReady, ready.Status)
	assert.Equal(t, phaseReady, ready.Phase)
	assert.NotEmpty(t, ready.SandboxID)
	assert.NotEmpty(t, ready.HarnessSessionID)
	assert.EqualValues(t, e.srv.cfg.SessionIdleTimeout.Milliseconds(), ready.IdleTimeoutMS)

	var log api.List[api.LogEntry]
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"/log", nil, &log))
	var phases []string
	for _, l := range log.Data {
		if l.Kind == "phase" {
			phases = append(phases, l.Message)
		}
	}
	assert.Equal(t, []string{phaseQueued, phaseProvisioning, phaseStarting, phaseReady}, phases)

	status, m, body := e.send(sess.ID, "hi")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "echo: hi", m.Text())

	assert.Equal(t, http.StatusBadRequest, e.do(http.MethodGet, "/sessions/"+sess.ID+"?wait=done", nil, nil))
	assert.Equal(t, http.StatusBadRequest, e.do(http.MethodGet, "/sessions/"+sess.ID+"?wait=ready&timeout=forever", nil, nil))
}

func TestWarmClaimIsReadyInTheResponse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	a := e.createAgent("warm", nil)
	agent, err := e.store.GetAgent(t.Context(), a.ID)
	require.NoError(t, err)
	warm, err := e.srv.o.provisionWarm(t.Context(), agent)
	require.NoError(t, err)
	assert.Equal(t, store.SandboxWarm, warm.State)
	provisioned := e.backend.Provisions()

	var sess api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/warm/session", nil, &sess))
	assert.Equal(t, api.SessionReady, sess.Status, "a warm claim answers ready in the same request")
	assert.Equal(t, warm.ID, sess.SandboxID)
	assert.Equal(t, provisioned, e.backend.Provisions(), "nothing was provisioned for it")
	sb, err := e.store.GetSandbox(t.Context(), warm.ID)
	require.NoError(t, err)
	assert.Equal(t, store.SandboxClaimed, sb.State)
	assert.Equal(t, sess.ID, sb.SessionID)

	status, m, _ := e.send(sess.ID, "on a warm sandbox")
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, "echo: on a warm sandbox", m.Text())

	var second api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/warm/session", nil, &second))
	assert.Equal(t, api.SessionCreating, second.Status, "an empty pool falls back to a cold start")
}

func TestWarmSandboxOfOldGenerationIsNotClaimed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	a := e.createAgent("gen", nil)
	agent, err := e.store.GetAgent(t.Context(), a.ID)
	require.NoError(t, err)
	_, err = e.srv.o.provisionWarm(t.Context(), agent)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, e.do(http.MethodPatch, "/agents/gen", map[string]any{"prompt": "new"}, nil))
	var sess api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/gen/session", nil, &sess))
	assert.Equal(t, api.SessionCreating, sess.Status)
}

func TestCreatingTimeoutFailsTheSession(t *testing.T) {
	t.Parallel()
	g := newGate()
	defer g.open()
	e := newEnv(t, envOptions{settings: map[string]string{"SESSION_CREATING_TIMEOUT": "100ms"},
		backend: sandboxestest.Options{BeforeProvision: g.hook}})
	e.createAgent("slow", nil)
	var sess api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/slow/session", nil, &sess))
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"?wait=ready&timeout=60s", nil, &sess))
	assert.Equal(t, api.SessionFailed, sess.Status)
	assert.Contains(t, sess.FailureReason, "SESSION_CREATING_TIMEOUT")

	status, _, body := e.send(sess.ID, "hello?")
	assert.Equal(t, http.StatusConflict, status)
	assert.Contains(t, errorOf(t, body).Message, "restart")
}

func TestRestartFailedSession(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	failNext := true
	e := newEnv(t, envOptions{backend: sandboxestest.Options{BeforeProvision: func(ctx context.Context, spec sandboxes.Spec) error {
		mu.Lock()
		defer mu.Unlock()
		if failNext {
			failNext = false
			return errors.New("git clone: repository not found")
		}
		return nil
	}}})
	e.createAgent("flaky", nil)
	var sess api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/flaky/session", nil, &sess))
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"?wait=ready", nil, &sess))
	require.Equal(t, api.SessionFailed, sess.Status)
	assert.Contains(t, sess.FailureReason, "repository not found")

	var d api.Diagnosis
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"/diagnose", nil, &d))
	assert.Contains(t, strings.Join(d.Hints, "\n"), "restart")

	var restarted api.Session
	require.Equal(t, http.StatusAccepted, e.do(http.MethodPost, "/sessions/"+sess.ID+"/restart", nil, &restarted))
	assert.Equal(t, api.SessionCreating, restarted.Status)
	var ready api.Session
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"?wait=ready", nil, &ready))
	assert.Equal(t, api.SessionReady, ready.Status)
	assert.Empty(t, ready.FailureReason)
	status, m, _ := e.send(sess.ID, "back again")
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, "echo: back again", m.Text())

	require.Equal(t, http.StatusNoContent, e.do(http.MethodDelete, "/sessions/"+sess.ID, nil, nil))
	assert.Equal(t, http.StatusConflict, e.do(http.MethodPost, "/sessions/"+sess.ID+"/restart", nil, nil))
}

func TestMessageRoundTripAndDurableLog(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("chat", nil)
	sess := e.readySession("chat")

	status, m, body := e.send(sess.ID, "Summarise the top-level README in three bullets.")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "assistant", m.Info.Role)
	assert.Equal(t, "echo: Summarise the top-level README in three bullets.", m.Text())
	assert.EqualValues(t, 2, m.Info.Seq)
	assert.Equal(t, store.MessageCompleted, m.Info.Status)
	assert.Equal(t, sess.ID, m.Info.SessionID)
	assert.NotZero(t, m.Info.Time.Completed)
	assert.Positive(t, m.Info.Tokens.Output)

	status, m, _ = e.send(sess.ID, "/tool")
	require.Equal(t, http.StatusOK, status)
	require.Len(t, m.Parts, 2)
	assert.Equal(t, "tool", m.Parts[0].Type)
	assert.Equal(t, "completed", m.Parts[0].State.Status)
	for _, p := range m.Parts {
		assert.Equal(t, sess.ID, p.SessionID, "parts name lap's session, not the harness's")
	}

	status, m, _ = e.send(sess.ID, "/fail")
	require.Equal(t, http.StatusOK, status, "an LLM failure is an answer, with info.error")
	require.NotNil(t, m.Info.Error)
	assert.Equal(t, "APIError", m.Info.Error.Name)
	assert.Equal(t, store.MessageFailed, m.Info.Status)

	log := e.messages(sess.ID)
	require.Len(t, log, 6)
	var got []string
	for _, msg := range log {
		got = append(got, msg.Info.Role+" "+msg.Info.Status)
	}
	assert.Equal(t, []string{"user completed", "assistant completed", "user completed", "assistant completed", "user completed", "assistant failed"}, got)
	for i, msg := range log {
		assert.EqualValues(t, i+1, msg.Info.Seq)
	}
	var page api.List[api.Message]
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"/messages?cursor=2&limit=2", nil, &page))
	require.Len(t, page.Data, 2)
	assert.EqualValues(t, 3, page.Data[0].Info.Seq)
	assert.Equal(t, "4", page.NextCursor)

	tests := []struct {
		name, body string
		status     int
	}{
		{"no text", `{}`, 400},
		{"both", `{"text":"a","parts":[{"type":"text","text":"b"}]}`, 400},
		{"image part", `{"parts":[{"type":"image","text":"b"}]}`, 400},
		{"blank parts", `{"parts":[{"type":"text","text":"  "}]}`, 400},
		{"unknown field", `{"txt":"a"}`, 400},
	}
	for _, tt := range tests {
		status, _ := e.raw(http.MethodPost, api.BasePath+"/sessions/"+sess.ID+"/message", "application/json", []byte(tt.body), true)
		assert.Equal(t, tt.status, status, tt.name)
	}
	status, _, _ = e.send("0190aaaa-0000-7000-8000-000000000000", "hi")
	assert.Equal(t, http.StatusNotFound, status)
}

func TestPendingBeforeHarnessAndAbort(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("abortable", nil)
	sess := e.readySession("abortable")
	events := e.openSSE(http.MethodGet, "/sessions/"+sess.ID+"/events", nil)
	defer events.close()
	first, ok := events.next()
	require.True(t, ok)
	require.Equal(t, api.EventSession, first.name, "the bus starts with the session's state")

	type answer struct {
		status int
		m      api.Message
	}
	done := make(chan answer, 1)
	go func() {
		status, m, _ := e.send(sess.ID, "/block")
		done <- answer{status, m}
	}()
	// The user turn is in the log, pending, before the harness has it;
	// then the harness starts the turn.
	var seen []string
	for {
		ev, ok := events.next()
		require.True(t, ok, "events so far: %v", seen)
		seen = append(seen, ev.name)
		if ev.name == api.EventMessage && len(seen) == 1 {
			var m api.Message
			require.NoError(t, json.Unmarshal(ev.data, &m))
			assert.Equal(t, store.MessagePending, m.Info.Status)
			assert.Equal(t, "user", m.Info.Role)
		}
		if ev.name == api.EventHarness {
			break
		}
	}
	assert.Equal(t, []string{api.EventMessage, api.EventHarness}, seen)
	log := e.messages(sess.ID)
	require.Len(t, log, 1)
	assert.Equal(t, store.MessagePending, log[0].Info.Status)

	status, _, body := e.send(sess.ID, "second")
	assert.Equal(t, http.StatusConflict, status, "one turn at a time: %s", body)
	assert.Len(t, e.messages(sess.ID), 1, "a refused turn logs nothing")

	var aborted map[string]bool
	require.Equal(t, http.StatusOK, e.do(http.MethodPost, "/sessions/"+sess.ID+"/abort", nil, &aborted))
	assert.True(t, aborted["aborted"])
	a := <-done
	require.Equal(t, http.StatusOK, a.status)
	require.NotNil(t, a.m.Info.Error)
	assert.Equal(t, "Aborted", a.m.Info.Error.Name)

	log = e.messages(sess.ID)
	require.Len(t, log, 2)
	assert.Equal(t, store.MessageCompleted, log[0].Info.Status)
	assert.Equal(t, store.MessageFailed, log[1].Info.Status)
	require.Equal(t, http.StatusOK, e.do(http.MethodPost, "/sessions/"+sess.ID+"/abort", nil, &aborted))
	assert.False(t, aborted["aborted"], "nothing left to abort")
}

func TestIdleSessionResumesOnNextMessage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("sleepy", nil)
	sess := e.readySession("sleepy")
	_, _, _ = e.send(sess.ID, "before sleep")

	require.NoError(t, e.srv.o.suspendSession(t.Context(), sess.ID))
	idle := e.session(sess.ID)
	assert.Equal(t, api.SessionIdle, idle.Status)
	assert.Empty(t, e.backend.Running(), "the sandbox is scaled to zero")

	status, m, body := e.send(sess.ID, "/history")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "history: 0 messages; last: ", m.Text(), "the same harness session: nothing replayed")
	after := e.session(sess.ID)
	assert.Equal(t, api.SessionReady, after.Status)
	assert.Equal(t, sess.SandboxID, after.SandboxID, "resumed, not replaced")
	assert.Equal(t, sess.HarnessSessionID, after.HarnessSessionID)
}

func TestCrashedHarnessIsResumed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("crashy", nil)
	sess := e.readySession("crashy")
	require.NoError(t, e.backend.Kill(sess.SandboxID))

	status, m, body := e.send(sess.ID, "are you there?")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "echo: are you there?", m.Text())
	assert.Equal(t, sess.SandboxID, e.session(sess.ID).SandboxID)
}

func TestCrashMidTurnFailsCleanlyAndRecovers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("midturn", nil)
	sess := e.readySession("midturn")

	status, _, body := e.send(sess.ID, "/crash")
	require.Equal(t, http.StatusBadGateway, status, "%s", body)
	assert.Equal(t, api.CodeHarness, errorOf(t, body).Code)
	log := e.messages(sess.ID)
	require.Len(t, log, 1)
	assert.Equal(t, store.MessageFailed, log[0].Info.Status, "a turn cut by a crash is failed, not lost")
	require.NotNil(t, log[0].Info.Error)

	status, m, body := e.send(sess.ID, "again")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "echo: again", m.Text())
}

func TestLostSandboxIsReplacedWithHistory(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("lost", nil)
	sess := e.readySession("lost")
	status, _, _ := e.send(sess.ID, "first")
	require.Equal(t, http.StatusOK, status)
	require.NoError(t, e.srv.o.suspendSession(t.Context(), sess.ID))
	require.NoError(t, e.backend.Forget(sess.SandboxID))

	status, m, body := e.send(sess.ID, "/history")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "history: 2 messages; last: echo: first", m.Text(), "the conversation is replayed into a new sandbox")
	after := e.session(sess.ID)
	assert.NotEqual(t, sess.SandboxID, after.SandboxID)
	old, err := e.store.GetSandbox(t.Context(), sess.SandboxID)
	require.NoError(t, err)
	waitfor.Cond(t, "the old sandbox retired", func() bool {
		old, err = e.store.GetSandbox(t.Context(), sess.SandboxID)
		return err == nil && !old.Live()
	})
}

func TestSessionsListAndDelete(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	a := e.createAgent("lister", nil)
	e.createAgent("other", nil)
	s1 := e.readySession("lister")
	s2 := e.readySession("other")

	tests := []struct {
		query string
		want  []string
	}{
		{"", []string{s2.ID, s1.ID}},
		{"?agent_id=lister", []string{s1.ID}},
		{"?agent_id=" + a.ID, []string{s1.ID}},
		{"?status=ready", []string{s2.ID, s1.ID}},
		{"?status=idle", nil},
		{"?limit=1", []string{s2.ID}},
	}
	for _, tt := range tests {
		var list api.List[api.Session]
		require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions"+tt.query, nil, &list), tt.query)
		var ids []string
		for _, s := range list.Data {
			ids = append(ids, s.ID)
		}
		assert.Equal(t, tt.want, ids, tt.query)
	}
	assert.Equal(t, http.StatusBadRequest, e.do(http.MethodGet, "/sessions?status=sleepy", nil, nil))
	assert.Equal(t, http.StatusNotFound, e.do(http.MethodGet, "/sessions?agent_id=nobody", nil, nil))

	require.Equal(t, http.StatusNoContent, e.do(http.MethodDelete, "/sessions/"+s1.ID, nil, nil))
	require.Equal(t, http.StatusNoContent, e.do(http.MethodDelete, "/sessions/"+s1.ID, nil, nil), "DELETE is idempotent")
	assert.Equal(t, api.SessionDead, e.session(s1.ID).Status)
	assert.Equal(t, []string{s2.SandboxID}, e.backend.Running())
	status, _, _ := e.send(s1.ID, "hello?")
	assert.Equal(t, http.StatusConflict, status)
}

func TestInitialPrompt(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("eager", nil)
	var sess api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/eager/session", map[string]any{"initial_prompt": "start here"}, &sess))
	waitfor.Cond(t, "the initial prompt answered", func() bool {
		log := e.messages(sess.ID)
		return len(log) == 2 && log[1].Info.Status == store.MessageCompleted
	})
	assert.Equal(t, "echo: start here", e.messages(sess.ID)[1].Text())
}

func TestDiagnoseAndPassThrough(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("diag", nil)
	sess := e.readySession("diag")
	var d api.Diagnosis
	require.Equal(t, http.StatusOK, e.do(http.MethodGet, "/sessions/"+sess.ID+"/diagnose", nil, &d))
	assert.Equal(t, sess.ID, d.Session.ID)
	assert.Equal(t, "diag", d.Agent.Name)
	assert.Equal(t, true, d.Harness["reachable"])
	assert.Equal(t, store.SandboxClaimed, d.Sandbox["state"])
	assert.Contains(t, d.LogTail, "harness listening")
	assert.NotEmpty(t, d.Timeline)

	status, body := e.raw(http.MethodGet, api.BasePath+"/sessions/"+sess.ID+"/opencode/session", "", nil, true)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Contains(t, string(body), sess.HarnessSessionID)
	status, _ = e.raw(http.MethodGet, api.BasePath+"/sessions/"+sess.ID+"/opencode/session", "", nil, false)
	assert.Equal(t, http.StatusUnauthorized, status)

	ev := e.openSSE(http.MethodGet, "/sessions/"+sess.ID+"/opencode/event", nil)
	defer ev.close()
	first, ok := ev.next()
	require.True(t, ok)
	assert.Contains(t, string(first.data), "server.connected", "the harness's event stream is relayed as it streams")
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("measured", nil)
	sess := e.readySession("measured")
	e.send(sess.ID, "count me")
	status, body := e.raw(http.MethodGet, "/metrics", "", nil, true)
	require.Equal(t, http.StatusOK, status)
	for _, want := range []string{
		`lap_sessions{status="ready"} 1`,
		`lap_turns_total{outcome="completed"} 1`,
		`lap_http_request_duration_seconds_count{code="201",method="POST",route="/api/v1/managed_agents/agents"} 1`,
		"lap_turn_duration_seconds_count 1",
		"go_goroutines",
	} {
		assert.Contains(t, string(body), want)
	}
}

// A turn sent through the pass-through is lapd's turn: a second one is
// refused with 409 while it runs (and not logged), and the pass-through's
// abort ends it.
func TestHarnessBusyThroughPassThroughIs409(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("shared", nil)
	sess := e.readySession("shared")
	base := api.BasePath + "/sessions/" + sess.ID + "/opencode/session/" + sess.HarnessSessionID
	status, body := e.raw(http.MethodPost, base+"/prompt_async", "application/json", []byte(`{"parts":[{"type":"text","text":"/block"}]}`), true)
	require.Equal(t, http.StatusNoContent, status, "%s", body)

	status, _, body = e.send(sess.ID, "me too")
	assert.Equal(t, http.StatusConflict, status, "%s", body)
	assert.Contains(t, errorOf(t, body).Message, "already running")
	log := e.messages(sess.ID)
	require.Len(t, log, 1)
	assert.Equal(t, "/block", log[0].Text())

	status, body = e.raw(http.MethodPost, base+"/abort", "", nil, true)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.JSONEq(t, "true", string(body), "lapd's turn was aborted")
	waitfor.Cond(t, "the aborted turn to end", func() bool {
		return e.messages(sess.ID)[0].Info.Status != store.MessagePending
	})
	waitfor.Cond(t, "the session to be free", func() bool {
		status, _, _ := e.send(sess.ID, "now")
		return status == http.StatusOK
	})
}

// A short id resolves on the server, with or without dashes; one that
// names several sessions is a 409 that lists them.
func TestShortSessionIDs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	a := e.createAgent("shorty", nil)
	ids := []string{"0badcafe-1111-4000-8000-000000000001", "0badcafe-2222-4000-8000-000000000002"}
	for _, id := range ids {
		_, err := e.store.CreateSession(context.Background(), store.Session{ID: id, AgentID: a.ID, Status: api.SessionIdle})
		require.NoError(t, err)
	}
	for ref, want := range map[string]string{"0badcafe1": ids[0], "0BADCAFE-2222": ids[1], ids[1]: ids[1]} {
		assert.Equal(t, want, e.session(ref).ID, ref)
	}
	status, body := e.raw(http.MethodGet, api.BasePath+"/sessions/0badcafe", "", nil, true)
	assert.Equal(t, http.StatusConflict, status)
	assert.Equal(t, api.ErrorDetail{Code: api.CodeConflict, Message: "0badcafe is the start of 2 session ids: " +
		ids[0] + ", " + ids[1] + "; give more of the id"}, errorOf(t, body))
	status, _ = e.raw(http.MethodGet, api.BasePath+"/sessions/0badcaf", "", nil, true)
	assert.Equal(t, http.StatusNotFound, status, "fewer than 8 digits name nothing")
}

// A harness that outlived lapd and still runs the turn lapd's restart
// recorded as failed has that turn aborted; the next message is answered.
func TestInterruptedTurnStillRunningInTheHarnessIsAborted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	backend := sandboxestest.New(sandboxestest.Options{})
	t.Cleanup(backend.Close)
	dir := t.TempDir()
	first := startEnv(t, dir, envOptions{sandboxes: backend, noCleanup: true})
	first.createAgent("orphan", nil)
	sess := first.readySession("orphan")
	sb, err := first.store.GetSandbox(ctx, sess.SandboxID)
	require.NoError(t, err)
	bsb, err := backendRecord(sb)
	require.NoError(t, err)
	tgt := targetOf(sb, bsb, sess.HarnessSessionID)

	// What a SIGKILL mid-turn leaves: the user message pending in the log
	// and its turn running on in the harness (until aborted).
	_, err = first.store.AppendMessage(ctx, store.Message{SessionID: sess.ID, Role: "user", Status: store.MessagePending,
		Data: json.RawMessage(`{"info":{"role":"user"},"parts":[{"type":"text","text":"/block"}]}`)})
	require.NoError(t, err)
	events, err := first.srv.o.harness.openEvents(ctx, tgt)
	require.NoError(t, err)
	defer events.close()
	orphan := make(chan protocol.Message, 1)
	go func() {
		m, err := newHarnessClient().sendMessage(ctx, tgt, protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "/block"}}})
		assert.NoError(t, err)
		orphan <- m
	}()
	for {
		ev, err := events.next()
		require.NoError(t, err)
		if ev.Type == protocol.EventMessageUpdated && ev.Properties.SessionID == tgt.sessionID {
			break // the turn runs
		}
	}
	first.stop()

	second := startEnv(t, dir, envOptions{sandboxes: backend})
	status, m, body := second.send(sess.ID, "hello")
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "echo: hello", m.Text())
	select {
	case m := <-orphan:
		require.NotNil(t, m.Info.Error)
		assert.Equal(t, "Aborted", m.Info.Error.Name, "the interrupted turn was aborted")
	case <-time.After(time.Minute):
		t.Fatal("the interrupted turn did not end")
	}
	var got []string
	for _, m := range second.messages(sess.ID) {
		got = append(got, m.Info.Role+" "+m.Info.Status)
	}
	assert.Equal(t, []string{"user failed", "user completed", "assistant completed"}, got)
}
