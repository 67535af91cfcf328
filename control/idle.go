package control

import (
	"context"
	"errors"
	"time"

	"lap.dev/lap/control/api"
)

// The idle reaper scales sessions to zero: a ready session with no turn
// running and no activity for its idle timeout (SESSION_IDLE_TIMEOUT when
// it was created) is suspended — the backend stops its harness and keeps
// its workspace — and becomes idle. Its next message resumes it
// (ensureRunning); the client does nothing special.

// idleTick is how often the reaper looks: a quarter of the idle timeout,
// between 100ms and 30s, so a session sleeps at most a quarter late.
func idleTick(timeout time.Duration) time.Duration {
	return min(max(timeout/4, 100*time.Millisecond), 30*time.Second)
}

// reapIdle runs the reaper until ctx ends.
func (o *orchestrator) reapIdle(ctx context.Context) {
	t := time.NewTicker(idleTick(o.cfg.SessionIdleTimeout))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		o.suspendIdle(ctx, time.Now())
	}
}

// suspendIdle suspends every ready session idle longer than its timeout
// at now, a few at a time.
func (o *orchestrator) suspendIdle(ctx context.Context, now time.Time) {
	ids, err := o.store.SessionIDsByStatus(ctx, api.SessionReady)
	if err != nil {
		if ctx.Err() == nil {
			o.log.Warn("idle reaper: list ready sessions", "err", err)
		}
		return
	}
	sem := make(chan struct{}, 4)
	done := make(chan struct{})
	n := 0
	for _, id := range ids {
		sess, err := o.store.GetSession(ctx, id)
		if err != nil || sess.Status != api.SessionReady || sess.IdleTimeoutMS <= 0 {
			continue
		}
		if now.Sub(sess.LastActiveAt) < time.Duration(sess.IdleTimeoutMS)*time.Millisecond {
			continue
		}
		o.mu.Lock()
		_, busy := o.active[id]
		busy = busy || o.inFlight[id] > 0
		o.mu.Unlock()
		if busy || o.terms.attached(id) {
			continue
		}
		n++
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; done <- struct{}{} }()
			err := o.suspendIfIdleSince(ctx, id, now.Add(-time.Duration(sess.IdleTimeoutMS)*time.Millisecond))
			switch {
			case err == nil:
				o.log.Info("idle session suspended", "session", id, "idle_for", now.Sub(sess.LastActiveAt).Round(time.Second))
			case errors.Is(err, errEnded), errors.Is(err, errBusy), errors.Is(err, errUnavailable), ctx.Err() != nil:
				// Ended, a turn started meanwhile, or lapd is stopping.
			default:
				o.log.Warn("idle reaper: suspend session", "session", id, "err", err)
			}
		}()
	}
	for range n {
		<-done
	}
}
