package box_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"lap.dev/lap/e2e/box"
	"lap.dev/lap/internal/waitfor"
)

// TestKubelet checks what the box's kubelet does beyond what Knative's
// pods need of it: env from every source (and a late Secret), restarts
// with back-off, clear reasons for what it cannot run, logs, graceful
// deletion.
func TestKubelet(t *testing.T) {
	b := box.StartForTest(t, box.Options{Images: map[string]string{"box.local/sh": "/bin/sh"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kube := b.Kube()
	const ns = "kubelet"
	_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = kube.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "cm"},
		Data:       map[string]string{"colour": "blue", "size": "large"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	sh := func(name, script string, edit func(*corev1.Pod)) {
		t.Helper()
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"team": "box"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "main", Image: "box.local/sh:1", Args: []string{"-c", script},
			}}},
		}
		if edit != nil {
			edit(pod)
		}
		_, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		require.NoError(t, err)
	}
	waitPod := func(name, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
		t.Helper()
		var last *corev1.Pod
		ok := waitfor.Poll(ctx, 2*time.Minute, 100*time.Millisecond, func() bool {
			p, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			last = p
			return cond(p)
		})
		if !ok {
			t.Fatalf("pod %s: %s: not within 2m; status %+v", name, what, last.Status)
		}
		return last
	}
	waiting := func(p *corev1.Pod) *corev1.ContainerStateWaiting {
		if len(p.Status.ContainerStatuses) == 0 {
			return nil
		}
		return p.Status.ContainerStatuses[0].State.Waiting
	}

	// Env from values, $(VAR), ConfigMap keys, envFrom with a prefix,
	// fieldRefs and a Secret created only after the pod.
	sh("env", `echo "A=$A B=$B C=$C CM_size=$CM_size POD=$POD IP=$IP TEAM=$TEAM S=$S"; exec sleep 600`, func(p *corev1.Pod) {
		c := &p.Spec.Containers[0]
		c.Env = []corev1.EnvVar{
			{Name: "A", Value: "one"},
			{Name: "B", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "colour"}}},
			{Name: "C", Value: "$(A)-two"},
			{Name: "POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "TEAM", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['team']"}}},
			{Name: "S", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "late"}, Key: "s"}}},
		}
		c.EnvFrom = []corev1.EnvFromSource{{Prefix: "CM_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}}}
	})
	p := waitPod("env", "waits for its Secret", func(p *corev1.Pod) bool {
		w := waiting(p)
		return w != nil && w.Reason == "CreateContainerConfigError"
	})
	assert.Contains(t, waiting(p).Message, `"late"`)
	_, err = kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "late"}, Data: map[string][]byte{"s": []byte("shh")}}, metav1.CreateOptions{})
	require.NoError(t, err)
	p = waitPod("env", "running and ready", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning && ready(p) })
	want := fmt.Sprintf("A=one B=blue C=one-two CM_size=large POD=env IP=%s TEAM=box S=shh", p.Status.PodIP)
	require.True(t, waitfor.Poll(ctx, time.Minute, 100*time.Millisecond, func() bool {
		raw, err := kube.CoreV1().Pods(ns).GetLogs("env", &corev1.PodLogOptions{Container: "main"}).DoRaw(ctx)
		return err == nil && strings.Contains(string(raw), want)
	}), "log of pod env says %q", want)
	assert.Equal(t, b.HostIP.String(), p.Status.HostIP)
	assert.Equal(t, "box", p.Spec.NodeName, "bound to the box's node")

	// A container that exits is restarted, with its last state kept.
	sh("crash", "echo crashing; exit 3", nil)
	p = waitPod("crash", "restarted", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1
	})
	last := p.Status.ContainerStatuses[0].LastTerminationState.Terminated
	require.NotNil(t, last)
	assert.Equal(t, int32(3), last.ExitCode)
	assert.False(t, ready(p))

	// What the kubelet cannot run fails with a reason, not silently.
	sh("secret-volume", "exec sleep 600", func(p *corev1.Pod) {
		p.Spec.Volumes = []corev1.Volume{{Name: "s", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "late"}}}}
	})
	p = waitPod("secret-volume", "refused", func(p *corev1.Pod) bool { w := waiting(p); return w != nil && w.Reason == "CreateContainerError" })
	assert.Contains(t, waiting(p).Message, "emptyDir volumes only")
	sh("no-image", "true", func(p *corev1.Pod) { p.Spec.Containers[0].Image = "box.local/unknown:1" })
	p = waitPod("no-image", "image not found", func(p *corev1.Pod) bool { w := waiting(p); return w != nil && w.Reason == "ErrImagePull" })
	assert.Contains(t, waiting(p).Message, "not in the box's image map")

	// Deletion: SIGTERM ends the shell's sleep at once, and the pod leaves
	// the API once its processes are gone.
	for _, name := range []string{"env", "crash", "secret-volume", "no-image"} {
		require.NoError(t, kube.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}))
	}
	require.True(t, waitfor.Poll(ctx, 2*time.Minute, 100*time.Millisecond, func() bool {
		list, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == 0
	}), "pods left after deletion")
	assert.Empty(t, b.Kubelet.Pods())
	_, err = kube.CoreV1().Pods(ns).Get(ctx, "env", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err))
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
