package knative

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// ensureSecret writes the agent's Secret when it is missing or its
// env_vars changed, keeping the base token it was created with.
func (b *Backend) ensureSecret(ctx context.Context, agent sandboxes.AgentSpec) error {
	secrets := b.kube.CoreV1().Secrets(b.p.Namespace)
	name := resources.SecretName(agent.Name)
	cur, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		token, err := randomToken()
		if err != nil {
			return err
		}
		if _, err := secrets.Create(ctx, resources.MakeSecret(agent, b.p, token), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create secret %s: %w", name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get secret %s: %w", name, err)
	}
	if id := cur.Labels[resources.LabelAgentID]; id != agent.ID {
		return fmt.Errorf("secret %s belongs to agent %q, not %s", cur.Name, id, agent.ID)
	}
	token := string(cur.Data[resources.BaseTokenKey])
	if token == "" {
		if token, err = randomToken(); err != nil {
			return err
		}
	}
	want := resources.MakeSecret(agent, b.p, token)
	if equality.Semantic.DeepEqual(cur.Data, want.Data) && cur.Labels[resources.LabelManagedBy] == resources.ManagedBy {
		return nil
	}
	cur.Data = want.Data
	maps.Copy(cur.Labels, want.Labels)
	if _, err := secrets.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update secret %s: %w", cur.Name, err)
	}
	return nil
}

// createSandboxSecret creates a sandbox's Secret, or takes over the one a
// failed provision of the same sandbox left behind.
func (b *Backend) createSandboxSecret(ctx context.Context, want *corev1.Secret) error {
	secrets := b.kube.CoreV1().Secrets(b.p.Namespace)
	_, err := secrets.Create(ctx, want, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		if err != nil {
			return fmt.Errorf("create secret %s: %w", want.Name, err)
		}
		return nil
	}
	cur, err := secrets.Get(ctx, want.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get secret %s: %w", want.Name, err)
	}
	if id := cur.Labels[resources.LabelSandboxID]; id != want.Labels[resources.LabelSandboxID] {
		return fmt.Errorf("secret %s belongs to sandbox %q, not %s", cur.Name, id, want.Labels[resources.LabelSandboxID])
	}
	cur.Labels, cur.Data, cur.OwnerReferences = want.Labels, want.Data, want.OwnerReferences
	if _, err := secrets.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update secret %s: %w", cur.Name, err)
	}
	return nil
}

// deleteSecret deletes the Secret called name; one already gone (or a
// sandbox's never made, by a lapd before sandbox Secrets) is no error.
func (b *Backend) deleteSecret(ctx context.Context, name string) error {
	err := b.kube.CoreV1().Secrets(b.p.Namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete secret %s: %w", name, err)
	}
	return nil
}

// deleteSecrets deletes the Secrets selector selects: by label, so lapd
// needs no right to list Secrets.
func (b *Backend) deleteSecrets(ctx context.Context, selector string) error {
	return b.kube.CoreV1().Secrets(b.p.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: selector})
}

// sandboxSecretsOf selects the sandbox Secrets of an agent, not its own.
func sandboxSecretsOf(agentID string) string {
	return labels.SelectorFromSet(labels.Set{resources.LabelManagedBy: resources.ManagedBy, resources.LabelAgentID: agentID}).String() + "," + resources.LabelSandboxID
}

// sandboxSecretOf selects the Secret of one sandbox; false for an id no
// label can hold, which never had one.
func sandboxSecretOf(sandboxID string) (string, bool) {
	sel, err := labels.ValidatedSelectorFromSet(labels.Set{resources.LabelManagedBy: resources.ManagedBy, resources.LabelSandboxID: sandboxID})
	if err != nil {
		return "", false
	}
	return sel.String(), true
}

// harnessToken reads the sandbox's HARNESS_AUTH_TOKEN where its pod does:
// from the Secret its revision names, or from the revision itself if an
// older lapd, before sandbox Secrets, provisioned it. Resume needs it for
// its probe, also after a lapd restart.
func (b *Backend) harnessToken(ctx context.Context, rev *servingv1.Revision) (string, error) {
	for _, c := range rev.Spec.Containers {
		for _, e := range c.Env {
			if e.Name != "HARNESS_AUTH_TOKEN" {
				continue
			}
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				return e.Value, nil
			}
			ref := e.ValueFrom.SecretKeyRef
			s, err := b.kube.CoreV1().Secrets(b.p.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return "", fmt.Errorf("secret %s of revision %s was deleted: %w", ref.Name, rev.Name, sandboxes.ErrGone)
			}
			if err != nil {
				return "", fmt.Errorf("get secret %s: %w", ref.Name, err)
			}
			return string(s.Data[ref.Key]), nil
		}
	}
	return "", nil
}

// randomToken is a base revision's harness token: 24 random bytes in hex.
func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random token: %w", err)
	}
	return hex.EncodeToString(b), nil
}
