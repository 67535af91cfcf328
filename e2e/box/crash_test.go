package box_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"lap.dev/lap/e2e/box"
	"lap.dev/lap/e2e/box/boxnet"
	"lap.dev/lap/internal/waitfor"
)

// TestCrashedBoxIsSwept kills a running box (bin/lap-box run) with
// SIGKILL, as a crashed test would die: its processes — components and
// pods — die with it, and what it leaves in the kernel (namespaces, the
// veth, the address) is swept by the next box's start.
func TestCrashedBoxIsSwept(t *testing.T) {
	box.SkipInShortMode(t)
	root, err := box.FindRoot()
	require.NoError(t, err)
	bin := filepath.Join(root, "bin", "lap-box")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s not built: run `make box` (make test does)", bin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	logFile, err := os.Create(filepath.Join(dir, "lap-box.log"))
	require.NoError(t, err)
	defer logFile.Close()
	cmd := exec.Command(bin, "run", "--dir", filepath.Join(dir, "box"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("lap-box log:\n%s", b)
		}
	})

	var state struct {
		Slot       int    `json:"slot"`
		Kubeconfig string `json:"kubeconfig"`
	}
	require.True(t, waitfor.Poll(ctx, 4*time.Minute, 100*time.Millisecond, func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "box", "box.json"))
		return err == nil && json.Unmarshal(b, &state) == nil
	}), "the box did not come up")
	t.Cleanup(func() {
		// Whatever happens above, leave the machine clean.
		_ = boxnet.SweepFree(context.Background(), slog.New(slog.DiscardHandler))
	})

	// A pod, so that the crash also leaves a pod's processes and
	// namespace behind.
	cfg, err := clientcmd.BuildConfigFromFlags("", state.Kubeconfig)
	require.NoError(t, err)
	kube, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	labels := map[string]string{"app": "crash"}
	_, err = kube.AppsV1().Deployments("default").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "crash"},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name:  "harness",
					Image: box.HarnessImage,
					Env: []corev1.EnvVar{
						{Name: "LITELLM_API_BASE", Value: "http://127.0.0.1:9"},
						{Name: "HARNESS_AUTH_TOKEN", Value: "t"},
						{Name: "PORT", Value: "8080"},
					},
				}}},
			},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	require.True(t, waitfor.Poll(ctx, 2*time.Minute, 100*time.Millisecond, func() bool {
		pods, err := kube.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=crash"})
		return err == nil && len(pods.Items) == 1 && pods.Items[0].Status.Phase == corev1.PodRunning
	}), "the pod did not start")
	before, err := boxnet.Leftovers(ctx, state.Slot)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, count(before, "process "), 7, "apiserver, controller-manager, 4 Knative components, the pod: %v", before)
	assert.GreaterOrEqual(t, count(before, "netns "), 6, "hub, 4 components, the pod: %v", before)

	require.NoError(t, cmd.Process.Kill())
	<-exited
	// The processes die with the box's (parent-death signal).
	require.True(t, waitfor.Poll(ctx, time.Minute, 100*time.Millisecond, func() bool {
		left, err := boxnet.Leftovers(ctx, state.Slot)
		return err == nil && count(left, "process ") == 0
	}), "processes of the killed box live on")
	left, err := boxnet.Leftovers(ctx, state.Slot)
	require.NoError(t, err)
	assert.NotZero(t, count(left, "netns "), "a killed box leaves its namespaces: %v", left)

	// The next box's start sweeps them (boxnet.Open calls SweepFree).
	require.NoError(t, boxnet.SweepFree(ctx, slog.New(slog.DiscardHandler)))
	left, err = boxnet.Leftovers(ctx, state.Slot)
	require.NoError(t, err)
	assert.Empty(t, left)
}

func count(items []string, prefix string) int {
	n := 0
	for _, s := range items {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}
