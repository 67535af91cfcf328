package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/store"
)

// resolveSession finds the session a path names by id or short id.
func (o *orchestrator) resolveSession(ctx context.Context, ref string) (store.Session, error) {
	sess, err := o.store.ResolveSession(ctx, ref)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return sess, notFound("session %s not found", ref)
	case errors.Is(err, store.ErrConflict):
		return sess, ambiguous(err, ref, "session")
	}
	return sess, err
}

// publishSession sends the session to its /events subscribers, if any.
func (o *orchestrator) publishSession(ctx context.Context, sess store.Session) {
	if !o.bus.has(sess.ID) {
		return
	}
	ev := newEvent(api.EventSession, o.apiSession(ctx, sess, ""))
	ev.last = sess.Status == api.SessionDead
	o.bus.publish(sess.ID, ev)
}

// apiSession renders a session; agentName is looked up when empty. A
// session is a terminal one exactly when it was made with a terminal
// token (openSession, for an agent of a TUI harness), so supports_tui
// needs no read of the agent: listings render a page without one read
// per session.
func (o *orchestrator) apiSession(ctx context.Context, sess store.Session, agentName string) api.Session {
	if agentName == "" {
		if a, err := o.store.GetAgent(ctx, sess.AgentID); err == nil {
			agentName = a.Name
		}
	}
	state := ""
	switch sess.Status {
	case api.SessionReady:
		state = api.SandboxRunning
	case api.SessionIdle:
		state = api.SandboxScaledToZero
	}
	return o.withTTY(sess, api.Session{
		SupportsTUI:      len(sess.TTYToken) > 0,
		SandboxState:     state,
		ID:               sess.ID,
		AgentID:          sess.AgentID,
		AgentName:        agentName,
		Title:            sess.Title,
		Status:           sess.Status,
		Phase:            sess.Phase,
		FailureReason:    sess.FailureReason,
		SandboxID:        sess.SandboxID,
		HarnessSessionID: sess.HarnessSessionID,
		CreatedAt:        sess.CreatedAt,
		LastActiveAt:     sess.LastActiveAt,
		IdleTimeoutMS:    sess.IdleTimeoutMS,
		MaxBudgetUSD:     sess.MaxBudgetUSD,
		Usage:            api.Usage(sess.Usage),
	})
}

// openSession creates a session for agent. A warm sandbox of the agent's
// generation is claimed if there is one, and the session is ready in the
// answer; otherwise the session is "creating" and a sandbox is provisioned
// in the background (failing after SESSION_CREATING_TIMEOUT).
func (o *orchestrator) openSession(ctx context.Context, a store.Agent, req api.CreateSessionRequest) (store.Session, error) {
	if o.draining.Load() {
		return store.Session{}, errShuttingDown
	}
	start := time.Now()
	base := store.Session{
		ID:            store.NewID(),
		AgentID:       a.ID,
		Title:         req.Title,
		Generation:    a.Generation,
		InitialPrompt: req.InitialPrompt,
		IdleTimeoutMS: o.cfg.SessionIdleTimeout.Milliseconds(),
		MaxBudgetUSD:  req.MaxBudgetUSD,
	}
	if isTUI(a) {
		base.TTYToken = o.newTTYToken(base.ID)
	}
	sb, err := o.store.ClaimWarmSandbox(ctx, a.ID, a.Generation, base.ID)
	o.pool.use(a.ID) // refill behind the claim (or after the miss)
	switch {
	case err == nil:
		sess, err := o.startOnWarm(ctx, a, base, sb)
		if err == nil {
			o.metrics.sessionReady.WithLabelValues("warm").Observe(time.Since(start).Seconds())
			o.afterReady(sess)
			return sess, nil
		}
		o.log.Warn("warm sandbox unusable; provisioning a new one", "agent", a.Name, "sandbox", sb.ID, "err", err)
	case !errors.Is(err, store.ErrNotFound):
		return store.Session{}, err
	}

	sess, err := o.createWith(ctx, base, queued())
	if err != nil {
		return store.Session{}, err
	}
	o.goBackground(func(ctx context.Context) {
		if o.provisionSession(ctx, sess.ID, phaseProvisioning) == nil {
			o.metrics.sessionReady.WithLabelValues("cold").Observe(time.Since(start).Seconds())
		}
	})
	return sess, nil
}

// startOnWarm opens a harness session on a claimed warm sandbox and
// stores the session as ready. On failure the sandbox is retired.
func (o *orchestrator) startOnWarm(ctx context.Context, a store.Agent, base store.Session, sb store.Sandbox) (store.Session, error) {
	bsb, err := backendRecord(sb)
	if err == nil {
		var hs protocol.SessionInfo
		switch {
		case isTUI(a):
			// A terminal harness has no sessions: it was ready when
			// provisioned, and its tool is already running.
		case sb.HarnessSessionID != "":
			// Opened when the sandbox was provisioned: only make sure
			// the harness still has it (a read, no write there).
			hs, err = o.harness.getSession(ctx, targetOf(sb, bsb, sb.HarnessSessionID))
		default:
			hs, err = o.harness.createSession(ctx, targetOf(sb, bsb, ""), protocol.CreateSessionRequest{Title: base.Title})
		}
		if err == nil {
			var sess store.Session
			if sess, err = o.createWith(ctx, base, claimedWarm(sb.ID, hs.ID)); err == nil {
				return sess, nil
			}
		}
	}
	o.retireSandbox(sb, err.Error())
	return store.Session{}, err
}

