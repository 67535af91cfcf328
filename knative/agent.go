package knative

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// EnsureAgent creates or updates the agent's Secret and Service. The
// Service's template changes only with the generation, so calling it again
// (at every lapd start) writes nothing.
func (b *Backend) EnsureAgent(ctx context.Context, agent sandboxes.AgentSpec) error {
	if err := b.checkAgent(agent); err != nil {
		return fmt.Errorf("ensure agent %s: %w", agent.Name, err)
	}
	if err := b.ensureSecret(ctx, agent); err != nil {
		return fmt.Errorf("ensure agent %s: %w", agent.Name, err)
	}
	unlock, err := b.locks.lock(ctx, agent.Name)
	if err != nil {
		return err
	}
	defer unlock()

	// Look before creating: at every lapd start this finds the Service,
	// and a refused create would still be a write.
	svcs := b.serving.ServingV1().Services(b.p.Namespace)
	if _, err := svcs.Get(ctx, agent.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		want := resources.MakeService(agent, b.p)
		svc, err := svcs.Create(ctx, want, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create service %s: %w", agent.Name, err)
		}
		b.log.Info("created agent service", "agent", agent.Name, "revision", want.Spec.Template.Name)
		return b.waitLatestCreated(ctx, svc, want.Spec.Template.Name)
	} else if err != nil {
		return fmt.Errorf("get service %s: %w", agent.Name, err)
	}
	base := resources.BaseRevisionName(agent.Name, agent.Generation)
	templateChanged := false
	svc, err := b.updateService(ctx, agent.Name, func(svc *servingv1.Service) (bool, error) {
		if err := owned(svc, agent.ID); err != nil {
			return false, err
		}
		before := svc.DeepCopy()
		resources.ApplyAgentMeta(svc, agent, b.p)
		if resources.BaseRevisionOf(svc.Spec.Traffic) != base {
			svc.Spec.Template = resources.MakeBaseTemplate(agent, b.p)
			svc.Spec.Traffic = resources.WithBase(svc.Spec.Traffic, base)
			templateChanged = true
		}
		return !equality.Semantic.DeepEqual(before, svc), nil
	})
	if err != nil {
		return fmt.Errorf("update service %s: %w", agent.Name, err)
	}
	if templateChanged {
		b.log.Info("new agent generation", "agent", agent.Name, "revision", base)
		return b.waitLatestCreated(ctx, svc, base)
	}
	return nil
}

// checkAgent refuses, before any write, an agent this cluster cannot run:
// no id, a name Knative cannot take, or a harness without a usable image.
func (b *Backend) checkAgent(agent sandboxes.AgentSpec) error {
	if agent.ID == "" {
		return errors.New("agent has no id")
	}
	if err := resources.ValidateAgentName(agent.Name); err != nil {
		return err
	}
	_, err := b.image(resources.HarnessID(agent))
	return err
}

// DeleteAgent deletes the agent's Service (Kubernetes' garbage collector
// removes its Configuration, Route and every revision, so every sandbox),
// its Secret and its sandboxes' Secrets.
func (b *Backend) DeleteAgent(ctx context.Context, agent sandboxes.AgentSpec) error {
	unlock, err := b.locks.lock(ctx, agent.Name)
	if err != nil {
		return err
	}
	defer unlock()
	svcs := b.serving.ServingV1().Services(b.p.Namespace)
	svc, err := svcs.Get(ctx, agent.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("delete agent %s: %w", agent.Name, err)
	default:
		if err := owned(svc, agent.ID); err != nil {
			return fmt.Errorf("delete agent %s: %w", agent.Name, err)
		}
		background := metav1.DeletePropagationBackground
		err := svcs.Delete(ctx, agent.Name, metav1.DeleteOptions{
			Preconditions:     &metav1.Preconditions{UID: &svc.UID},
			PropagationPolicy: &background,
		})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete service %s: %w", agent.Name, err)
		}
	}
	if err := b.deleteSecret(ctx, resources.SecretName(agent.Name)); err != nil {
		return err
	}
	// By selector, not by the names in the route: a sandbox may be
	// suspended, or its provision may have failed half-way.
	if err := b.deleteSecrets(ctx, sandboxSecretsOf(agent.ID)); err != nil {
		return fmt.Errorf("delete sandbox secrets of agent %s: %w", agent.Name, err)
	}
	return nil
}
