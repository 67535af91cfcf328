package knative

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/sandboxes"
)

// Fixtures shared by the builder and validation tests.
const (
	testSandboxID = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
	testAgentID   = "0193a1b2-0000-7000-8000-00000000a9e7"
)

func testAgent() sandboxes.AgentSpec {
	return sandboxes.AgentSpec{
		ID:         testAgentID,
		Name:       "reviewer",
		HarnessID:  "lap",
		Generation: 3,
		Env: map[string]string{
			"REPO_URL":         "https://git.example/acme/app.git",
			"BRANCH":           "main",
			"AGENT_PROMPT":     "You review pull requests.",
			"LAP_MODEL":        "mock/tools",
			"LITELLM_API_BASE": "http://lapd.lap-system.svc.cluster.local/llm",
		},
		Secrets: map[string]string{"GITHUB_TOKEN": "ghp_x"},
	}
}

func testSpec(id, role string) sandboxes.Spec {
	return sandboxes.Spec{
		ID:    id,
		Role:  role,
		Agent: testAgent(),
		Env: map[string]string{
			"HARNESS_AUTH_TOKEN": "tok-" + id,
			"LITELLM_API_KEY":    "lapsb_" + id,
			"PORT":               "4096", // Knative sets PORT itself
		},
	}
}

func testParams() Params {
	ws := resource.MustParse("10Gi")
	return Params{
		Namespace: "lap-agents",
		Images:    map[string]string{"lap": "kind.local/lap-harness:dev", "opencode": "lap.dev/harness-opencode:latest"},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("512Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("2Gi")},
		},
		WorkspaceSize:  &ws,
		TimeoutSeconds: 3600,
		ClusterLocal:   true,
	}
}

// wantPodSpec is the pod every lap revision runs, with the given env.
func wantPodSpec(env []corev1.EnvVar, envFrom []corev1.EnvFromSource) corev1.PodSpec {
	p := testParams()
	tmp := resource.MustParse("1Gi")
	return corev1.PodSpec{
		Containers: []corev1.Container{{
			Name:            "harness",
			Image:           "kind.local/lap-harness:dev",
			ImagePullPolicy: corev1.PullIfNotPresent,
			Ports:           []corev1.ContainerPort{{Name: "http1", ContainerPort: 8080}},
			Env:             env,
			EnvFrom:         envFrom,
			Resources:       p.Resources,
			ReadinessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/"}}},
			VolumeMounts: []corev1.VolumeMount{
				{Name: "workspace", MountPath: "/workspace"},
				{Name: "tmp", MountPath: "/tmp"},
			},
			SecurityContext: &corev1.SecurityContext{
				RunAsNonRoot:             ptr(true),
				RunAsUser:                ptr[int64](65532),
				RunAsGroup:               ptr[int64](65532),
				ReadOnlyRootFilesystem:   ptr(true),
				AllowPrivilegeEscalation: ptr(false),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		}},
		Volumes: []corev1.Volume{
			{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: p.WorkspaceSize}}},
			{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &tmp}}},
		},
		AutomountServiceAccountToken: ptr(false),
		EnableServiceLinks:           ptr(false),
	}
}

func agentEnv() []corev1.EnvVar {
	return []corev1.EnvVar{
		{Name: "AGENT_PROMPT", Value: "You review pull requests."},
		{Name: "BRANCH", Value: "main"},
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id, short string
	}{
		// The tag is made of the last 8 hex digits (ids were once UUIDv7s,
		// whose first 8 are the same for a minute's ids).
		{"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "2e3f4a5b"},
		{"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c", "2e3f4a5c"},
		{"0193A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B", "2e3f4a5b"},
		{"not-a-uuid", "2184a32a"},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			t.Parallel()
			if got := ShortID(tt.id); got != tt.short {
				t.Errorf("ShortID(%q) = %q, want %q", tt.id, got, tt.short)
			}
			if got, want := SandboxTag(tt.id), "s-"+tt.short; got != want {
				t.Errorf("SandboxTag(%q) = %q, want %q", tt.id, got, want)
			}
			if got, want := SandboxRevisionName("reviewer", tt.id), "reviewer-s-"+tt.short; got != want {
				t.Errorf("SandboxRevisionName = %q, want %q", got, want)
			}
		})
	}
	if got := BaseRevisionName("reviewer", 12); got != "reviewer-g12" {
		t.Errorf("BaseRevisionName = %q, want reviewer-g12", got)
	}
}

