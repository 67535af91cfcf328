package box

import (
	"context"
	"time"
)

// Poll checks cond every interval until it holds (true) or timeout
// passes or ctx ends (false). Shared by the box tests and the lapd rig.
func Poll(ctx context.Context, timeout, every time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}
