package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"lap.dev/lap/control/api"
	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/store"
)

// Session phases: free text the CLI shows while a session is not ready.
const (
	phaseQueued       = "queued"
	phaseClaimedWarm  = "claimed warm sandbox"
	phaseProvisioning = "provisioning sandbox"
	phaseStarting     = "starting harness"
	phaseResuming     = "resuming"
	phaseRecovering   = "recovering"
	phaseRestarting   = "restarting"
	phaseReady        = "ready"
	phaseSuspended    = "suspended"
)

// errSessionEnded stops work for a session that was deleted meanwhile.
var errSessionEnded = errors.New("session ended")

// updateSession writes a session change and tells its event subscribers.
func (s *Server) updateSession(ctx context.Context, id string, fn func(*store.Session) error) (store.Session, error) {
	sess, err := s.store.UpdateSession(ctx, id, fn)
	if err != nil {
		return sess, err
	}
	s.publishSession(ctx, sess)
	return sess, nil
}

// publishSession sends the session to its /events subscribers, if any.
func (s *Server) publishSession(ctx context.Context, sess store.Session) {
	if !s.bus.has(sess.ID) {
		return
	}
	ev := newEvent(api.EventSession, s.apiSession(ctx, sess, ""))
	ev.last = sess.Status == api.SessionDead
	s.bus.publish(sess.ID, ev)
}

func (s *Server) setPhase(ctx context.Context, id, phase string) error {
	_, err := s.updateSession(ctx, id, func(sess *store.Session) error {
		if sess.Status == api.SessionDead {
			return errSessionEnded
		}
		sess.Phase = phase
		return nil
	})
	return err
}

// apiSession renders a session; agentName is looked up when empty.
func (s *Server) apiSession(ctx context.Context, sess store.Session, agentName string) api.Session {
	if agentName == "" {
		if a, err := s.store.GetAgent(ctx, sess.AgentID); err == nil {
			agentName = a.Name
		}
	}
	return api.Session{
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
	}
}

// openSession creates a session for agent. A warm sandbox of the agent's
// generation is claimed if there is one, and the session is ready in the
// answer; otherwise the session is "creating" and a sandbox is provisioned
// in the background (failing after SESSION_CREATING_TIMEOUT).
func (s *Server) openSession(ctx context.Context, a store.Agent, req api.CreateSessionRequest) (store.Session, error) {
	start := time.Now()
	base := store.Session{
		ID:            store.NewID(),
		AgentID:       a.ID,
		Title:         req.Title,
		Generation:    a.Generation,
		InitialPrompt: req.InitialPrompt,
		IdleTimeoutMS: s.cfg.SessionIdleTimeout.Milliseconds(),
		MaxBudgetUSD:  req.MaxBudgetUSD,
	}
	sb, err := s.store.ClaimWarmSandbox(ctx, a.ID, a.Generation, base.ID)
	s.pool.use(a.ID) // refill behind the claim (or after the miss)
	switch {
	case err == nil:
		sess, err := s.startOnWarm(ctx, a, base, sb)
		if err == nil {
			s.metrics.sessionReady.WithLabelValues("warm").Observe(time.Since(start).Seconds())
			s.afterReady(sess)
			return sess, nil
		}
		s.log.Warn("warm sandbox unusable; provisioning a new one", "agent", a.Name, "sandbox", sb.ID, "err", err)
	case !errors.Is(err, store.ErrNotFound):
		return store.Session{}, err
	}

	base.Status, base.Phase = api.SessionCreating, phaseQueued
	sess, err := s.store.CreateSession(ctx, base)
	if err != nil {
		return store.Session{}, err
	}
	s.goBackground(func(ctx context.Context) {
		if s.provisionSession(ctx, sess.ID, phaseProvisioning) == nil {
			s.metrics.sessionReady.WithLabelValues("cold").Observe(time.Since(start).Seconds())
		}
	})
	return sess, nil
}