func TestValidateAgentName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"reviewer", true},
		{"a", true},
		{"my-agent-2", true},
		{"0123456789012345678901234567890123456789", false}, // leading digit
		{"abcdefghij-abcdefghij-abcdefghij-abcdefg", true},  // 40 characters
		{"abcdefghij-abcdefghij-abcdefghij-abcdefghij-abcdefghij-abc", false},
		{"Reviewer", false},
		{"", false},
	}
	for _, tt := range tests {
		if err := ValidateAgentName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidateAgentName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestMakeService(t *testing.T) {
	t.Parallel()
	baseEnv := append(agentEnv(),
		corev1.EnvVar{Name: "HARNESS_AUTH_TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "reviewer-secrets"},
			Key:                  "lap-base-harness-token",
		}}},
		corev1.EnvVar{Name: "HOME", Value: "/tmp"},
		corev1.EnvVar{Name: "LAP_MODEL", Value: "mock/tools"},
		corev1.EnvVar{Name: "LITELLM_API_BASE", Value: "http://lapd.lap-system.svc.cluster.local/llm"},
		corev1.EnvVar{Name: "REPO_URL", Value: "https://git.example/acme/app.git"},
		corev1.EnvVar{Name: "WORKSPACE", Value: "/workspace"},
	)
	want := func(labels map[string]string) *servingv1.Service {
		return &servingv1.Service{
			TypeMeta: metav1.TypeMeta{APIVersion: "serving.knative.dev/v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{
				Name:        "reviewer",
				Namespace:   "lap-agents",
				Labels:      labels,
				Annotations: map[string]string{"lap.dev/harness": "lap", "lap.dev/generation": "3"},
			},
			Spec: servingv1.ServiceSpec{
				ConfigurationSpec: servingv1.ConfigurationSpec{Template: servingv1.RevisionTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{
						Name: "reviewer-g3",
						Labels: map[string]string{
							"app.kubernetes.io/managed-by": "lap",
							"lap.dev/agent-id":             testAgentID,
							"lap.dev/role":                 "base",
							"lap.dev/generation":           "3",
						},
						Annotations: map[string]string{
							"autoscaling.knative.dev/min-scale":     "0",
							"autoscaling.knative.dev/max-scale":     "1",
							"autoscaling.knative.dev/initial-scale": "0",
						},
					},
					Spec: servingv1.RevisionSpec{
						PodSpec:              wantPodSpec(baseEnv, nil),
						ContainerConcurrency: ptr[int64](0),
						TimeoutSeconds:       ptr[int64](3600),
					},
				}},
				RouteSpec: servingv1.RouteSpec{Traffic: []servingv1.TrafficTarget{
					{RevisionName: "reviewer-g3", Percent: ptr[int64](100), LatestRevision: ptr(false)},
				}},
			},
		}
	}
	tests := []struct {
		name         string
		clusterLocal bool
		want         *servingv1.Service
	}{
		{"cluster-local", true, want(map[string]string{
			"app.kubernetes.io/managed-by":      "lap",
			"lap.dev/agent-id":                  testAgentID,
			"networking.knative.dev/visibility": "cluster-local",
		})},
		{"external", false, want(map[string]string{
			"app.kubernetes.io/managed-by": "lap",
			"lap.dev/agent-id":             testAgentID,
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := testParams()
			p.ClusterLocal = tt.clusterLocal
			if diff := cmp.Diff(tt.want, MakeService(testAgent(), p)); diff != "" {
				t.Errorf("MakeService (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMakeSandboxTemplate(t *testing.T) {
	t.Parallel()
	fromSecret := func(key string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "reviewer-s-2e3f4a5b"},
			Key:                  key,
		}}
	}
	env := append(agentEnv(),
		corev1.EnvVar{Name: "HARNESS_AUTH_TOKEN", ValueFrom: fromSecret("HARNESS_AUTH_TOKEN")},
		corev1.EnvVar{Name: "HOME", Value: "/tmp"},
		corev1.EnvVar{Name: "LAP_MODEL", Value: "mock/tools"},
		corev1.EnvVar{Name: "LITELLM_API_BASE", Value: "http://lapd.lap-system.svc.cluster.local/llm"},
		corev1.EnvVar{Name: "LITELLM_API_KEY", ValueFrom: fromSecret("LITELLM_API_KEY")},
		corev1.EnvVar{Name: "REPO_URL", Value: "https://git.example/acme/app.git"},
		corev1.EnvVar{Name: "WORKSPACE", Value: "/workspace"},
	)
	envFrom := []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "reviewer-secrets"},
	}}}
	tests := []struct {
		role string
		want servingv1.RevisionTemplateSpec
	}{{
		role: sandboxes.RoleWarm,
		want: servingv1.RevisionTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{
				Name: "reviewer-s-2e3f4a5b",
				Labels: map[string]string{
					"app.kubernetes.io/managed-by": "lap",
					"lap.dev/agent-id":             testAgentID,
					"lap.dev/sandbox-id":           testSandboxID,
					"lap.dev/role":                 "warm",
					"lap.dev/generation":           "3",
				},
				Annotations: map[string]string{
					"autoscaling.knative.dev/min-scale": "1",
					"autoscaling.knative.dev/max-scale": "1",
				},
			},
			Spec: servingv1.RevisionSpec{
				PodSpec:              wantPodSpec(env, envFrom),
				ContainerConcurrency: ptr[int64](0),
				TimeoutSeconds:       ptr[int64](3600),
			},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.role, func(t *testing.T) {
			t.Parallel()
			got := MakeSandboxTemplate(testSpec(testSandboxID, tt.role), testParams())
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("MakeSandboxTemplate (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMakeSecret(t *testing.T) {
	t.Parallel()
	want := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      "reviewer-secrets",
			Namespace: "lap-agents",
			Labels:    map[string]string{"app.kubernetes.io/managed-by": "lap", "lap.dev/agent-id": testAgentID},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{"GITHUB_TOKEN": []byte("ghp_x"), "lap-base-harness-token": []byte("base-tok")},
	}
	if diff := cmp.Diff(want, MakeSecret(testAgent(), testParams(), "base-tok")); diff != "" {
		t.Errorf("MakeSecret (-want +got):\n%s", diff)
	}
}

func TestMakeSandboxSecret(t *testing.T) {
	t.Parallel()
	owner := &metav1.OwnerReference{APIVersion: "serving.knative.dev/v1", Kind: "Service", Name: "reviewer", UID: "svc-uid"}
	want := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      "reviewer-s-2e3f4a5b",
			Namespace: "lap-agents",
			Labels: map[string]string{
				"app.kubernetes.io/managed-by": "lap",
				"lap.dev/agent-id":             testAgentID,
				"lap.dev/sandbox-id":           testSandboxID,
			},
			OwnerReferences: []metav1.OwnerReference{*owner},
		},
		Type: corev1.SecretTypeOpaque,
		// PORT is Knative's, so neither in the template nor here.
		Data: map[string][]byte{
			"HARNESS_AUTH_TOKEN": []byte("tok-" + testSandboxID),
			"LITELLM_API_KEY":    []byte("lapsb_" + testSandboxID),
		},
	}
	if diff := cmp.Diff(want, MakeSandboxSecret(testSpec(testSandboxID, sandboxes.RoleWarm), testParams(), owner)); diff != "" {
		t.Errorf("MakeSandboxSecret (-want +got):\n%s", diff)
	}
	if got := MakeSandboxSecret(testSpec(testSandboxID, sandboxes.RoleWarm), testParams(), nil); got.OwnerReferences != nil {
		t.Errorf("no owner known: OwnerReferences = %v, want none", got.OwnerReferences)
	}
}

