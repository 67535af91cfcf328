package control

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/store"
)

func TestMessageStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("streamer", nil)
	sess := e.readySession("streamer")

	st := e.openSSE(http.MethodPost, "/sessions/"+sess.ID+"/message_stream", api.SendMessageRequest{Text: "stream me"})
	defer st.close()
	var names, harness []string
	var text string
	var done api.Message
	for {
		ev, ok := st.next()
		if !ok {
			break
		}
		names = append(names, ev.name)
		switch ev.name {
		case api.EventReady:
			var s api.Session
			require.NoError(t, json.Unmarshal(ev.data, &s))
			assert.Equal(t, api.SessionReady, s.Status)
		case api.EventHarness:
			he, err := api.DecodeHarnessEvent(ev.data)
			require.NoError(t, err)
			harness = append(harness, he.Type)
			text += he.Properties.Delta
		case api.EventDone:
			require.NoError(t, json.Unmarshal(ev.data, &done))
		}
	}
	assert.Equal(t, api.EventReady, names[0])
	assert.Equal(t, api.EventDone, names[len(names)-1])
	assert.Equal(t, []string{"message.updated", "message.part.updated", "message.part.updated", "message.updated", "session.idle"}, harness,
		"every harness event of the turn arrives before done")
	assert.Equal(t, "echo: stream me", text)
	assert.Equal(t, "echo: stream me", done.Text())
	assert.EqualValues(t, 2, done.Info.Seq)
	assert.Equal(t, store.MessageCompleted, done.Info.Status)

	st2 := e.openSSE(http.MethodPost, "/sessions/"+sess.ID+"/message_stream", api.SendMessageRequest{Text: "/fail"})
	defer st2.close()
	var last sseMsg
	for ev, ok := st2.next(); ok; ev, ok = st2.next() {
		last = ev
	}
	require.Equal(t, api.EventDone, last.name, "an LLM error ends the turn normally")
	require.NoError(t, json.Unmarshal(last.data, &done))
	assert.Equal(t, "APIError", done.Info.Error.Name)

	// Errors known before the stream starts are plain JSON.
	status, body := e.raw(http.MethodPost, api.BasePath+"/sessions/nope-nope/message_stream", "application/json", []byte(`{"text":"x"}`), true)
	assert.Equal(t, http.StatusNotFound, status)
	assert.Equal(t, api.CodeNotFound, errorOf(t, body).Code)
}

func TestStreamClientDisconnectAbortsTurn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("leaver", nil)
	sess := e.readySession("leaver")

	st := e.openSSE(http.MethodPost, "/sessions/"+sess.ID+"/message_stream", api.SendMessageRequest{Text: "/block"})
	for {
		ev, ok := st.next()
		require.True(t, ok)
		if ev.name == api.EventHarness {
			break // the harness runs the turn
		}
	}
	st.close()

	waitfor.Cond(t, "the turn to end after the client left", func() bool {
		log := e.messages(sess.ID)
		return len(log) == 2
	})
	log := e.messages(sess.ID)
	assert.Equal(t, store.MessageCompleted, log[0].Info.Status)
	assert.Equal(t, store.MessageFailed, log[1].Info.Status)
	assert.Equal(t, "Aborted", log[1].Info.Error.Name)
	status, m, _ := e.send(sess.ID, "still here")
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, "echo: still here", m.Text())
}

func TestSessionEventsStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.createAgent("watched", nil)
	sess := e.readySession("watched")
	ev := e.openSSE(http.MethodGet, "/sessions/"+sess.ID+"/events", nil)
	defer ev.close()
	first, ok := ev.next()
	require.True(t, ok)
	assert.Equal(t, api.EventSession, first.name)

	status, _, _ := e.send(sess.ID, "hello")
	require.Equal(t, http.StatusOK, status)
	var names []string
	for len(names) < 8 {
		m, ok := ev.next()
		require.True(t, ok)
		names = append(names, m.name)
	}
	assert.Equal(t, []string{api.EventMessage, api.EventHarness, api.EventHarness, api.EventHarness, api.EventHarness, api.EventHarness, api.EventMessage, api.EventMessage}, names)

	require.Equal(t, http.StatusNoContent, e.do(http.MethodDelete, "/sessions/"+sess.ID, nil, nil))
	var lastSession api.Session
	for m, ok := ev.next(); ok; m, ok = ev.next() {
		if m.name == api.EventSession {
			require.NoError(t, json.Unmarshal(m.data, &lastSession))
		}
	}
	assert.Equal(t, api.SessionDead, lastSession.Status, "the stream ends with the session")
}

func TestShutdownLetsTurnsFinish(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noCleanup: true})
	e.createAgent("graceful", nil)
	sess := e.readySession("graceful")
	events := e.openSSE(http.MethodGet, "/sessions/"+sess.ID+"/events", nil)
	_, ok := events.next()
	require.True(t, ok)

	type answer struct {
		status int
		m      api.Message
	}
	done := make(chan answer, 1)
	go func() {
		status, m, _ := e.send(sess.ID, "/slow 300ms")
		done <- answer{status, m}
	}()
	waitfor.Cond(t, "the turn to start", func() bool {
		e.srv.o.mu.Lock()
		defer e.srv.o.mu.Unlock()
		return e.srv.o.active[sess.ID] != nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, e.srv.Shutdown(ctx))
	a := <-done
	require.Equal(t, http.StatusOK, a.status, "a running turn finishes during a graceful shutdown")
	assert.Equal(t, "echo: /slow 300ms", a.m.Text())
	for _, ok := events.next(); ok; _, ok = events.next() {
	}
	events.close()
	_, err := http.Get(e.url + "/healthz")
	require.Error(t, err, "the listener is closed")
	require.NoError(t, e.store.Close())
	e.backend.Close()
}

func TestShutdownAbortsTurnsPastTheBound(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noCleanup: true})
	e.createAgent("stubborn", nil)
	sess := e.readySession("stubborn")
	go e.send(sess.ID, "/block")
	waitfor.Cond(t, "the harness to run the turn", func() bool {
		log := e.messages(sess.ID)
		e.srv.o.mu.Lock()
		defer e.srv.o.mu.Unlock()
		return len(log) == 1 && e.srv.o.active[sess.ID] != nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	require.NoError(t, e.srv.Shutdown(ctx))
	require.NoError(t, e.store.Close())
	e.backend.Close()

	st, err := store.Open(filepath.Join(e.dir, store.FileName), store.Options{})
	require.NoError(t, err)
	defer st.Close()
	msgs, err := st.ListMessages(context.Background(), sess.ID, 0, 0)
	require.NoError(t, err)
	for _, m := range msgs {
		assert.NotEqual(t, store.MessagePending, m.Status, "no turn is left open by a shutdown (seq %d)", m.Seq)
	}
}
