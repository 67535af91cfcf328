package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/store"
)

// abortGrace is how long an aborted turn's harness gets to answer (with
// info.error "Aborted") before lapd cuts the call.
const abortGrace = 10 * time.Second

// abortReason says why a turn was interrupted; it becomes the message's
// error.
type abortReason struct {
	name, message string
	kind          error // the kind of failure the sender of the turn gets
}

var (
	abortUser       = abortReason{"Aborted", "the turn was aborted", errAborted}
	abortClientGone = abortReason{"Aborted", "the client disconnected from the stream", errAborted}
	abortShutdown   = abortReason{"Aborted", "lapd is shutting down", errUnavailable}
	abortEnded      = abortReason{"Aborted", "the session was deleted", errEnded}
	abortTimeout    = abortReason{"Timeout", "the turn ran longer than LAP_TURN_TIMEOUT", errTimeout}
)

// turn is one user message on its way through a session's harness. Its
// user message is in the log (pending) from beginTurn on; run always ends
// it as completed or failed.
type turn struct {
	o         *orchestrator
	sessionID string
	user      store.Message
	parts     []protocol.InputPart
	model     string
	started   time.Time
	// sink, when set, receives the turn's events (message_stream).
	sink func(sseEvent)

	abortOnce sync.Once
	aborted   chan struct{}
	reason    abortReason // set before aborted is closed
	release   func()
}

// abort interrupts the turn; the first reason wins.
func (t *turn) abort(r abortReason) {
	t.abortOnce.Do(func() {
		t.reason = r
		close(t.aborted)
	})
}

func (t *turn) wasAborted() bool {
	select {
	case <-t.aborted:
		return true
	default:
		return false
	}
}

// beginTurn logs the user message as pending (durably, before any harness
// sees it) and reserves the session for the turn. The caller must call
// run on the returned turn.
func (o *orchestrator) beginTurn(ctx context.Context, sess store.Session, parts []protocol.InputPart, model string) (*turn, error) {
	if err := acceptsTurn(sess); err != nil {
		return nil, err
	}
	if err := chatOnly(sess); err != nil {
		return nil, err
	}
	t := &turn{o: o, sessionID: sess.ID, parts: parts, model: model, started: time.Now(), aborted: make(chan struct{})}
	release, err := o.reserve(ctx, sess.ID, t)
	if err != nil {
		return nil, err
	}
	t.release = release
	now := time.Now()
	doc := protocol.Message{
		Info: protocol.MessageInfo{ID: store.NewID(), SessionID: sess.ID, Role: protocol.RoleUser,
			Time: protocol.MessageTime{Created: now.UnixMilli()}},
		Parts: make([]protocol.Part, 0, len(parts)),
	}
	for _, p := range parts {
		doc.Parts = append(doc.Parts, protocol.Part{Type: protocol.PartText, Text: p.Text})
	}
	data, err := json.Marshal(doc)
	if err != nil {
		release()
		return nil, err
	}
	t.user, err = o.store.AppendMessage(ctx, store.Message{SessionID: sess.ID, ID: doc.Info.ID,
		Role: protocol.RoleUser, Status: store.MessagePending, Data: data})
	if err != nil {
		release()
		return nil, err
	}
	o.publishMessage(t.user)
	return t, nil
}

// publishMessage tells the session's subscribers about a logged message.
func (o *orchestrator) publishMessage(m store.Message) {
	if o.bus.has(m.SessionID) {
		o.bus.publish(m.SessionID, newEvent(api.EventMessage, renderMessage(m)))
	}
}

// run takes the turn to its end: it waits for a creating session, brings
// the sandbox up if needed, calls the harness and logs the outcome. It
// returns the assistant message as logged. A turn whose harness answered
// with an LLM error or an abort is not an error (the message says so);
// a timeout, an unreachable harness or lapd stopping is.
func (t *turn) run(ctx context.Context) (api.Message, error) {
	o := t.o
	defer t.release()
	timer := time.AfterFunc(o.cfg.TurnTimeout, func() { t.abort(abortTimeout) })
	defer timer.Stop()

	// Before the harness has the message, an abort simply cancels.
	prep, cancelPrep := context.WithCancel(ctx)
	defer cancelPrep()
	go func() {
		select {
		case <-t.aborted:
			cancelPrep()
		case <-prep.Done():
		}
	}()
	sess, err := o.waitReady(prep, t.sessionID)
	if err != nil {
		return t.fail(ctx, err)
	}
	tgt, sess, err := o.ensureRunning(prep, sess, false, t.user.Seq)
	if err != nil {
		return t.fail(ctx, err)
	}
	if t.sink != nil {
		t.sink(newEvent(api.EventReady, o.apiSession(ctx, sess, "")))
	}
	msg, err := t.call(ctx, prep, tgt, sess)
	if err != nil {
		return t.fail(ctx, err)
	}
	return t.finish(ctx, msg)
}

