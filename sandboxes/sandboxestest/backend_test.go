package sandboxestest

import (
	"context"
	"testing"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/conformance"
)

func TestConformance(t *testing.T) {
	b := New(Options{})
	t.Cleanup(b.Close)
	conformance.Run(t, b, conformance.Options{
		Agent: sandboxes.AgentSpec{HarnessID: "lap", Env: map[string]string{"LAP_MODEL": "mock/echo"}},
		Kill: func(ctx context.Context, sb sandboxes.Sandbox) error {
			return b.Kill(sb.ID)
		},
		KeepsSessions: true,
	})
}
