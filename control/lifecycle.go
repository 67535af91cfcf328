package control

import (
	"context"
	"slices"
	"time"

	"lap.dev/lap/control/api"
	"lap.dev/lap/store"
)

// A session's lifecycle. This file is the only place that writes a
// session's Status, Phase, FailureReason or harness attachment: every
// change is a named transition below, which checks the state it starts
// from and sets status and phase together. The store adds each status and
// phase change to the session's timeline in the same transaction
// (store.UpdateSession), and mark tells the session's /events subscribers.
//
//	(new) ──queued──▶ creating ──attached──▶ ready
//	(new) ──claimedWarm (a warm claim)─────▶ ready
//	ready ──suspended──▶ idle ──resumed──▶ ready
//	ready ──progressed("recovering")──resumed──▶ ready      (a crash: restart on its sandbox)
//	ready, idle ──attached──▶ ready                         (sandbox lost: a new one)
//	creating, ready, idle ──failed──▶ failed ──restarting──▶ creating
//	ready, idle ──restarting──▶ creating                    (restart on request)
//	any but dead ──ended──▶ dead
//
// Phases are the finer progress text of a state (the CLI shows them while
// a session is not ready); progress transitions change only the phase.
// The orchestration decides when something happened; this file decides
// what that does to the session.

// statusNew is the status of a session record not yet stored: the
// transitions that create a session start from it.
const statusNew = ""

// Session phases: free text the CLI shows while a session is not ready.
const (
	phaseQueued       = "queued"
	phaseProvisioning = "provisioning sandbox"
	phaseStarting     = "starting harness"
	phaseResuming     = "resuming"
	phaseRecovering   = "recovering"
	phaseRestarting   = "restarting"
	phaseReady        = "ready"
	phaseSuspended    = "suspended"
)

// living are the states a session is in between its creation and its
// failure or end: it has, or is getting, a sandbox.
var living = []string{api.SessionCreating, api.SessionReady, api.SessionIdle}

// transition is one named change of a session's state.
type transition struct {
	// name says what happened, for refusals.
	name string
	// from are the states the transition may start from.
	from []string
	// apply makes the change; it runs only from a state in from.
	apply func(*store.Session)
	// refuse, when set, is the error for a state not in from; nil
	// leaves it to refusal.
	refuse func(*store.Session) error
}

// on applies t to sess, or returns why sess's state refuses it.
func (t transition) on(sess *store.Session) error {
	if slices.Contains(t.from, sess.Status) {
		t.apply(sess)
		return nil
	}
	if t.refuse != nil {
		if err := t.refuse(sess); err != nil {
			return err
		}
	}
	return refusal(t.name, sess)
}

// refusal is the error for a transition a session's state does not
// allow: an ended session says so (errEnded), any other state is a
// conflict.
func refusal(name string, sess *store.Session) error {
	if sess.Status == api.SessionDead {
		return endedError(sess.ID)
	}
	return errorf(errConflict, "session %s is %s: cannot mark it %s", sess.ID, sess.Status, name)
}

// queued: a new session waits for a sandbox to be provisioned.
func queued() transition {
	return transition{name: "queued", from: []string{statusNew}, apply: func(s *store.Session) {
		s.Status, s.Phase = api.SessionCreating, phaseQueued
	}}
}

// claimedWarm: a new session took a warm sandbox whose harness session
// hsID is open; it is ready at once.
func claimedWarm(sandboxID, hsID string) transition {
	return transition{name: "claimed warm", from: []string{statusNew}, apply: func(s *store.Session) {
		s.Status, s.Phase = api.SessionReady, phaseReady
		s.SandboxID, s.HarnessSessionID = sandboxID, hsID
	}}
}

// progressed: a living session moved on to phase (provisioning,
// starting the harness, resuming, recovering, a resume that failed) in
// its present state.
func progressed(phase string) transition {
	return transition{name: "progressed", from: living, apply: func(s *store.Session) {
		s.Phase = phase
	}}
}

// attached: a living session got a new sandbox (sandboxID, of agent
// generation gen) with harness session hsID open and the history
// replayed; it is ready and any earlier failure is forgotten.
func attached(sandboxID, hsID string, gen int64) transition {
	return transition{name: "attached", from: living, apply: func(s *store.Session) {
		s.Status, s.Phase, s.FailureReason = api.SessionReady, phaseReady, ""
		s.SandboxID, s.Generation = sandboxID, gen
		switchHarnessSession(s, hsID)
	}}
}

// resumed: the session's own sandbox runs again (it was asleep, or its
// harness was restarted after a crash).
func resumed() transition {
	return transition{name: "resumed", from: []string{api.SessionReady, api.SessionIdle}, apply: func(s *store.Session) {
		s.Status, s.Phase = api.SessionReady, phaseReady
	}}
}

// suspended: a ready session's sandbox was scaled to zero.
func suspended() transition {
	return transition{name: "suspended", from: []string{api.SessionReady}, apply: func(s *store.Session) {
		s.Status, s.Phase = api.SessionIdle, phaseSuspended
	}}
}

