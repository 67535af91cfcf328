package kubelet

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestExpand(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"A": "1", "B": "two"}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"$(A)", "1"},
		{"x$(A)y$(B)z", "x1ytwoz"},
		{"$(MISSING)", "$(MISSING)"},
		{"$$(A)", "$(A)"},
		{"cost $5", "cost $5"},
		{"trailing $", "trailing $"},
		{"$(unclosed", "$(unclosed"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, expand(tt.in, lookup), "expand(%q)", tt.in)
	}
}

func TestTailLines(t *testing.T) {
	t.Parallel()
	log := []byte("one\ntwo\nthree\n")
	tests := []struct {
		n    int
		want string
	}{
		{0, ""},
		{1, "three\n"},
		{2, "two\nthree\n"},
		{3, "one\ntwo\nthree\n"},
		{10, "one\ntwo\nthree\n"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, string(tailLines(log, tt.n)), "tailLines(%d)", tt.n)
	}
	assert.Equal(t, "b", string(tailLines([]byte("a\nb"), 1)), "a last line without newline")
}

func testWorker(t *testing.T, images map[string]string) *podWorker {
	t.Helper()
	k := &Kubelet{cfg: Config{Images: images, Dir: t.TempDir()}, name: "box", hostIP: "198.18.0.1", log: slog.New(slog.DiscardHandler)}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "p", Namespace: "ns", UID: "0123456789abcdef",
			Labels:      map[string]string{"app": "demo"},
			Annotations: map[string]string{"note": "hi"},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "sa",
			Containers: []corev1.Container{{
				Name:  "c",
				Image: "box.local/thing:v1",
				VolumeMounts: []corev1.VolumeMount{
					{Name: "ws", MountPath: "/workspace"},
					{Name: "deep", MountPath: "/workspace/cache/"},
					{Name: "sub", MountPath: "/data", SubPath: "part"},
				},
				Resources: corev1.ResourceRequirements{
					Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")},
				},
			}},
		},
	}
	return newPodWorker(k, pod)
}

func TestMapPath(t *testing.T) {
	t.Parallel()
	w := testWorker(t, nil)
	c := w.containers[0]
	vol := func(parts ...string) string { return filepath.Join(append([]string{w.dir, "volumes"}, parts...)...) }
	tests := []struct{ in, want string }{
		{"/workspace", vol("ws")},
		{"/workspace/repo", vol("ws") + "/repo"},
		{"/workspace/cache/x", vol("deep") + "/x"},
		{"/workspaces", "/workspaces"},
		{"/data/f", vol("sub", "part") + "/f"},
		{"relative/workspace", "relative/workspace"},
		{"http://example/workspace", "http://example/workspace"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, c.mapPath(tt.in), "mapPath(%q)", tt.in)
	}
}

func TestFieldRef(t *testing.T) {
	t.Parallel()
	w := testWorker(t, nil)
	tests := []struct{ path, want string }{
		{"metadata.name", "p"},
		{"metadata.namespace", "ns"},
		{"metadata.uid", "0123456789abcdef"},
		{"metadata.labels['app']", "demo"},
		{"metadata.annotations['note']", "hi"},
		{"metadata.labels['absent']", ""},
		{"spec.nodeName", "box"},
		{"spec.serviceAccountName", "sa"},
		{"status.hostIP", "198.18.0.1"},
		{"status.podIP", ""}, // no namespace yet
	}
	for _, tt := range tests {
		got, err := w.fieldRef(tt.path)
		require.NoError(t, err, tt.path)
		assert.Equal(t, tt.want, got, tt.path)
	}
	_, err := w.fieldRef("spec.containers")
	assert.ErrorContains(t, err, "not supported")
}

func TestResourceFieldRef(t *testing.T) {
	t.Parallel()
	w := testWorker(t, nil)
	tests := []struct {
		resource, divisor, want string
	}{
		{"limits.cpu", "", "2"},      // 1.5 cores rounds up
		{"limits.cpu", "1m", "1500"}, // millicores
		{"requests.cpu", "1m", "250"},
		{"limits.memory", "1Mi", "64"},
		{"limits.memory", "", "67108864"},
	}
	for _, tt := range tests {
		sel := &corev1.ResourceFieldSelector{Resource: tt.resource}
		if tt.divisor != "" {
			sel.Divisor = resource.MustParse(tt.divisor)
		}
		got, err := w.resourceFieldRef("c", sel)
		require.NoError(t, err, tt.resource)
		assert.Equal(t, tt.want, got, "%s / %s", tt.resource, tt.divisor)
	}
}

func TestResolveImage(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "thing")
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755))
	w := testWorker(t, map[string]string{"box.local/thing": bin, "box.local/gone": "/nonexistent/gone"})
	tests := []struct {
		image, want, err string
	}{
		{"box.local/thing:v1", bin, ""},
		{"box.local/thing", bin, ""},
		{"box.local/thing@sha256:0123", bin, ""},
		{"box.local/other:v1", "", "not in the box's image map"},
		{"box.local/gone:v1", "", "/nonexistent/gone"},
	}
	for _, tt := range tests {
		c := &container{w: w, spec: corev1.Container{Image: tt.image}}
		got, err := c.resolveImage()
		if tt.err != "" {
			assert.ErrorContains(t, err, tt.err, tt.image)
			continue
		}
		require.NoError(t, err, tt.image)
		assert.Equal(t, tt.want, got)
	}
}

func TestSupported(t *testing.T) {
	t.Parallel()
	ok := corev1.PodSpec{
		Containers: []corev1.Container{{
			Name:           "c",
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{}}},
			Lifecycle:      &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{}}},
		}},
		Volumes: []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
	}
	tests := []struct {
		name string
		edit func(*corev1.PodSpec)
		err  string
	}{
		{"what lap and Knative use", func(*corev1.PodSpec) {}, ""},
		{"init container", func(s *corev1.PodSpec) { s.InitContainers = []corev1.Container{{Name: "i"}} }, "init containers"},
		{"secret volume", func(s *corev1.PodSpec) {
			s.Volumes = append(s.Volumes, corev1.Volume{Name: "s", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{}}})
		}, "emptyDir volumes only"},
		{"command", func(s *corev1.PodSpec) { s.Containers[0].Command = []string{"sh"} }, "cannot override its command"},
		{"exec probe", func(s *corev1.PodSpec) {
			s.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{}}}
		}, "httpGet and tcpSocket probes only"},
		{"postStart", func(s *corev1.PodSpec) {
			s.Containers[0].Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{}}}
		}, "no postStart"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := *ok.DeepCopy()
			tt.edit(&spec)
			err := supported(&corev1.Pod{Spec: spec})
			if tt.err == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tt.err)
			}
		})
	}
}

func TestProbeUserAgent(t *testing.T) {
	t.Parallel()
	// Knative's queue-proxy tells a kubelet's probe by this prefix.
	assert.Equal(t, "kube-probe/1.34", probeUserAgent)
}