// startOnWarm opens a harness session on a claimed warm sandbox and
// stores the session as ready. On failure the sandbox is retired.
func (s *Server) startOnWarm(ctx context.Context, a store.Agent, base store.Session, sb store.Sandbox) (store.Session, error) {
	bsb, err := backendRecord(sb)
	if err == nil {
		var hs protocol.SessionInfo
		if sb.HarnessSessionID != "" {
			// Opened when the sandbox was provisioned: only make sure
			// the harness still has it (a read, no write there).
			hs, err = s.harness.getSession(ctx, targetOf(sb, bsb, sb.HarnessSessionID))
		} else {
			hs, err = s.harness.createSession(ctx, targetOf(sb, bsb, ""), protocol.CreateSessionRequest{Title: base.Title})
		}
		if err == nil {
			base.Status, base.Phase = api.SessionReady, phaseReady
			base.SandboxID, base.HarnessSessionID = sb.ID, hs.ID
			var sess store.Session
			if sess, err = s.store.CreateSession(ctx, base); err == nil {
				return sess, nil
			}
		}
	}
	s.retireSandbox(sb, err.Error())
	return store.Session{}, err
}

// afterReady starts what waits for a session to become ready: its
// initial prompt.
func (s *Server) afterReady(sess store.Session) {
	if sess.InitialPrompt == "" {
		return
	}
	s.goBackground(func(ctx context.Context) {
		t, err := s.beginTurn(ctx, sess, []protocol.InputPart{{Type: "text", Text: sess.InitialPrompt}}, "")
		if err != nil {
			s.log.Warn("initial prompt not sent", "session", sess.ID, "err", err)
			return
		}
		if _, err := t.run(ctx); err != nil {
			s.log.Warn("initial prompt failed", "session", sess.ID, "err", err)
		}
	})
}

// provisionSession gives a creating (or restarting) session a new sandbox
// and harness session, with the conversation so far replayed. On failure
// the session becomes failed with the reason, unless lapd is stopping (the
// next start retries it).
func (s *Server) provisionSession(ctx context.Context, id, phase string) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.SessionCreatingTimeout)
	defer cancel()
	sess, err := s.provisionInto(ctx, id, phase)
	if err == nil {
		s.afterReady(sess)
		return nil
	}
	if errors.Is(err, errSessionEnded) || s.baseCtx.Err() != nil {
		return err
	}
	reason := err.Error()
	if errors.Is(err, context.DeadlineExceeded) {
		reason = fmt.Sprintf("no sandbox became ready within SESSION_CREATING_TIMEOUT (%s): %v", s.cfg.SessionCreatingTimeout, err)
	}
	s.log.Warn("session failed", "session", id, "reason", reason)
	if _, uerr := s.updateSession(context.WithoutCancel(ctx), id, func(sess *store.Session) error {
		if sess.Status == api.SessionDead {
			return errSessionEnded
		}
		sess.Status, sess.Phase, sess.FailureReason = api.SessionFailed, "", reason
		return nil
	}); uerr != nil && !errors.Is(uerr, errSessionEnded) {
		s.log.Error("record session failure", "session", id, "err", uerr)
	}
	return err
}