// harnessReopened: the session's harness lost its harness session and a
// new one, hsID, was opened on the same sandbox; the state is unchanged.
func harnessReopened(hsID string) transition {
	return transition{name: "reopened", from: living, apply: func(s *store.Session) {
		switchHarnessSession(s, hsID)
	}}
}

// maxPriorHarnessSessions bounds how many replaced harness session ids a
// session remembers for clients that cached one.
const maxPriorHarnessSessions = 16

// switchHarnessSession makes hsID the session's harness session and
// remembers the one it replaces: a pass-through client read the old id
// once (LAP's CLI does, when its chat starts) and keeps sending to it.
func switchHarnessSession(s *store.Session, hsID string) {
	if old := s.HarnessSessionID; old != "" && old != hsID && !slices.Contains(s.PriorHarnessSessionIDs, old) {
		s.PriorHarnessSessionIDs = append(s.PriorHarnessSessionIDs, old)
		if n := len(s.PriorHarnessSessionIDs); n > maxPriorHarnessSessions {
			s.PriorHarnessSessionIDs = slices.Clone(s.PriorHarnessSessionIDs[n-maxPriorHarnessSessions:])
		}
	}
	s.HarnessSessionID = hsID
}

// failed: a living session cannot go on (no sandbox became ready, or
// its harness kept crashing), for reason.
func failed(reason string) transition {
	return transition{name: "failed", from: living, apply: func(s *store.Session) {
		s.Status, s.Phase, s.FailureReason = api.SessionFailed, "", reason
	}}
}

// restarting: the user asked for a new sandbox for the session (failed,
// or any that is not being created); it is creating again.
func restarting() transition {
	return transition{
		name: "restarting",
		from: []string{api.SessionFailed, api.SessionReady, api.SessionIdle},
		apply: func(s *store.Session) {
			s.Status, s.Phase, s.FailureReason = api.SessionCreating, phaseRestarting, ""
		},
		refuse: func(s *store.Session) error {
			switch s.Status {
			case api.SessionDead:
				return errorf(errEnded, "session %s has ended; create a new one", s.ID)
			case api.SessionCreating:
				return errorf(errConflict, "session %s is already starting", s.ID)
			}
			return nil
		},
	}
}

// ended: the user deleted the session. Ending an ended session is
// refused with errEnded, which endSession takes as done.
func ended() transition {
	return transition{name: "ended", from: append(slices.Clip(living), api.SessionFailed), apply: func(s *store.Session) {
		s.Status, s.Phase = api.SessionDead, ""
	}}
}

// mark applies t to the stored session id in one store transaction and
// tells the session's subscribers. It returns the session before and
// after.
func (o *orchestrator) mark(ctx context.Context, id string, t transition) (prev, sess store.Session, err error) {
	sess, err = o.store.UpdateSession(ctx, id, func(cur *store.Session) error {
		prev = *cur
		return t.on(cur)
	})
	if err != nil {
		return prev, sess, err
	}
	o.publishSession(ctx, sess)
	return prev, sess, nil
}

// markPhase is mark for a progress transition, which needs only the
// error.
func (o *orchestrator) markPhase(ctx context.Context, id, phase string) error {
	_, _, err := o.mark(ctx, id, progressed(phase))
	return err
}

// createWith stores the new session base in the state t (queued or
// claimedWarm) leaves it.
func (o *orchestrator) createWith(ctx context.Context, base store.Session, t transition) (store.Session, error) {
	base.Status = statusNew
	if err := t.on(&base); err != nil {
		return store.Session{}, err
	}
	return o.store.CreateSession(ctx, base)
}

// touch records activity on a session, so the idle reaper leaves it be.
// It changes no state, so it is not a transition, and tells no one.
func (o *orchestrator) touch(ctx context.Context, id string) {
	if _, err := o.store.UpdateSession(ctx, id, func(cur *store.Session) error {
		cur.LastActiveAt = time.Now().UTC()
		return nil
	}); err != nil {
		o.log.Warn("record session activity", "session", id, "err", err)
	}
}

// acceptsTurn says why a session cannot take a new turn (nil when it
// can): an ended one never will, a failed one after a restart.
func acceptsTurn(sess store.Session) error {
	switch sess.Status {
	case api.SessionDead:
		return endedError(sess.ID)
	case api.SessionFailed:
		return &opError{kind: errFailed, session: sess.ID, msg: "session " + sess.ID + " failed: " + sess.FailureReason}
	}
	return nil
}

// readyErr says why a session that is no longer creating (or that a
// client reaches through the pass-through) cannot serve: it failed or
// ended (nil when it can).
func readyErr(sess store.Session, err error) error {
	switch {
	case err != nil:
		return err
	case sess.Status == api.SessionFailed:
		return errorf(errNotReady, "session %s failed: %s", sess.ID, sess.FailureReason)
	case sess.Status == api.SessionDead:
		return endedError(sess.ID)
	}
	return nil
}