// call sends the message to the harness. If the harness was not running
// (the connection was refused, so it never saw the message) it is brought
// back and the message sent once more; if the harness lost its session, a
// new one is opened with the history and the message sent once more; if
// the harness is still busy with a turn that a crash of lapd interrupted,
// that turn is aborted and the message sent again once the harness is
// free. (A harness busy with a turn an API client started through the
// pass-through is left alone: the sender gets a 409.)
func (t *turn) call(ctx, prep context.Context, tgt target, sess store.Session) (protocol.Message, error) {
	o := t.o
	for attempt := 0; ; attempt++ {
		var w *watcher
		if t.sink != nil || o.bus.has(t.sessionID) {
			w = o.watchTurn(ctx, tgt, t.emit)
		}
		msg, err := t.send(ctx, tgt)
		if w != nil {
			w.finish(err == nil)
		}
		if err == nil || t.wasAborted() {
			return msg, err
		}
		switch {
		case attempt == 0 && notSent(err):
			o.log.Info("harness not answering; resuming", "session", t.sessionID, "err", err)
			tgt, sess, err = o.ensureRunning(prep, sess, true, t.user.Seq)
		case attempt == 0 && isStatus(err, http.StatusNotFound):
			o.log.Info("harness lost the session; opening a new one with the history", "session", t.sessionID)
			tgt, err = o.reopenHarnessSession(prep, sess, tgt, t.user.Seq)
		case isStatus(err, http.StatusConflict) && attempt < len(busyBackoff) && o.wasInterrupted(t.sessionID):
			// The harness outlived lapd and still runs the turn the log
			// recorded as failed at start-up. abortInterrupted asked it
			// to stop; ask again in case that failed, and send once the
			// harness is free. The harness refused the message, so
			// sending it again cannot run it twice.
			if attempt == 0 {
				o.log.Info("harness still busy with a turn lapd's restart interrupted; aborting it", "session", t.sessionID)
			}
			err = o.abortOrphan(prep, tgt, busyBackoff[attempt])
		default:
			return protocol.Message{}, err
		}
		if err != nil {
			return protocol.Message{}, err
		}
	}
}

// busyBackoff is how long call waits after each abort of a turn it finds
// running in the harness: about 10 s in all, then the turn fails (409).
var busyBackoff = []time.Duration{
	20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond,
	400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second, time.Second,
	time.Second, time.Second, time.Second, time.Second, time.Second,
}

