// Package waitfor is how lap's tests (and the Knative-in-a-box rig) wait
// for something to become true: poll a condition with a deadline, never a
// fixed sleep. It is the one such helper in the tree, so every test waits
// the same way and reports a timeout the same way.
package waitfor

import (
	"context"
	"testing"
	"time"
)

// Timeout is how long Cond waits: long enough for a busy CI machine to
// start processes and harnesses, short enough that a hang fails the test
// well before go test's own timeout.
const Timeout = 30 * time.Second

// maxDelay caps the backoff between two checks when Poll is given no
// interval: early checks are quick (most conditions hold within
// milliseconds), later ones do not spin.
const maxDelay = 100 * time.Millisecond

// Poll checks cond at once and then every interval until it holds (true)
// or timeout passes or ctx ends (false). An interval of 0 backs off from
// 1ms to 100ms.
func Poll(ctx context.Context, timeout, every time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := every
	if delay <= 0 {
		delay = time.Millisecond
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			// One last look: a condition that became true while the
			// deadline passed is not a timeout.
			return cond()
		case <-timer.C:
		}
		if every <= 0 {
			delay = min(2*delay, maxDelay)
		}
		timer.Reset(delay)
	}
}

// Cond fails t (t.Fatalf, so call it from the test's goroutine) unless
// cond holds within Timeout; what names the condition in the failure.
func Cond(t testing.TB, what string, cond func() bool) {
	t.Helper()
	Within(t, Timeout, what, cond)
}

// Within is Cond with a timeout of its own, for waits that are known to
// take longer (or must be shorter) than Timeout.
func Within(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(context.Background(), timeout, 0, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}