// afterReady starts what waits for a session to become ready: its
// initial prompt.
func (o *orchestrator) afterReady(sess store.Session) {
	if sess.InitialPrompt == "" || chatOnly(sess) != nil {
		return
	}
	o.goBackground(func(ctx context.Context) {
		t, err := o.beginTurn(ctx, sess, []protocol.InputPart{{Type: "text", Text: sess.InitialPrompt}}, "")
		if err != nil {
			o.log.Warn("initial prompt not sent", "session", sess.ID, "err", err)
			return
		}
		if _, err := t.run(ctx); err != nil {
			o.log.Warn("initial prompt failed", "session", sess.ID, "err", err)
		}
	})
}

// provisionSession gives a creating (or restarting) session a new sandbox
// and harness session, with the conversation so far replayed. On failure
// the session becomes failed with the reason, unless lapd is stopping (the
// next start retries it).
func (o *orchestrator) provisionSession(ctx context.Context, id, phase string) error {
	ctx, cancel := context.WithTimeout(ctx, o.cfg.SessionCreatingTimeout)
	defer cancel()
	_, sess, err := o.attachSandbox(ctx, id, phase, 0)
	if err == nil {
		o.afterReady(sess)
		return nil
	}
	if errors.Is(err, errEnded) || o.baseCtx.Err() != nil {
		return err
	}
	reason := err.Error()
	if errors.Is(err, context.DeadlineExceeded) {
		reason = fmt.Sprintf("no sandbox became ready within SESSION_CREATING_TIMEOUT (%s): %v", o.cfg.SessionCreatingTimeout, err)
	}
	o.log.Warn("session failed", "session", id, "reason", reason)
	if _, _, uerr := o.mark(context.WithoutCancel(ctx), id, failed(reason)); uerr != nil && !errors.Is(uerr, errEnded) {
		o.log.Error("record session failure", "session", id, "err", uerr)
	}
	return err
}

// awaitReady waits up to timeout for a creating session sess to be
// ready (or failed, or ended) and returns it then, or as it is when the
// time is up.
func (o *orchestrator) awaitReady(ctx context.Context, sess store.Session, timeout time.Duration) (store.Session, error) {
	if sess.Status != api.SessionCreating {
		return sess, nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	got, err := o.waitReady(wctx, sess.ID)
	cancel()
	switch {
	case err == nil, got.ID != "" && (got.Status == api.SessionFailed || got.Status == api.SessionDead):
		return got, nil
	case errors.Is(err, context.DeadlineExceeded):
		// Still creating: answer with what it is now.
		return o.store.GetSession(ctx, sess.ID)
	}
	return sess, err
}

// restartSession gives session id a new sandbox with its history
// replayed, in the background; the session is creating until then.
func (o *orchestrator) restartSession(ctx context.Context, id string) (store.Session, error) {
	release, err := o.reserve(ctx, id, nil)
	if err != nil {
		return store.Session{}, err
	}
	defer release()
	_, sess, err := o.mark(ctx, id, restarting())
	if err != nil {
		return sess, err
	}
	o.goBackground(func(ctx context.Context) {
		o.provisionSession(ctx, sess.ID, phaseProvisioning)
	})
	return sess, nil
}

// suspendSession scales an idle session's sandbox to zero (status idle);
// its next message resumes it. It refuses (ErrConflict) while a turn runs.
func (o *orchestrator) suspendSession(ctx context.Context, id string) error {
	return o.suspendIfIdleSince(ctx, id, time.Time{})
}

// suspendIfIdleSince is suspendSession for the idle reaper: it does
// nothing if the session was active after idleBefore (checked once the
// session is reserved, so a turn that ran meanwhile counts).
func (o *orchestrator) suspendIfIdleSince(ctx context.Context, id string, idleBefore time.Time) error {
	release, err := o.reserve(ctx, id, nil)
	if err != nil {
		return err
	}
	defer release()
	sess, err := o.store.GetSession(ctx, id)
	if err != nil {
		return err
	}
	if sess.Status != api.SessionReady || (!idleBefore.IsZero() && sess.LastActiveAt.After(idleBefore)) {
		return nil
	}
	sb, err := o.store.GetSandbox(ctx, sess.SandboxID)
	if err != nil {
		return err
	}
	bsb, err := backendRecord(sb)
	if err != nil {
		return err
	}
	bsb, err = o.backend.Suspend(ctx, bsb)
	if err != nil {
		return fmt.Errorf("suspend sandbox of session %s: %w", id, err)
	}
	raw, err := json.Marshal(bsb)
	if err != nil {
		return err
	}
	keep := context.WithoutCancel(ctx)
	if _, err := o.store.UpdateSandbox(keep, sb.ID, func(x *store.Sandbox) error {
		x.State, x.Backend = store.SandboxSuspended, raw
		return nil
	}); err != nil {
		return err
	}
	// A session that changed state meanwhile (ended, or failed) keeps
	// it; its sandbox is asleep either way.
	if _, _, err = o.mark(keep, id, suspended()); errors.Is(err, errEnded) || errors.Is(err, errConflict) {
		return nil
	}
	return err
}

// endSession marks a session dead, aborts its turn and destroys its
// sandbox. Ending a dead session does nothing.
func (o *orchestrator) endSession(ctx context.Context, id string) error {
	_, sess, err := o.mark(ctx, id, ended())
	if errors.Is(err, errEnded) {
		return nil // ended before
	}
	if err != nil {
		return err
	}
	o.abortTurn(id, abortEnded)
	if sess.SandboxID != "" {
		sb, err := o.store.GetSandbox(ctx, sess.SandboxID)
		if err == nil && sb.Live() {
			if err := o.destroySandbox(ctx, sb); err != nil {
				o.log.Warn("destroy sandbox of ended session", "session", id, "sandbox", sb.ID, "err", err)
			}
		}
	}
	o.crashes.forget(id)
	o.log.Info("session ended", "session", id)
	return nil
}