// provisionInto provisions a sandbox for session id, opens a harness
// session with the session's history on it and makes it the session's
// sandbox (status ready). The previous sandbox, if any, is retired.
func (s *Server) provisionInto(ctx context.Context, id, phase string) (store.Session, error) {
	if err := s.setPhase(ctx, id, phase); err != nil {
		return store.Session{}, err
	}
	sess, err := s.store.GetSession(ctx, id)
	if err != nil {
		return store.Session{}, err
	}
	a, err := s.store.GetAgent(ctx, sess.AgentID)
	if err != nil {
		return store.Session{}, err
	}
	sb, bsb, err := s.provisionSandbox(ctx, a, sandboxes.RoleSession, id)
	if err != nil {
		return store.Session{}, err
	}
	fail := func(err error) (store.Session, error) {
		s.retireSandbox(sb, err.Error())
		return store.Session{}, err
	}
	if err := s.setPhase(ctx, id, phaseStarting); err != nil {
		return fail(err)
	}
	history, err := s.history(ctx, id, 0)
	if err != nil {
		return fail(err)
	}
	hs, err := s.harness.createSession(ctx, targetOf(sb, bsb, ""), protocol.CreateSessionRequest{Title: sess.Title, History: history})
	if err != nil {
		return fail(err)
	}
	old := ""
	sess, err = s.updateSession(ctx, id, func(cur *store.Session) error {
		if cur.Status == api.SessionDead {
			return errSessionEnded
		}
		old = cur.SandboxID
		cur.Status, cur.Phase, cur.FailureReason = api.SessionReady, phaseReady, ""
		cur.SandboxID, cur.HarnessSessionID, cur.Generation = sb.ID, hs.ID, a.Generation
		return nil
	})
	if err != nil {
		return fail(err)
	}
	if old != "" && old != sb.ID {
		if prev, err := s.store.GetSandbox(ctx, old); err == nil && prev.Live() {
			s.retireSandbox(prev, "replaced by sandbox "+sb.ID)
		}
	}
	return sess, nil
}

// provisionSandbox records and provisions a sandbox of agent a for
// sessionID ("" for a warm one). The record exists before the backend
// starts anything, so a crash mid-way leaves a trace Start cleans up.
func (s *Server) provisionSandbox(ctx context.Context, a store.Agent, role, sessionID string) (store.Sandbox, sandboxes.Sandbox, error) {
	token := make([]byte, 24)
	rand.Read(token)
	sb, err := s.store.PutSandbox(ctx, store.Sandbox{
		ID:           store.NewID(),
		AgentID:      a.ID,
		Generation:   a.Generation,
		Role:         role,
		State:        store.SandboxProvisioning,
		SessionID:    sessionID,
		HarnessToken: hex.EncodeToString(token),
	})
	if err != nil {
		return sb, sandboxes.Sandbox{}, err
	}
	// Bookkeeping after the backend acted must happen even if ctx ended.
	keep := context.WithoutCancel(ctx)
	agent, err := s.agentSpec(a)
	if err != nil {
		s.markSandbox(keep, sb.ID, store.SandboxFailed, err.Error())
		return sb, sandboxes.Sandbox{}, err
	}
	bsb, err := s.backend.Provision(ctx, sandboxes.Spec{
		ID:    sb.ID,
		Role:  role,
		Agent: agent,
		Env: map[string]string{
			"HARNESS_AUTH_TOKEN": sb.HarnessToken,
			"LITELLM_API_KEY":    s.tokens.Mint(sandboxtoken.Claims{SandboxID: sb.ID, AgentID: a.ID}),
		},
	})
	if err != nil {
		s.markSandbox(keep, sb.ID, store.SandboxFailed, err.Error())
		return sb, sandboxes.Sandbox{}, fmt.Errorf("provision sandbox for agent %s: %w", a.Name, err)
	}
	state, harnessSession := store.SandboxClaimed, ""
	if sessionID == "" {
		// A warm sandbox enters the pool with the harness session its
		// claimer will use already open, so a warm claim costs no
		// harness write.
		state = store.SandboxWarm
		var hs protocol.SessionInfo
		if hs, err = s.harness.createSession(ctx, targetOf(sb, bsb, ""), protocol.CreateSessionRequest{}); err != nil {
			s.markSandbox(keep, sb.ID, store.SandboxFailed, err.Error())
			if derr := s.backend.Destroy(keep, bsb); derr != nil {
				s.log.Error("destroy sandbox whose harness opens no session", "sandbox", sb.ID, "err", derr)
			}
			return sb, sandboxes.Sandbox{}, fmt.Errorf("provision sandbox for agent %s: %w", a.Name, err)
		}
		harnessSession = hs.ID
	}
	raw, err := json.Marshal(bsb)
	if err == nil {
		sb, err = s.store.UpdateSandbox(keep, sb.ID, func(x *store.Sandbox) error {
			x.State, x.Backend, x.HarnessSessionID = state, raw, harnessSession
			return nil
		})
	}
	if err != nil {
		if derr := s.backend.Destroy(keep, bsb); derr != nil {
			s.log.Error("destroy unrecorded sandbox", "sandbox", sb.ID, "err", derr)
		}
		return sb, sandboxes.Sandbox{}, err
	}
	s.log.Info("sandbox provisioned", "sandbox", sb.ID, "agent", a.Name, "role", role, "session", sessionID)
	return sb, bsb, nil
}

