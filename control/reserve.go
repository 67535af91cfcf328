package control

import "sync"

// One thing runs on a session at a time: a turn, or a maintenance job
// (a suspend, a restart, the pass-through's resume). These hold the
// orchestrator's table of what runs where.

// reserve makes t (or, with t nil, a maintenance job such as a suspend)
// the one thing running on session id; release frees it.
func (o *orchestrator) reserve(id string, t *turn) (release func(), err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.draining.Load() {
		return nil, errShuttingDown
	}
	if _, busy := o.active[id]; busy {
		return nil, busyError(id)
	}
	o.active[id] = t
	if t != nil {
		o.turns.Add(1)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			o.mu.Lock()
			delete(o.active, id)
			o.mu.Unlock()
			if t != nil {
				o.turns.Done()
			}
		})
	}, nil
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
