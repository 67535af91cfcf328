package waitfor

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	if !Poll(context.Background(), time.Second, 0, func() bool { return n.Add(1) >= 3 }) {
		t.Fatalf("Poll = false, want true once cond holds")
	}
	if got := n.Load(); got != 3 {
		t.Errorf("cond called %d times, want 3 (it holds on the third)", got)
	}
	start := time.Now()
	if Poll(context.Background(), 20*time.Millisecond, time.Millisecond, func() bool { return false }) {
		t.Fatalf("Poll = true for a condition that never holds")
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("Poll gave up after %s, before its 20ms timeout", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Poll(ctx, time.Minute, 0, func() bool { return false }) {
		t.Fatalf("Poll = true with a cancelled context")
	}
}

func TestWithinFailsAfterTimeout(t *testing.T) {
	t.Parallel()
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Within(ft, 10*time.Millisecond, "never", func() bool { return false })
	}()
	<-done
	if ft.msg != "timed out after 10ms waiting for never" {
		t.Errorf("failure = %q, want the timeout and what was awaited", ft.msg)
	}
}

// fatalRecorder records Fatalf instead of failing the real test; its
// Fatalf ends the goroutine as testing's does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
