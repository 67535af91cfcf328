package knative

import (
	"testing"
	"time"
)

// TestProbeBackoff: the readiness probe doubles its delay from 50ms up
// to 2s and then stays there until its deadline, as the hand-rolled loop
// it replaced did; reaching the cap must not end the probe.
func TestProbeBackoff(t *testing.T) {
	t.Parallel()
	next := probeBackoff.DelayFunc()
	want := []time.Duration{50, 100, 200, 400, 800, 1600, 2000, 2000, 2000}
	for i, ms := range want {
		if got := next(); got != ms*time.Millisecond {
			t.Errorf("delay %d = %v, want %v", i, got, ms*time.Millisecond)
		}
	}
}
