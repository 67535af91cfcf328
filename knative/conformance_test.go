package knative

import (
	"context"
	"testing"
	"time"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/conformance"
)

// TestConformance runs the behaviour suite every backend must pass
// against the Knative backend, on the real kube-apiserver with the fake
// Knative playing Serving's controllers, ingress and pods.
func TestConformance(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	conformance.Run(t, r.b, conformance.Options{
		Agent: newAgent("conformance"),
		// A crash on Knative is a pod dying; its Deployment starts
		// another while the tag keeps the revision at min-scale 1.
		Kill: func(_ context.Context, sb sandboxes.Sandbox) error {
			return r.fake.kill(sb.Data[DataRevision])
		},
		// A resumed sandbox is a new pod with a new emptyDir workspace.
		KeepsSessions: false,
		// List reads the informers' caches, and the garbage collector
		// removes a deleted agent's revisions after DeleteAgent returns.
		ListSettles: 30 * time.Second,
		Client:      r.fake.httpClient(),
	})
}
