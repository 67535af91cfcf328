package knative

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/serving/pkg/apis/serving"

	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// Logs returns the tail of the harness container's log in the sandbox's
// newest pod; "" when it has no pod (scaled to zero).
func (b *Backend) Logs(ctx context.Context, sb sandboxes.Sandbox, n int) (string, error) {
	_, revName, _, err := sandboxNames(sb)
	if err != nil {
		return "", fmt.Errorf("logs of sandbox %s: %w", sb.ID, err)
	}
	pods, err := b.kube.CoreV1().Pods(b.p.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: serving.RevisionLabelKey + "=" + revName,
	})
	if err != nil {
		return "", fmt.Errorf("logs of sandbox %s: %w", sb.ID, err)
	}
	if len(pods.Items) == 0 || n <= 0 {
		return "", nil
	}
	newest := slices.MaxFunc(pods.Items, func(a, b corev1.Pod) int {
		return a.CreationTimestamp.Compare(b.CreationTimestamp.Time)
	})
	// Ask for enough lines to fill n bytes, then cut: the API's
	// limitBytes keeps the head of a log, not its tail.
	lines := int64(n/16 + 100)
	raw, err := b.kube.CoreV1().Pods(b.p.Namespace).GetLogs(newest.Name, &corev1.PodLogOptions{
		Container: resources.ContainerName,
		TailLines: &lines,
	}).DoRaw(ctx)
	if err != nil {
		return "", fmt.Errorf("logs of sandbox %s (pod %s): %w", sb.ID, newest.Name, err)
	}
	if len(raw) > n {
		raw = raw[len(raw)-n:]
	}
	return string(raw), nil
}

// logTail is Logs for error messages.
func (b *Backend) logTail(parent context.Context, sb sandboxes.Sandbox) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), 10*time.Second)
	defer cancel()
	logs, err := b.Logs(ctx, sb, 2048)
	switch {
	case err != nil:
		return "harness log: " + err.Error()
	case logs == "":
		return "harness log: (no pod)"
	}
	return "harness log:\n" + logs
}
