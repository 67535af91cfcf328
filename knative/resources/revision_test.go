package resources

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/sandboxes"
)

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
				PodSpec:                     wantPodSpec(env, envFrom),
				ContainerConcurrency:        ptr[int64](0),
				TimeoutSeconds:              ptr[int64](3600),
				ResponseStartTimeoutSeconds: ptr[int64](3600),
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

// TestBaseTemplateFrom: pointing the template back at a base revision
// keeps lap's and the autoscaler's metadata and drops Knative's own.
func TestBaseTemplateFrom(t *testing.T) {
	t.Parallel()
	base := MakeBaseTemplate(testAgent(), testParams())
	rev := &servingv1.Revision{
		ObjectMeta: metav1.ObjectMeta{
			Name: "reviewer-g3",
			Labels: map[string]string{
				"app.kubernetes.io/managed-by":         "lap",
				"lap.dev/agent-id":                     testAgentID,
				"lap.dev/role":                         "base",
				"lap.dev/generation":                   "3",
				"serving.knative.dev/configuration":    "reviewer",
				"serving.knative.dev/service":          "reviewer",
				"serving.knative.dev/routingState":     "active",
				"serving.knative.dev/configurationUID": "cfg-uid",
			},
			Annotations: map[string]string{
				"autoscaling.knative.dev/min-scale":     "0",
				"autoscaling.knative.dev/max-scale":     "1",
				"autoscaling.knative.dev/initial-scale": "0",
				"serving.knative.dev/creator":           "system:serviceaccount:lap-system:lapd",
			},
		},
		Spec: base.Spec,
	}
	tests := []struct {
		name string
		rev  *servingv1.Revision
		want servingv1.RevisionTemplateSpec
	}{
		{"base revision as Knative made it", rev, base},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, BaseTemplateFrom(tt.rev)); diff != "" {
				t.Errorf("BaseTemplateFrom (-want +got):\n%s", diff)
			}
		})
	}
}
