package knative

import (
	"context"
	"errors"
	"fmt"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// waitLatestCreated waits until Knative has created the revision the
// template of svc (as written) names. Until then a further template
// update could make Knative skip this revision.
func (b *Backend) waitLatestCreated(ctx context.Context, written *servingv1.Service, revName string) error {
	err := b.waitFor(ctx, func() (bool, error) {
		svc, err := b.services.Get(written.Name)
		if apierrors.IsNotFound(err) {
			return false, nil // the informer has not seen it yet
		}
		if err != nil {
			return false, err
		}
		if svc.Status.LatestCreatedRevisionName == revName {
			return true, nil
		}
		// Knative could not create it, e.g. the name is taken.
		c := svc.Status.GetCondition(servingv1.ServiceConditionConfigurationsReady)
		if svc.Status.ObservedGeneration >= written.Generation && c != nil && c.IsFalse() {
			return false, fmt.Errorf("knative did not create revision %s: %s: %s", revName, c.Reason, c.Message)
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("wait for revision %s to be created: %w", revName, err)
	}
	return nil
}

// waitReady waits until the sandbox's revision is Ready, its tag is in
// the route's status, and its harness answers GET /session.
func (b *Backend) waitReady(ctx context.Context, sb sandboxes.Sandbox, token string) (sandboxes.Endpoint, error) {
	svcName, revName, tag := sb.Data[DataService], sb.Data[DataRevision], sb.Data[DataTag]
	var ep sandboxes.Endpoint
	err := b.waitFor(ctx, func() (bool, error) {
		rev, err := b.revisions.Get(revName)
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if rev.DeletionTimestamp != nil {
			return false, fmt.Errorf("revision %s is being deleted: %w", revName, sandboxes.ErrGone)
		}
		c := rev.Status.GetCondition(servingv1.RevisionConditionReady)
		if c == nil || c.IsUnknown() {
			return false, nil
		}
		if c.IsFalse() {
			return false, fmt.Errorf("revision %s failed: %s: %s: %w", revName, c.Reason, c.Message, sandboxes.ErrNotReady)
		}
		svc, err := b.services.Get(svcName)
		if apierrors.IsNotFound(err) {
			return false, fmt.Errorf("agent service %s was deleted: %w", svcName, sandboxes.ErrGone)
		}
		if err != nil {
			return false, err
		}
		if svc.Status.ObservedGeneration < svc.Generation {
			return false, nil
		}
		t, ok := resources.FindTag(svc.Status.Traffic, tag)
		if !ok || t.RevisionName != revName || t.URL == nil {
			return false, nil
		}
		ep = b.endpoint(svc, t)
		return true, nil
	})
	if err != nil {
		return ep, fmt.Errorf("wait for revision %s: %w", revName, err)
	}
	if err := b.probe(ctx, ep, token); err != nil {
		return ep, err
	}
	return ep, nil
}

// waitError turns the end of Provision's or Resume's own deadline into
// ErrNotReady, and leaves the caller's cancellation as it is.
func (b *Backend) waitError(parent context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil {
		return fmt.Errorf("not ready within KNATIVE_READY_TIMEOUT=%s: %w: %w", b.cfg.ReadyTimeout, sandboxes.ErrNotReady, err)
	}
	return err
}

// waitFor re-evaluates check on every informer event until it reports
// done, fails, or ctx ends. It waits on events, not on a timer: what
// Knative reports reaches the caches as a watch event, and a poll would
// only add its interval to every wait.
func (b *Backend) waitFor(ctx context.Context, check func() (bool, error)) error {
	for {
		changed := b.changed.wait()
		done, err := check()
		if err != nil || done {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// notifier wakes every waiter on each informer event: wait returns a
// channel closed by the next notify.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

func (n *notifier) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.ch)
	n.ch = make(chan struct{})
}