// provisionWarm adds one warm sandbox to agent a's pool. It is the seam
// for the warm-pool manager (which decides when and how many).
func (s *Server) provisionWarm(ctx context.Context, a store.Agent) (store.Sandbox, error) {
	sb, _, err := s.provisionSandbox(ctx, a, sandboxes.RoleWarm, "")
	return sb, err
}

func (s *Server) markSandbox(ctx context.Context, id, state, reason string) {
	if _, err := s.store.UpdateSandbox(ctx, id, func(x *store.Sandbox) error {
		x.State, x.Error = state, reason
		return nil
	}); err != nil {
		s.log.Error("record sandbox state", "sandbox", id, "state", state, "err", err)
	}
}

// retireSandbox destroys a sandbox in the background and records it.
func (s *Server) retireSandbox(sb store.Sandbox, reason string) {
	s.goBackground(func(ctx context.Context) {
		if err := s.destroySandbox(ctx, sb); err != nil {
			s.log.Warn("retire sandbox", "sandbox", sb.ID, "reason", reason, "err", err)
		}
	})
}

// destroySandbox destroys a sandbox on the backend and marks it destroyed,
// which also revokes its gateway token.
func (s *Server) destroySandbox(ctx context.Context, sb store.Sandbox) error {
	// Revoke first: the token must die even if the backend is slow.
	s.markSandbox(context.WithoutCancel(ctx), sb.ID, store.SandboxDestroyed, "")
	if len(sb.Backend) == 0 {
		// Never provisioned (or the record was lost): the backend may
		// still hold it by id.
		return s.backend.Destroy(ctx, sandboxes.Sandbox{ID: sb.ID, AgentID: sb.AgentID, Generation: sb.Generation})
	}
	bsb, err := backendRecord(sb)
	if err != nil {
		return err
	}
	return s.backend.Destroy(ctx, bsb)
}

func backendRecord(sb store.Sandbox) (sandboxes.Sandbox, error) {
	var bsb sandboxes.Sandbox
	if len(sb.Backend) == 0 {
		return bsb, fmt.Errorf("sandbox %s has no backend record", sb.ID)
	}
	if err := json.Unmarshal(sb.Backend, &bsb); err != nil {
		return bsb, fmt.Errorf("sandbox %s: decode backend record: %w", sb.ID, err)
	}
	return bsb, nil
}

func targetOf(sb store.Sandbox, bsb sandboxes.Sandbox, harnessSession string) target {
	return target{sandboxID: sb.ID, endpoint: bsb.Endpoint, token: sb.HarnessToken, sessionID: harnessSession}
}

// history returns the session's completed conversation, user and
// assistant text, for replay into a new harness session. beforeSeq > 0
// leaves out messages from that seq on (the turn being sent).
func (s *Server) history(ctx context.Context, id string, beforeSeq int64) ([]protocol.Message, error) {
	msgs, err := s.store.ListMessages(ctx, id, 0, 0)
	if err != nil {
		return nil, err
	}
	var out []protocol.Message
	for _, m := range msgs {
		if beforeSeq > 0 && m.Seq >= beforeSeq {
			break
		}
		if m.Status != store.MessageCompleted {
			continue
		}
		var pm protocol.Message
		if err := json.Unmarshal(m.Data, &pm); err != nil {
			return nil, fmt.Errorf("decode message %d: %w", m.Seq, err)
		}
		if pm.Info.Error != nil || pm.Text() == "" {
			continue
		}
		out = append(out, pm)
	}
	return out, nil
}

