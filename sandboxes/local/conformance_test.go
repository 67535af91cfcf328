package local

import (
	"testing"

	"lap.dev/lap/sandboxes/conformance"
)

// The local backend passes the behaviour suite every backend must pass,
// with real lap-harness processes.
func TestConformance(t *testing.T) {
	b := newBackend(t, "", nil)
	f := newFixture(t)
	conformance.Run(t, b, conformance.Options{
		Agent:         f.agent,
		Kill:          kill,
		KeepsSessions: true,
	})
}
