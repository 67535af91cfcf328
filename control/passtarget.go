package control

import (
	"context"

	"lap.dev/lap/control/api"
	"lap.dev/lap/store"
)

// passTarget is where the pass-through reaches session sess's harness:
// a creating session is waited for, an idle one resumed (reserved like a
// turn meanwhile), and the session counts as active.
func (o *orchestrator) passTarget(ctx context.Context, sess store.Session) (target, error) {
	if err := readyErr(sess, nil); err != nil {
		return target{}, err
	}
	var err error
	if sess.Status == api.SessionCreating {
		if sess, err = o.waitReady(ctx, sess.ID); err != nil {
			return target{}, err
		}
	}
	var tgt target
	if sess.Status == api.SessionIdle {
		release, err := o.reserve(ctx, sess.ID, nil)
		if err != nil {
			return target{}, err
		}
		tgt, sess, err = o.ensureRunning(ctx, sess, false, 0)
		release()
		if err != nil {
			return target{}, err
		}
	} else {
		sb, err := o.store.GetSandbox(ctx, sess.SandboxID)
		if err != nil {
			return target{}, err
		}
		bsb, err := backendRecord(sb)
		if err != nil {
			return target{}, err
		}
		tgt = targetOf(sb, bsb, sess.HarnessSessionID)
	}
	o.touch(ctx, sess.ID)
	return tgt, nil
}

// passRecover brings back the sandbox of session id, whose harness did
// not take a pass-through request (it crashed, or lapd restarted without
// it), reserved like a turn meanwhile, and returns where it now answers.
func (o *orchestrator) passRecover(ctx context.Context, id string) (target, error) {
	release, err := o.reserve(ctx, id, nil)
	if err != nil {
		return target{}, err
	}
	defer release()
	sess, err := o.store.GetSession(ctx, id)
	if err := readyErr(sess, err); err != nil {
		return target{}, err
	}
	tgt, sess, err := o.ensureRunning(ctx, sess, true, 0)
	if err != nil {
		return target{}, err
	}
	o.touch(ctx, sess.ID)
	return tgt, nil
}
