package resources

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"lap.dev/lap/sandboxes"
)

// MakeSecret builds the agent's Secret: its env_vars, which sandbox pods
// read with envFrom, and the base revision's harness token.
func MakeSecret(agent sandboxes.AgentSpec, p Params, baseToken string) *corev1.Secret {
	data := make(map[string][]byte, len(agent.Secrets)+1)
	for k, v := range agent.Secrets {
		data[k] = []byte(v)
	}
	data[BaseTokenKey] = []byte(baseToken)
	return &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      SecretName(agent.Name),
			Namespace: p.Namespace,
			Labels:    agentLabels(agent),
		},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
}

// MakeSandboxSecret builds the Secret of a sandbox's own environment
// (spec.Env: its harness and gateway tokens), which its revision reads key
// by key, so no token is in a Revision. owner, when known, lets
// Kubernetes' garbage collector delete it with the agent's Service.
func MakeSandboxSecret(spec sandboxes.Spec, p Params, owner *metav1.OwnerReference) *corev1.Secret {
	data := make(map[string][]byte, len(spec.Env))
	for k, v := range spec.Env {
		if !slices.Contains(reservedEnv, k) {
			data[k] = []byte(v)
		}
	}
	labels := agentLabels(spec.Agent)
	labels[LabelSandboxID] = spec.ID
	s := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      SandboxSecretName(spec.Agent.Name, spec.ID),
			Namespace: p.Namespace,
			Labels:    labels,
		},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
	if owner != nil {
		s.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return s
}
