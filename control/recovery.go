package control

import (
	"context"
	"errors"

	"golang.org/x/sync/errgroup"

	"lap.dev/lap/control/api"
	"lap.dev/lap/store"
)

// recoverState repairs what a crash (or SIGKILL) of lapd left behind.
// Nothing is lost: turns that were running are failed with a reason the
// user can read, half-provisioned sandboxes are destroyed, sessions that
// were being created are provisioned again, and sandboxes claimed for
// sessions that never got stored are released.
func (o *orchestrator) recoverState(ctx context.Context) error {
	failed, err := o.store.FailOpenMessages(ctx, store.MessageError{
		Name:    "Interrupted",
		Message: "lapd stopped while this turn was running; send the message again",
	})
	if err != nil {
		return err
	}
	if len(failed) > 0 {
		o.log.Warn("turns interrupted by the last stop marked failed", "count", len(failed))
	}
	o.mu.Lock()
	for _, m := range failed {
		o.interrupted[m.SessionID] = true
	}
	o.mu.Unlock()
	if err := o.adoptSandboxes(ctx); err != nil {
		// Not fatal: every session still recovers at its next message.
		o.log.Warn("adopt the backend's sandboxes", "backend", o.backend.Name(), "err", err)
	}
	if len(failed) > 0 {
		o.goBackground(func(ctx context.Context) { o.abortInterrupted(ctx, failed) })
	}

	if err := o.retireOrphans(ctx); err != nil {
		return err
	}

	creating, err := o.store.SessionIDsByStatus(ctx, api.SessionCreating)
	if err != nil {
		return err
	}
	for _, id := range creating {
		o.goBackground(func(ctx context.Context) {
			o.provisionSession(ctx, id, phaseRecovering)
		})
	}

	agents, err := o.store.AllAgents(ctx)
	if err != nil {
		return err
	}
	if len(agents) > 0 {
		o.goBackground(func(ctx context.Context) { o.ensureAgents(ctx, agents) })
	}
	return nil
}

// retireOrphans destroys the sandboxes a stop left without a use:
// half-provisioned ones, and those claimed for sessions that never got
// stored, moved on to another sandbox, or ended.
func (o *orchestrator) retireOrphans(ctx context.Context) error {
	stuck, err := o.store.ListSandboxes(ctx, store.SandboxFilter{States: []string{store.SandboxProvisioning}})
	if err != nil {
		return err
	}
	for _, sb := range stuck {
		o.markSandbox(ctx, sb.ID, store.SandboxFailed, "lapd stopped while it was being provisioned")
		o.retireSandbox(sb, "half-provisioned at start-up")
	}

	claimed, err := o.store.ListSandboxes(ctx, store.SandboxFilter{States: []string{store.SandboxClaimed, store.SandboxSuspended}})
	if err != nil {
		return err
	}
	for _, sb := range claimed {
		sess, err := o.store.GetSession(ctx, sb.SessionID)
		if errors.Is(err, store.ErrNotFound) || (err == nil && (sess.SandboxID != sb.ID || sess.Status == api.SessionDead)) {
			o.retireSandbox(sb, "claimed by no live session at start-up")
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// abortInterrupted stops, in harnesses that outlived lapd, the turns that
// recoverState marked failed: nobody waits for their answers any more, and
// a harness busy with one would refuse the session's next message. A
// harness that is gone or already idle needs nothing; call still aborts a
// turn it finds running when a message comes.
func (o *orchestrator) abortInterrupted(ctx context.Context, failed []store.Message) {
	seen := map[string]bool{}
	var g errgroup.Group
	g.SetLimit(8)
	for _, m := range failed {
		if ctx.Err() != nil {
			break
		}
		if seen[m.SessionID] {
			continue
		}
		seen[m.SessionID] = true
		tgt, ok := o.runningTarget(ctx, m.SessionID)
		if !ok {
			continue
		}
		g.Go(func() error {
			actx, cancel := context.WithTimeout(ctx, abortGrace)
			defer cancel()
			if err := o.harness.abort(actx, tgt); err != nil {
				o.log.Info("abort an interrupted turn in its harness", "session", m.SessionID, "err", err)
			}
			return nil
		})
	}
	_ = g.Wait() // the goroutines log their own failures
}

// runningTarget is the harness session of session id when its sandbox is
// claimed and its harness was found running.
func (o *orchestrator) runningTarget(ctx context.Context, id string) (target, bool) {
	sess, err := o.store.GetSession(ctx, id)
	if err != nil || sess.SandboxID == "" || sess.HarnessSessionID == "" {
		return target{}, false
	}
	sb, err := o.store.GetSandbox(ctx, sess.SandboxID)
	if err != nil || sb.State != store.SandboxClaimed {
		return target{}, false
	}
	bsb, err := backendRecord(sb)
	if err != nil || !bsb.Running {
		return target{}, false
	}
	return targetOf(sb, bsb, sess.HarnessSessionID), true
}

// ensureAgents re-applies every agent on the backend (idempotent), a few
// at a time, so a backend that lost per-agent resources gets them back.
func (o *orchestrator) ensureAgents(ctx context.Context, agents []store.Agent) {
	var g errgroup.Group
	g.SetLimit(4)
	for _, a := range agents {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			if err := o.ensureAgent(ctx, a); err != nil {
				o.log.Warn("ensure agent on the backend", "agent", a.Name, "err", err)
			}
			return nil
		})
	}
	_ = g.Wait() // the goroutines log their own failures
}
