package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/store"
)

// history returns the session's completed conversation, user and
// assistant text, for replay into a new harness session. beforeSeq > 0
// leaves out messages from that seq on (the turn being sent).
func (o *orchestrator) history(ctx context.Context, id string, beforeSeq int64) ([]protocol.Message, error) {
	msgs, err := o.store.ListMessages(ctx, id, 0, 0)
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
func (o *orchestrator) ensureRunning(ctx context.Context, sess store.Session, force bool, beforeSeq int64) (target, store.Session, error) {
	if sess.SandboxID == "" {
		return o.attachSandbox(ctx, sess.ID, phaseRecovering, beforeSeq)
	}
	sb, err := o.store.GetSandbox(ctx, sess.SandboxID)
	if err != nil {
		return target{}, sess, err
	}
	bsb, err := backendRecord(sb)
	if err != nil || !sb.Live() {
		return o.attachSandbox(ctx, sess.ID, phaseRecovering, beforeSeq)
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
		if err := o.noteCrash(ctx, sess, bsb); err != nil {
			return target{}, sess, err
		}
	}
	if err := o.markPhase(ctx, sess.ID, phase); err != nil {
		return target{}, sess, err
	}
	bsb, err = o.backend.Resume(ctx, bsb)
	if errors.Is(err, sandboxes.ErrGone) || errors.Is(err, sandboxes.ErrNotFound) {
		o.log.Info("sandbox gone; provisioning a new one", "session", sess.ID, "sandbox", sb.ID, "err", err)
		return o.attachSandbox(ctx, sess.ID, phaseRecovering, beforeSeq)
	}
	if err != nil {
		o.markPhase(context.WithoutCancel(ctx), sess.ID, "resume failed: "+err.Error())
		return target{}, sess, fmt.Errorf("resume sandbox of session %s: %w", sess.ID, err)
	}
	raw, err := json.Marshal(bsb)
	if err != nil {
		return target{}, sess, err
	}
	keep := context.WithoutCancel(ctx)
	if sb, err = o.store.UpdateSandbox(keep, sb.ID, func(x *store.Sandbox) error {
		x.State, x.Backend = store.SandboxClaimed, raw
		return nil
	}); err != nil {
		return target{}, sess, err
	}
	if _, sess, err = o.mark(keep, sess.ID, resumed()); err != nil {
		return target{}, sess, err
	}
	return targetOf(sb, bsb, sess.HarnessSessionID), sess, nil
}

// attachSandbox is how a session gets a new sandbox, whether it is being
// created (or restarted) or lost its sandbox (gone, or unusable): it
// marks the session at phase, provisions a sandbox of the session's
// agent, opens a harness session on it with the conversation before
// beforeSeq replayed (0: all of it), and marks the session attached to
// it (ready). The sandbox it replaces, if still live, is retired; on
// failure the new one is.
func (o *orchestrator) attachSandbox(ctx context.Context, id, phase string, beforeSeq int64) (target, store.Session, error) {
	if err := o.markPhase(ctx, id, phase); err != nil {
		return target{}, store.Session{}, err
	}
	sess, err := o.store.GetSession(ctx, id)
	if err != nil {
		return target{}, sess, err
	}
	a, err := o.store.GetAgent(ctx, sess.AgentID)
	if err != nil {
		return target{}, sess, err
	}
	sb, bsb, err := o.provisionSandbox(ctx, a, sandboxes.RoleSession, id)
	if err != nil {
		return target{}, sess, err
	}
	tgt, sess, err := o.openOn(ctx, sess, a, sb, bsb, beforeSeq)
	if err != nil {
		o.retireSandbox(sb, err.Error())
	}
	return tgt, sess, err
}

// openOn opens the session's harness session, with its history, on the
// new sandbox sb and marks the session attached to it.
func (o *orchestrator) openOn(ctx context.Context, sess store.Session, a store.Agent, sb store.Sandbox, bsb sandboxes.Sandbox, beforeSeq int64) (target, store.Session, error) {
	if err := o.markPhase(ctx, sess.ID, phaseStarting); err != nil {
		return target{}, sess, err
	}
	var hs protocol.SessionInfo
	if !isTUI(a) { // a terminal harness has no sessions: it is ready
		history, err := o.history(ctx, sess.ID, beforeSeq)
		if err != nil {
			return target{}, sess, err
		}
		if hs, err = o.harness.createSession(ctx, targetOf(sb, bsb, ""), protocol.CreateSessionRequest{Title: sess.Title, History: history}); err != nil {
			return target{}, sess, err
		}
	}
	// The backend acted: record it even if ctx ended meanwhile.
	prev, sess, err := o.mark(context.WithoutCancel(ctx), sess.ID, attached(sb.ID, hs.ID, a.Generation))
	if err != nil {
		return target{}, sess, err
	}
	if prev.SandboxID != "" && prev.SandboxID != sb.ID {
		if old, err := o.store.GetSandbox(ctx, prev.SandboxID); err == nil && old.Live() {
			o.retireSandbox(old, "replaced by sandbox "+sb.ID)
		}
	}
	return targetOf(sb, bsb, hs.ID), sess, nil
}
