package control

import (
	"context"
	"sync"
)

// One thing runs on a session at a time: a turn, or a maintenance job
// (a suspend, a restart, the pass-through's resume). These hold the
// orchestrator's table of what runs where.

// reserve makes t (or, with t nil, a maintenance job such as a suspend)
// the one thing running on session id; release frees it. A turn that
// finds a maintenance job running waits for it (or for ctx) instead of
// being refused: a suspend or resume holds a session for a moment, and
// the session's state may already show its outcome while it does.
func (o *orchestrator) reserve(ctx context.Context, id string, t *turn) (release func(), err error) {
	for {
		job, err := o.tryReserve(id, t)
		switch {
		case err != nil:
			return nil, err
		case job == nil:
			return o.releaser(id, t), nil
		}
		select {
		case <-job:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// tryReserve reserves session id for t, or returns why not: an error, or
// the channel that closes when the maintenance job holding it ends (for
// a turn to wait on).
func (o *orchestrator) tryReserve(id string, t *turn) (job <-chan struct{}, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.draining.Load() {
		return nil, errShuttingDown
	}
	if held, busy := o.active[id]; busy {
		if held == nil && t != nil {
			return o.jobs[id], nil
		}
		return nil, busyError(id)
	}
	o.active[id] = t
	if t != nil {
		o.turns.Add(1)
	} else {
		o.jobs[id] = make(chan struct{})
	}
	return nil, nil
}

// releaser is the release function of a reservation of session id.
func (o *orchestrator) releaser(id string, t *turn) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			o.mu.Lock()
			delete(o.active, id)
			if job, ok := o.jobs[id]; ok {
				close(job)
				delete(o.jobs, id)
			}
			o.mu.Unlock()
			if t != nil {
				o.turns.Done()
			}
		})
	}
}

// abortTurn interrupts the turn running on session id, if any, for
// reason, and reports whether there was one.
func (o *orchestrator) abortTurn(id string, reason abortReason) bool {
	o.mu.Lock()
	t := o.active[id]
	o.mu.Unlock()
	if t != nil {
		t.abort(reason)
	}
	return t != nil
}

// turnRunning reports whether a turn runs on session id now.
func (o *orchestrator) turnRunning(id string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.active[id] != nil
}

// wasInterrupted reports whether session id had a turn running when lapd
// last stopped, and has answered none since.
func (o *orchestrator) wasInterrupted(id string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.interrupted[id]
}