func TestTraffic(t *testing.T) {
	t.Parallel()
	base := BaseTarget("reviewer-g3")
	a := SandboxTarget("s-aaaaaaaa", "reviewer-s-aaaaaaaa")
	b := SandboxTarget("s-bbbbbbbb", "reviewer-s-bbbbbbbb")
	other := servingv1.TrafficTarget{Tag: "canary", RevisionName: "reviewer-g2", Percent: ptr[int64](0)}
	tests := []struct {
		name string
		got  []servingv1.TrafficTarget
		want []servingv1.TrafficTarget
	}{
		{"add", WithTarget([]servingv1.TrafficTarget{base}, a), []servingv1.TrafficTarget{base, a}},
		{"add second", WithTarget([]servingv1.TrafficTarget{base, a}, b), []servingv1.TrafficTarget{base, a, b}},
		{"re-add replaces", WithTarget([]servingv1.TrafficTarget{base, a, b}, a), []servingv1.TrafficTarget{base, b, a}},
		{"remove", first(WithoutTag([]servingv1.TrafficTarget{base, a, b}, "s-aaaaaaaa")), []servingv1.TrafficTarget{base, b}},
		{"remove absent", first(WithoutTag([]servingv1.TrafficTarget{base, b}, "s-aaaaaaaa")), []servingv1.TrafficTarget{base, b}},
		{"new base keeps tags", WithBase([]servingv1.TrafficTarget{base, a, other}, "reviewer-g4"),
			[]servingv1.TrafficTarget{BaseTarget("reviewer-g4"), a, other}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, tt.got); diff != "" {
				t.Errorf("traffic (-want +got):\n%s", diff)
			}
		})
	}
	if _, found := WithoutTag([]servingv1.TrafficTarget{base, a}, "s-aaaaaaaa"); !found {
		t.Error("WithoutTag(present) found = false")
	}
	if n := SandboxTags([]servingv1.TrafficTarget{base, a, b, other}); n != 2 {
		t.Errorf("SandboxTags = %d, want 2 (the canary tag is not a sandbox)", n)
	}
}

func first[A, B any](a A, _ B) A { return a }
