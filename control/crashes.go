package control

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/store"
)

// A harness that dies is restarted on the same workspace at the next
// message (phase "recovering"), but one that keeps dying is not restarted
// for ever: the crashLimit-th crash within crashWindow fails the session
// with the harness's last output as the reason. POST …/restart starts it
// again on a new sandbox.
const (
	crashLimit  = 3
	crashWindow = 5 * time.Minute
	crashTail   = 2048 // bytes of harness output in the failure reason
)

// crashLog remembers recent harness crashes per session.
type crashLog struct {
	mu    sync.Mutex
	times map[string][]time.Time
}

func newCrashLog() *crashLog { return &crashLog{times: map[string][]time.Time{}} }

// add records a crash of session id at now and returns how many fell
// within the window.
func (c *crashLog) add(id string, now time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	kept := c.times[id][:0]
	for _, t := range c.times[id] {
		if now.Sub(t) < crashWindow {
			kept = append(kept, t)
		}
	}
	kept = append(kept, now)
	c.times[id] = kept
	return len(kept)
}

// forget drops a session's crashes (it failed, or ended).
func (c *crashLog) forget(id string) {
	c.mu.Lock()
	delete(c.times, id)
	c.mu.Unlock()
}

// noteCrash records that the harness of sess (sandbox bsb) was found
// dead. On the crashLimit-th crash within crashWindow it marks the session
// failed, with the harness's output tail as the reason, and returns the
// error the turn ends with; otherwise nil, and the caller restarts it.
func (o *orchestrator) noteCrash(ctx context.Context, sess store.Session, bsb sandboxes.Sandbox) error {
	n := o.crashes.add(sess.ID, time.Now())
	o.log.Warn("harness crashed", "session", sess.ID, "sandbox", bsb.ID, "crashes_in_window", n)
	if n < crashLimit {
		return nil
	}
	o.crashes.forget(sess.ID)
	tail, err := o.backend.Logs(ctx, bsb, crashTail)
	if err != nil {
		tail = "(its output could not be read: " + err.Error() + ")"
	}
	reason := fmt.Sprintf("the harness crashed %d times within %s; its last output:\n%s", n, crashWindow, strings.TrimSpace(tail))
	if _, _, err := o.mark(context.WithoutCancel(ctx), sess.ID, failed(reason)); err != nil {
		return err
	}
	return harnessFailure("session %s failed: %s", sess.ID, reason)
}
