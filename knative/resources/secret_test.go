package resources

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"lap.dev/lap/sandboxes"
)

func TestMakeSecret(t *testing.T) {
	t.Parallel()
	want := func(data map[string][]byte) *corev1.Secret {
		return &corev1.Secret{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{
				Name:      "reviewer-secrets",
				Namespace: "lap-agents",
				Labels:    map[string]string{"app.kubernetes.io/managed-by": "lap", "lap.dev/agent-id": testAgentID},
			},
			Type: corev1.SecretTypeOpaque,
			Data: data,
		}
	}
	noSecrets := testAgent()
	noSecrets.Secrets = nil
	tests := []struct {
		name  string
		agent sandboxes.AgentSpec
		want  *corev1.Secret
	}{
		{"env_vars and base token", testAgent(), want(map[string][]byte{"GITHUB_TOKEN": []byte("ghp_x"), "lap-base-harness-token": []byte("base-tok")})},
		{"base token alone", noSecrets, want(map[string][]byte{"lap-base-harness-token": []byte("base-tok")})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, MakeSecret(tt.agent, testParams(), "base-tok")); diff != "" {
				t.Errorf("MakeSecret (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMakeSandboxSecret(t *testing.T) {
	t.Parallel()
	owner := &metav1.OwnerReference{APIVersion: "serving.knative.dev/v1", Kind: "Service", Name: "reviewer", UID: "svc-uid"}
	want := func(owners []metav1.OwnerReference) *corev1.Secret {
		return &corev1.Secret{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{
				Name:      "reviewer-s-2e3f4a5b",
				Namespace: "lap-agents",
				Labels: map[string]string{
					"app.kubernetes.io/managed-by": "lap",
					"lap.dev/agent-id":             testAgentID,
					"lap.dev/sandbox-id":           testSandboxID,
				},
				OwnerReferences: owners,
			},
			Type: corev1.SecretTypeOpaque,
			// PORT is Knative's, so neither in the template nor here.
			Data: map[string][]byte{
				"HARNESS_AUTH_TOKEN": []byte("tok-" + testSandboxID),
				"LITELLM_API_KEY":    []byte("lapsb_" + testSandboxID),
			},
		}
	}
	tests := []struct {
		name  string
		owner *metav1.OwnerReference
		want  *corev1.Secret
	}{
		{"owned by the agent's Service", owner, want([]metav1.OwnerReference{*owner})},
		// No Service yet: a provision that will fail with ErrNotFound.
		{"no owner known", nil, want(nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := MakeSandboxSecret(testSpec(testSandboxID, sandboxes.RoleWarm), testParams(), tt.owner)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("MakeSandboxSecret (-want +got):\n%s", diff)
			}
		})
	}
}
