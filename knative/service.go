package knative

import (
	"context"
	"fmt"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/knative/resources"
)

// conflictBackoff retries an update that lost a race with Knative's own
// status writes; they bump the resourceVersion too.
var conflictBackoff = wait.Backoff{Steps: 8, Duration: 10 * time.Millisecond, Factor: 2, Jitter: 0.1}

// updateService applies mutate to a fresh copy of the Service and writes
// it if mutate reports a change, retrying on conflict. Callers hold the
// agent's lock (agentLocks), so the conflicts retried are Knative's.
func (b *Backend) updateService(ctx context.Context, svcName string, mutate func(*servingv1.Service) (bool, error)) (*servingv1.Service, error) {
	svcs := b.serving.ServingV1().Services(b.p.Namespace)
	var out *servingv1.Service
	err := retry.RetryOnConflict(conflictBackoff, func() error {
		svc, err := svcs.Get(ctx, svcName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		changed, err := mutate(svc)
		if err != nil || !changed {
			out = svc
			return err
		}
		out, err = svcs.Update(ctx, svc, metav1.UpdateOptions{})
		return err
	})
	return out, err
}

// owned checks that svc is the Service of agent id, not a same-named
// Service of someone else or of a deleted agent.
func owned(svc *servingv1.Service, agentID string) error {
	if svc.Labels[resources.LabelManagedBy] != resources.ManagedBy || svc.Labels[resources.LabelAgentID] != agentID {
		return fmt.Errorf("service %s/%s is not lap's agent %s (labels %v)", svc.Namespace, svc.Name, agentID, svc.Labels)
	}
	return nil
}

// agentLocks serialises the writes to each agent's Service, so that each
// template update is seen by Knative before the next (ARCHITECTURE §6);
// waiting for one respects the caller's context.
type agentLocks struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

func (l *agentLocks) lock(ctx context.Context, agent string) (unlock func(), err error) {
	l.mu.Lock()
	ch, ok := l.m[agent]
	if !ok {
		ch = make(chan struct{}, 1)
		l.m[agent] = ch
	}
	l.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for agent %s: %w", agent, ctx.Err())
	}
}
