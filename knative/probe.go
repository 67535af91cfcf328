package knative

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/harnessclient"
)

// probeBackoff paces the readiness probe: quickly at first, since a
// routed revision's harness usually answers within a few tries, then
// every 2s. Steps only has to outlast the doubling; once the delay reaches
// Cap it stays there until the probe's context ends.
var probeBackoff = wait.Backoff{Duration: 50 * time.Millisecond, Factor: 2, Cap: 2 * time.Second, Steps: math.MaxInt32}

// probe asks the harness until it answers, or ctx ends; the first
// requests may meet a pod still starting or a route still being
// programmed.
func (b *Backend) probe(ctx context.Context, ep sandboxes.Endpoint, token string) error {
	var last error
	err := probeBackoff.DelayFunc().Until(ctx, true, true, func(ctx context.Context) (bool, error) {
		last = harnessReady(ctx, b.http, ep, token)
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("harness at %s did not answer (%v): %w", ep.URL, last, err)
	}
	return nil
}

// harnessReady is the probe's one request, the backend's only call to a
// harness: the harness protocol client's readiness check (GET /session
// with the sandbox's token, through ep; nil when the harness answers
// 2xx, ARCHITECTURE §5).
func harnessReady(ctx context.Context, client *http.Client, ep sandboxes.Endpoint, token string) error {
	return harnessclient.NewWithClient(client).Ready(ctx, harnessclient.Target{Endpoint: ep, Token: token})
}
