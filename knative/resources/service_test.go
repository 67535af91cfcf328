package resources

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

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
						PodSpec:                     wantPodSpec(baseEnv, nil),
						ContainerConcurrency:        ptr[int64](0),
						TimeoutSeconds:              ptr[int64](3600),
						ResponseStartTimeoutSeconds: ptr[int64](3600),
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