// ensureRunning returns where the session's harness runs, bringing it
// back first if its sandbox is suspended or was found dead: Resume on the
// same sandbox, or, when the backend says it is gone, a new sandbox with
// the history replayed. force skips the fast path (the caller saw the
// harness fail to answer).
func (s *Server) ensureRunning(ctx context.Context, sess store.Session, force bool, beforeSeq int64) (target, store.Session, error) {
	if sess.SandboxID == "" {
		return s.recoverSession(ctx, sess, beforeSeq)
	}
	sb, err := s.store.GetSandbox(ctx, sess.SandboxID)
	if err != nil {
		return target{}, sess, err
	}
	bsb, err := backendRecord(sb)
	if err != nil || !sb.Live() {
		return s.recoverSession(ctx, sess, beforeSeq)
	}
	if !force && sess.Status == api.SessionReady && bsb.Running && sb.State == store.SandboxClaimed {
		return targetOf(sb, bsb, sess.HarnessSessionID), sess, nil
	}
	// A claimed sandbox was meant to be running: its harness crashed (or
	// hangs, or was found dead after a lapd restart). A suspended one is
	// simply asleep.
	phase := phaseResuming
	if sb.State == store.SandboxClaimed {
		phase = phaseRecovering
		if err := s.noteCrash(ctx, sess, bsb); err != nil {
			return target{}, sess, err
		}
	}
	if err := s.setPhase(ctx, sess.ID, phase); err != nil {
		return target{}, sess, err
	}
	bsb, err = s.backend.Resume(ctx, bsb)
	if errors.Is(err, sandboxes.ErrGone) || errors.Is(err, sandboxes.ErrNotFound) {
		s.log.Info("sandbox gone; provisioning a new one", "session", sess.ID, "sandbox", sb.ID, "err", err)
		return s.recoverSession(ctx, sess, beforeSeq)
	}
	if err != nil {
		s.setPhase(context.WithoutCancel(ctx), sess.ID, "resume failed: "+err.Error())
		return target{}, sess, fmt.Errorf("resume sandbox of session %s: %w", sess.ID, err)
	}
	raw, err := json.Marshal(bsb)
	if err != nil {
		return target{}, sess, err
	}
	keep := context.WithoutCancel(ctx)
	if sb, err = s.store.UpdateSandbox(keep, sb.ID, func(x *store.Sandbox) error {
		x.State, x.Backend = store.SandboxClaimed, raw
		return nil
	}); err != nil {
		return target{}, sess, err
	}
	sess, err = s.updateSession(keep, sess.ID, func(cur *store.Session) error {
		if cur.Status == api.SessionDead {
			return errSessionEnded
		}
		cur.Status, cur.Phase = api.SessionReady, phaseReady
		return nil
	})
	if err != nil {
		return target{}, sess, err
	}
	return targetOf(sb, bsb, sess.HarnessSessionID), sess, nil
}