// abortOrphan asks the harness to abort the turn it runs for tgt's
// session and waits wait (or until ctx ends).
func (o *orchestrator) abortOrphan(ctx context.Context, tgt target, wait time.Duration) error {
	actx, cancel := context.WithTimeout(ctx, abortGrace)
	err := o.harness.abort(actx, tgt)
	cancel()
	if err != nil {
		o.log.Warn("abort a turn lapd does not run", "session", tgt.sessionID, "err", err)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// send makes the blocking harness call. An abort asks the harness to stop
// (it then answers with info.error "Aborted"); if it does not within
// abortGrace, or lapd's context ends, the call is cut.
func (t *turn) send(ctx context.Context, tgt target) (protocol.Message, error) {
	req := protocol.SendMessageRequest{MessageID: t.user.ID, Parts: t.parts, Model: modelRef(t.model)}
	call, cut := context.WithCancel(context.WithoutCancel(ctx))
	defer cut()
	type result struct {
		m   protocol.Message
		err error
	}
	res := make(chan result, 1)
	go func() {
		m, err := t.o.harness.sendMessage(call, tgt, req)
		res <- result{m, err}
	}()
	aborted := t.aborted
	var grace, again <-chan time.Time
	done := ctx.Done()
	abort := func() {
		go func() {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortGrace)
			defer cancel()
			if err := t.o.harness.abort(actx, tgt); err != nil {
				t.o.log.Warn("abort harness turn", "session", t.sessionID, "err", err)
			}
		}()
		// The abort may reach the harness before the message does;
		// repeat it until the turn ends.
		again = time.After(250 * time.Millisecond)
	}
	for {
		select {
		case r := <-res:
			return r.m, r.err
		case <-aborted:
			aborted = nil
			grace = time.After(abortGrace)
			abort()
		case <-again:
			abort()
		case <-grace:
			cut()
		case <-done:
			done = nil
			cut()
		}
	}
}

// reopenHarnessSession opens a new harness session on the same sandbox
// with the conversation replayed (the harness lost the old one).
func (o *orchestrator) reopenHarnessSession(ctx context.Context, sess store.Session, tgt target, beforeSeq int64) (target, error) {
	history, err := o.history(ctx, sess.ID, beforeSeq)
	if err != nil {
		return tgt, err
	}
	hs, err := o.harness.createSession(ctx, tgt, protocol.CreateSessionRequest{Title: sess.Title, History: history})
	if err != nil {
		return tgt, err
	}
	if _, _, err := o.mark(ctx, sess.ID, harnessReopened(hs.ID)); err != nil {
		return tgt, err
	}
	tgt.sessionID = hs.ID
	return tgt, nil
}

// emit forwards one of the turn's harness events to the session's
// subscribers and to the turn's stream.
func (t *turn) emit(ev protocol.Event) {
	e := newEvent(api.EventHarness, ev)
	t.o.bus.publish(t.sessionID, e)
	if t.sink != nil {
		t.sink(e)
	}
}

// finish logs the harness's answer: the user message completed and the
// assistant message appended, in one transaction.
func (t *turn) finish(ctx context.Context, msg protocol.Message) (api.Message, error) {
	o := t.o
	msg.Info.SessionID = t.sessionID
	msg.Info.Role = protocol.RoleAssistant
	if msg.Parts == nil {
		msg.Parts = []protocol.Part{}
	}
	// Parts name the harness's session; the log speaks of lap'o.
	for i := range msg.Parts {
		msg.Parts[i].SessionID = t.sessionID
	}
	status, outcome := store.MessageCompleted, outcomeCompleted
	if e := msg.Info.Error; e != nil {
		status, outcome = store.MessageFailed, outcomeLLMError
		if e.Name == "Aborted" {
			outcome = outcomeAborted
			if t.wasAborted() && t.reason == abortTimeout {
				outcome = outcomeTimeout
				e.Name, e.Message = abortTimeout.name, fmt.Sprintf("%s (%s)", abortTimeout.message, o.cfg.TurnTimeout)
			}
		}
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return t.fail(ctx, err)
	}
	user, asst, err := o.store.FinishTurn(context.WithoutCancel(ctx), store.TurnResult{
		SessionID: t.sessionID, UserSeq: t.user.Seq, UserStatus: store.MessageCompleted,
		Assistant: &store.Message{ID: msg.Info.ID, Role: protocol.RoleAssistant, Status: status, Data: data},
	})
	if err != nil {
		o.metrics.turns.WithLabelValues(outcomeFailed).Inc()
		return api.Message{}, err
	}
	o.metrics.turns.WithLabelValues(outcome).Inc()
	o.metrics.turnDuration.Observe(time.Since(t.started).Seconds())
	o.mu.Lock()
	delete(o.interrupted, t.sessionID) // its harness answered: no orphan left
	o.mu.Unlock()
	o.publishMessage(user)
	o.publishMessage(asst)
	out := renderMessage(asst)
	if outcome == outcomeTimeout {
		return out, errorf(errTimeout, "%s (%s)", abortTimeout.message, o.cfg.TurnTimeout)
	}
	return out, nil
}

// fail logs the turn as failed (the user message gets the error) and
// returns the error the sender gets.
func (t *turn) fail(ctx context.Context, cause error) (api.Message, error) {
	o := t.o
	e := store.MessageError{Name: "HarnessError", Message: cause.Error()}
	outcome := outcomeFailed
	var out error
	switch {
	case t.wasAborted():
		e = store.MessageError{Name: t.reason.name, Message: t.reason.message}
		outcome = outcomeAborted
		if t.reason == abortTimeout {
			outcome = outcomeTimeout
		}
		out = errorf(t.reason.kind, "%s", t.reason.message)
	case isStatus(cause, http.StatusConflict):
		out = conflict("the harness of session %s is busy with another turn", t.sessionID)
	default:
		out = cause
		// What lapd cannot name went wrong on the way to or in the
		// harness (connection lost, bad answer, backend failure).
		if !known(cause) {
			out = harnessFailure("session %s: %v", t.sessionID, cause)
		}
	}
	if errors.Is(cause, errEnded) {
		out = endedError(t.sessionID)
	}
	user, _, err := o.store.FinishTurn(context.WithoutCancel(ctx), store.TurnResult{
		SessionID: t.sessionID, UserSeq: t.user.Seq, UserStatus: store.MessageFailed, UserError: &e,
	})
	if err != nil {
		o.log.Error("record failed turn", "session", t.sessionID, "seq", t.user.Seq, "err", err)
	} else {
		o.publishMessage(user)
	}
	o.metrics.turns.WithLabelValues(outcome).Inc()
	o.log.Warn("turn failed", "session", t.sessionID, "seq", t.user.Seq, "err", cause)
	return api.Message{}, out
}

// waitReady returns the session once it is no longer creating.
func (o *orchestrator) waitReady(ctx context.Context, id string) (store.Session, error) {
	if sess, err := o.store.GetSession(ctx, id); err != nil || sess.Status != api.SessionCreating {
		return sess, readyErr(sess, err)
	}
	sub := o.bus.subscribe(id)
	defer func() { o.bus.unsubscribe(id, sub) }()
	for {
		sess, err := o.store.GetSession(ctx, id)
		if err != nil {
			return sess, err
		}
		if sess.Status != api.SessionCreating {
			return sess, readyErr(sess, nil)
		}
		select {
		case _, ok := <-sub.ch:
			if !ok {
				if o.draining.Load() {
					return sess, unavailable("lapd is shutting down")
				}
				sub = o.bus.subscribe(id) // dropped as slow: listen again
			}
		case <-ctx.Done():
			return sess, ctx.Err()
		}
	}
}

// modelRef turns "provider/model" into the harness's model reference.
func modelRef(model string) *protocol.ModelRef {
	if model == "" {
		return nil
	}
	provider, id, ok := strings.Cut(model, "/")
	if !ok {
		return &protocol.ModelRef{ModelID: model}
	}
	return &protocol.ModelRef{ProviderID: provider, ModelID: id}
}

// renderMessage turns a logged message into the API's {info, parts}, with
// the log's seq and status.
func renderMessage(m store.Message) api.Message {
	var out protocol.Message
	if err := json.Unmarshal(m.Data, &out); err != nil {
		out.Info = protocol.MessageInfo{ID: m.ID, Role: m.Role,
			Error: &protocol.MessageError{Name: "Corrupt", Message: "stored message unreadable: " + err.Error()}}
	}
	if out.Parts == nil {
		out.Parts = []protocol.Part{}
	}
	out.Info.SessionID = m.SessionID
	out.Info.Seq, out.Info.Status = m.Seq, m.Status
	if m.Error != nil && out.Info.Error == nil {
		out.Info.Error = &protocol.MessageError{Name: m.Error.Name, Message: m.Error.Message}
	}
	return out
}

// watcher relays one turn's harness events while the turn runs.
type watcher struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// watchTurn subscribes to the harness's events for tgt's session and
// passes them to emit until session.idle. It returns nil (the turn goes on
// without live events) if the harness does not confirm in time.
func (o *orchestrator) watchTurn(ctx context.Context, tgt target, emit func(protocol.Event)) *watcher {
	wctx, cancel := context.WithCancel(ctx)
	timeout := time.AfterFunc(5*time.Second, cancel)
	es, err := o.harness.openEvents(wctx, tgt)
	if !timeout.Stop() || err != nil {
		cancel()
		if err == nil {
			es.close()
		}
		o.log.Warn("no live events for this turn", "sandbox", tgt.sandboxID, "err", err)
		return nil
	}
	w := &watcher{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer es.close()
		for {
			ev, err := es.next()
			if err != nil {
				return
			}
			if ev.Properties.SessionID != tgt.sessionID {
				continue
			}
			emit(ev)
			if ev.Type == protocol.EventSessionIdle {
				return
			}
		}
	}()
	return w
}

// finish stops the watcher. With wait, it first lets the harness's last
// events (which may trail its answer) arrive, for a bounded time.
func (w *watcher) finish(wait bool) {
	if wait {
		select {
		case <-w.done:
		case <-time.After(2 * time.Second):
		}
	}
	w.cancel()
	<-w.done
}