// recoverSession replaces a session's lost sandbox: a new one, with the
// conversation before beforeSeq replayed into a new harness session.
func (s *Server) recoverSession(ctx context.Context, sess store.Session, beforeSeq int64) (target, store.Session, error) {
	if err := s.setPhase(ctx, sess.ID, phaseRecovering); err != nil {
		return target{}, sess, err
	}
	a, err := s.store.GetAgent(ctx, sess.AgentID)
	if err != nil {
		return target{}, sess, err
	}
	sb, bsb, err := s.provisionSandbox(ctx, a, sandboxes.RoleSession, sess.ID)
	if err != nil {
		return target{}, sess, err
	}
	history, err := s.history(ctx, sess.ID, beforeSeq)
	if err == nil {
		var hs protocol.SessionInfo
		hs, err = s.harness.createSession(ctx, targetOf(sb, bsb, ""), protocol.CreateSessionRequest{Title: sess.Title, History: history})
		if err == nil {
			old := sess.SandboxID
			sess, err = s.updateSession(context.WithoutCancel(ctx), sess.ID, func(cur *store.Session) error {
				if cur.Status == api.SessionDead {
					return errSessionEnded
				}
				cur.Status, cur.Phase, cur.FailureReason = api.SessionReady, phaseReady, ""
				cur.SandboxID, cur.HarnessSessionID, cur.Generation = sb.ID, hs.ID, a.Generation
				return nil
			})
			if err == nil {
				if prev, perr := s.store.GetSandbox(ctx, old); perr == nil && prev.Live() {
					s.retireSandbox(prev, "replaced by sandbox "+sb.ID)
				}
				return targetOf(sb, bsb, hs.ID), sess, nil
			}
		}
	}
	s.retireSandbox(sb, err.Error())
	return target{}, sess, err
}

// suspendSession scales an idle session's sandbox to zero (status idle);
// its next message resumes it. It refuses (ErrConflict) while a turn runs.
func (s *Server) suspendSession(ctx context.Context, id string) error {
	return s.suspendIfIdleSince(ctx, id, time.Time{})
}

// suspendIfIdleSince is suspendSession for the idle reaper: it does
// nothing if the session was active after idleBefore (checked once the
// session is reserved, so a turn that ran meanwhile counts).
func (s *Server) suspendIfIdleSince(ctx context.Context, id string, idleBefore time.Time) error {
	release, err := s.reserve(id, nil)
	if err != nil {
		return err
	}
	defer release()
	sess, err := s.store.GetSession(ctx, id)
	if err != nil {
		return err
	}
	if sess.Status != api.SessionReady || (!idleBefore.IsZero() && sess.LastActiveAt.After(idleBefore)) {
		return nil
	}
	sb, err := s.store.GetSandbox(ctx, sess.SandboxID)
	if err != nil {
		return err
	}
	bsb, err := backendRecord(sb)
	if err != nil {
		return err
	}
	bsb, err = s.backend.Suspend(ctx, bsb)
	if err != nil {
		return fmt.Errorf("suspend sandbox of session %s: %w", id, err)
	}
	raw, err := json.Marshal(bsb)
	if err != nil {
		return err
	}
	keep := context.WithoutCancel(ctx)
	if _, err := s.store.UpdateSandbox(keep, sb.ID, func(x *store.Sandbox) error {
		x.State, x.Backend = store.SandboxSuspended, raw
		return nil
	}); err != nil {
		return err
	}
	_, err = s.updateSession(keep, id, func(cur *store.Session) error {
		if cur.Status == api.SessionReady {
			cur.Status, cur.Phase = api.SessionIdle, phaseSuspended
		}
		return nil
	})
	return err
}

// endSession marks a session dead, aborts its turn and destroys its
// sandbox. Ending a dead session does nothing.
func (s *Server) endSession(ctx context.Context, id string) error {
	var wasDead bool
	sess, err := s.updateSession(ctx, id, func(cur *store.Session) error {
		wasDead = cur.Status == api.SessionDead
		cur.Status, cur.Phase = api.SessionDead, ""
		return nil
	})
	if err != nil || wasDead {
		return err
	}
	s.mu.Lock()
	t := s.active[id]
	s.mu.Unlock()
	if t != nil {
		t.abort(abortEnded)
	}
	if sess.SandboxID != "" {
		sb, err := s.store.GetSandbox(ctx, sess.SandboxID)
		if err == nil && sb.Live() {
			if err := s.destroySandbox(ctx, sb); err != nil {
				s.log.Warn("destroy sandbox of ended session", "session", id, "sandbox", sb.ID, "err", err)
			}
		}
	}
	s.crashes.forget(id)
	s.log.Info("session ended", "session", id)
	return nil
}
