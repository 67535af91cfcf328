package knative

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// Provision creates the sandbox's Secret (its tokens), then adds its
// revision and tag to the agent's Service in one update, waits until
// Knative has created the revision (so the next template update of the
// agent cannot skip it), then, without holding the agent, until the
// revision is ready, routed, and its harness answers.
func (b *Backend) Provision(ctx context.Context, spec sandboxes.Spec) (sandboxes.Sandbox, error) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, b.cfg.ReadyTimeout)
	defer cancel()
	fail := func(err error) (sandboxes.Sandbox, error) {
		return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: %w", spec.ID, err)
	}
	if spec.ID == "" {
		return fail(errors.New("no sandbox id"))
	}
	if err := b.checkAgent(spec.Agent); err != nil {
		return fail(err)
	}
	token := spec.Env["HARNESS_AUTH_TOKEN"]
	if token == "" {
		return fail(errors.New("no HARNESS_AUTH_TOKEN: a Knative sandbox is reachable in the cluster and must require one"))
	}
	tmpl := resources.MakeSandboxTemplate(spec, b.p)
	sb := sandboxes.Sandbox{
		ID:         spec.ID,
		AgentID:    spec.Agent.ID,
		Generation: spec.Agent.Generation,
		Data: map[string]string{
			DataNamespace: b.p.Namespace,
			DataService:   spec.Agent.Name,
			DataRevision:  tmpl.Name,
			DataTag:       resources.SandboxTag(spec.ID),
		},
	}
	if _, err := b.serving.ServingV1().Revisions(b.p.Namespace).Get(ctx, tmpl.Name, metav1.GetOptions{}); err == nil {
		return fail(fmt.Errorf("revision %s already exists", tmpl.Name))
	} else if !apierrors.IsNotFound(err) {
		return fail(err)
	}

	owner, err := b.precheck(ctx, spec)
	if err != nil {
		return fail(err)
	}
	// Before the template update: the revision's pod reads it.
	if err := b.createSandboxSecret(ctx, resources.MakeSandboxSecret(spec, b.p, owner)); err != nil {
		return fail(err)
	}
	written, err := b.addSandbox(ctx, spec, tmpl, owner)
	if err != nil {
		b.cleanup(parent, sb, written)
		return fail(b.waitError(parent, err))
	}
	ep, err := b.waitReady(ctx, sb, token)
	if err != nil {
		err = b.waitError(parent, err)
		if errors.Is(err, sandboxes.ErrNotReady) {
			err = fmt.Errorf("%w\n%s", err, b.logTail(parent, sb))
		}
		b.cleanup(parent, sb, true)
		return fail(err)
	}
	sb.Running, sb.Endpoint = true, ep
	b.log.Info("provisioned sandbox", "sandbox", spec.ID, "revision", tmpl.Name, "role", spec.Role)
	return sb, nil
}

// precheck refuses, before any write, a provision the Service already
// shows would fail, and returns the owner reference of the sandbox's
// Secret; nil when there is no Service yet. It reads the apiserver, not
// the informer's cache: a cache that has not yet seen a Suspend would
// refuse a provision for a tag already freed. addSandbox checks again
// under the agent's lock.
func (b *Backend) precheck(ctx context.Context, spec sandboxes.Spec) (*metav1.OwnerReference, error) {
	svc, err := b.serving.ServingV1().Services(b.p.Namespace).Get(ctx, spec.Agent.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := owned(svc, spec.Agent.ID); err != nil {
		return nil, err
	}
	if err := b.checkCapacity(svc, resources.SandboxTag(spec.ID)); err != nil {
		return nil, err
	}
	return &metav1.OwnerReference{
		APIVersion: servingv1.SchemeGroupVersion.String(),
		Kind:       "Service",
		Name:       svc.Name,
		UID:        svc.UID,
	}, nil
}

// addSandbox is Provision's serialised part. written reports whether the
// Service was changed, so a failure must be cleaned up.
func (b *Backend) addSandbox(ctx context.Context, spec sandboxes.Spec, tmpl servingv1.RevisionTemplateSpec, owner *metav1.OwnerReference) (written bool, err error) {
	unlock, err := b.locks.lock(ctx, spec.Agent.Name)
	if err != nil {
		return false, err
	}
	defer unlock()
	tag := resources.SandboxTag(spec.ID)
	svc, err := b.updateService(ctx, spec.Agent.Name, func(svc *servingv1.Service) (bool, error) {
		if err := owned(svc, spec.Agent.ID); err != nil {
			return false, err
		}
		if err := b.checkCapacity(svc, tag); err != nil {
			return false, err
		}
		if owner != nil && owner.UID != svc.UID {
			// Kubernetes' garbage collector would delete the Secret.
			return false, fmt.Errorf("service %s was replaced during the provision", svc.Name)
		}
		svc.Spec.Template = tmpl
		svc.Spec.Traffic = resources.WithTarget(svc.Spec.Traffic, resources.SandboxTarget(tag, tmpl.Name))
		return true, nil
	})
	if apierrors.IsNotFound(err) {
		return false, fmt.Errorf("agent %s has no Knative Service (EnsureAgent first): %w", spec.Agent.Name, sandboxes.ErrNotFound)
	}
	if err != nil {
		return false, err
	}
	return true, b.waitLatestCreated(ctx, svc, tmpl.Name)
}

// checkCapacity refuses a new tag beyond KNATIVE_MAX_SANDBOXES_PER_AGENT;
// a tag already in the route takes no more room.
func (b *Backend) checkCapacity(svc *servingv1.Service, tag string) error {
	if _, ok := resources.FindTag(svc.Spec.Traffic, tag); ok {
		return nil
	}
	if n := resources.SandboxTags(svc.Spec.Traffic); n >= b.cfg.MaxSandboxesPerAgent {
		return fmt.Errorf("agent %s has %d live sandboxes, the most KNATIVE_MAX_SANDBOXES_PER_AGENT allows: %w", svc.Name, n, sandboxes.ErrCapacity)
	}
	return nil
}

// cleanup undoes a failed provision, even when the caller's context has
// ended: the whole sandbox if the Service was written, else its Secret.
// Provision returns its own failure; what the cleanup could not undo is
// logged, and destroyed later by the control plane's record of it.
func (b *Backend) cleanup(parent context.Context, sb sandboxes.Sandbox, written bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), time.Minute)
	defer cancel()
	var err error
	if written {
		err = b.destroy(ctx, sb.Data[DataService], sb.Data[DataRevision], sb.Data[DataTag])
	} else {
		err = b.deleteSecret(ctx, sb.Data[DataRevision])
	}
	if err != nil {
		b.log.Warn("clean up failed sandbox", "sandbox", sb.ID, "err", err)
	}
}

// Suspend takes the sandbox's tag out of the route: the revision is no
// longer routed, so Knative ignores its min-scale and scales it to zero.
// The revision stays for Resume.
func (b *Backend) Suspend(ctx context.Context, sb sandboxes.Sandbox) (sandboxes.Sandbox, error) {
	svcName, _, tag, err := sandboxNames(sb)
	if err != nil {
		return sb, fmt.Errorf("suspend sandbox %s: %w", sb.ID, err)
	}
	if err := b.removeTag(ctx, svcName, tag); err != nil {
		return sb, fmt.Errorf("suspend sandbox %s: %w", sb.ID, err)
	}
	sb.Running = false
	return sb, nil
}

// removeTag takes tag out of the Service's route; a missing Service or tag
// is no error.
func (b *Backend) removeTag(ctx context.Context, svcName, tag string) error {
	unlock, err := b.locks.lock(ctx, svcName)
	if err != nil {
		return err
	}
	defer unlock()
	_, err = b.updateService(ctx, svcName, func(svc *servingv1.Service) (bool, error) {
		var found bool
		svc.Spec.Traffic, found = resources.WithoutTag(svc.Spec.Traffic, tag)
		return found, nil
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// leaveSuspended takes the tag of a sandbox that cannot resume out of the
// route, even when the caller's context has ended, so it neither holds a
// tag of the agent's cap nor keeps the route from settling. It returns
// err, joined with the removal's own failure.
func (b *Backend) leaveSuspended(parent context.Context, svcName, tag string, err error) error {
	if rerr := b.removeTag(context.WithoutCancel(parent), svcName, tag); rerr != nil {
		return errors.Join(err, fmt.Errorf("take tag %s out of the route: %w", tag, rerr))
	}
	return err
}

// Resume puts a suspended sandbox's tag back in the route and waits until
// its harness answers. A sandbox already routed and answering costs no
// write. If Knative's garbage collector removed the revision, or it
// failed, the sandbox is gone (sandboxes.ErrGone).
func (b *Backend) Resume(ctx context.Context, sb sandboxes.Sandbox) (sandboxes.Sandbox, error) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, b.cfg.ReadyTimeout)
	defer cancel()
	fail := func(err error) (sandboxes.Sandbox, error) {
		return sb, fmt.Errorf("resume sandbox %s: %w", sb.ID, err)
	}
	svcName, revName, tag, err := sandboxNames(sb)
	if err != nil {
		return fail(err)
	}
	rev, err := b.serving.ServingV1().Revisions(b.p.Namespace).Get(ctx, revName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fail(b.leaveSuspended(parent, svcName, tag, fmt.Errorf("revision %s was deleted: %w", revName, sandboxes.ErrGone)))
	}
	if err != nil {
		return fail(err)
	}
	if rev.DeletionTimestamp != nil {
		return fail(fmt.Errorf("revision %s is being deleted: %w", revName, sandboxes.ErrGone))
	}
	if c := rev.Status.GetCondition(servingv1.RevisionConditionReady); c != nil && c.IsFalse() {
		return fail(b.leaveSuspended(parent, svcName, tag, fmt.Errorf("revision %s failed (%s: %s): %w", revName, c.Reason, c.Message, sandboxes.ErrGone)))
	}
	token, err := b.harnessToken(ctx, rev)
	if err != nil {
		return fail(err)
	}
	added, err := b.addTag(ctx, svcName, tag, revName)
	if apierrors.IsNotFound(err) {
		return fail(fmt.Errorf("agent service %s was deleted: %w", svcName, sandboxes.ErrGone))
	}
	if err != nil {
		return fail(err)
	}
	ep, err := b.waitReady(ctx, sb, token)
	if err != nil {
		err = b.waitError(parent, err)
		if errors.Is(err, sandboxes.ErrNotReady) {
			err = fmt.Errorf("%w\n%s", err, b.logTail(parent, sb))
		}
		if added || errors.Is(err, sandboxes.ErrGone) {
			err = b.leaveSuspended(parent, svcName, tag, err)
		}
		return fail(err)
	}
	sb.Running, sb.Endpoint = true, ep
	return sb, nil
}

// addTag puts a sandbox's tag back in the route, if the agent's cap has
// room; added is false when it was there already (no write).
func (b *Backend) addTag(ctx context.Context, svcName, tag, revName string) (added bool, err error) {
	unlock, err := b.locks.lock(ctx, svcName)
	if err != nil {
		return false, err
	}
	defer unlock()
	_, err = b.updateService(ctx, svcName, func(svc *servingv1.Service) (bool, error) {
		added = false
		if _, ok := resources.FindTag(svc.Spec.Traffic, tag); ok {
			return false, nil
		}
		if err := b.checkCapacity(svc, tag); err != nil {
			return false, err
		}
		svc.Spec.Traffic = resources.WithTarget(svc.Spec.Traffic, resources.SandboxTarget(tag, revName))
		added = true
		return true, nil
	})
	return added, err
}

// Destroy takes the sandbox's tag out of the route and deletes its
// revision. If the Service's template still names that revision, it is
// pointed back at the base revision first: Knative recreates a deleted
// revision its Configuration still asks for.
//
// A record without the backend's data (the control plane's record of a
// sandbox whose provision had not returned) is found by its id: by the
// revision's sandbox-id label, or by the Service whose route or template
// names it. A sandbox found nowhere is already destroyed, but for a Secret
// its provision may have left.
func (b *Backend) Destroy(ctx context.Context, sb sandboxes.Sandbox) error {
	svcName, revName, tag, err := sandboxNames(sb)
	if errors.Is(err, sandboxes.ErrNotFound) {
		var found bool
		svcName, revName, tag, found, err = b.locateSettled(ctx, sb)
		if err != nil {
			return fmt.Errorf("destroy sandbox %s: %w", sb.ID, err)
		}
		if !found {
			// lapd may have stopped between a provision's Secret and
			// its Service update: the Secret is all there is of it.
			if sel, ok := sandboxSecretOf(sb.ID); ok {
				if err := b.deleteSecrets(ctx, sel); err != nil {
					return fmt.Errorf("destroy sandbox %s: delete its secret: %w", sb.ID, err)
				}
			}
			return nil
		}
	} else if err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", sb.ID, err)
	}
	if err := b.destroy(ctx, svcName, revName, tag); err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", sb.ID, err)
	}
	return nil
}

// destroy is Destroy by names: untag, point the template away from the
// revision if it names it, delete the revision and its Secret.
func (b *Backend) destroy(ctx context.Context, svcName, revName, tag string) error {
	unlock, err := b.locks.lock(ctx, svcName)
	if err != nil {
		return err
	}
	defer unlock()
	var revert string
	svc, err := b.updateService(ctx, svcName, func(svc *servingv1.Service) (bool, error) {
		var found bool
		svc.Spec.Traffic, found = resources.WithoutTag(svc.Spec.Traffic, tag)
		revert = ""
		if svc.Spec.Template.Name == revName {
			base, err := b.serving.ServingV1().Revisions(b.p.Namespace).Get(ctx, resources.BaseRevisionOf(svc.Spec.Traffic), metav1.GetOptions{})
			if err != nil {
				return false, fmt.Errorf("base revision of %s: %w", svc.Name, err)
			}
			svc.Spec.Template = resources.BaseTemplateFrom(base)
			revert = base.Name
		}
		return found || revert != "", nil
	})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return err
	case revert != "":
		if err := b.waitLatestCreated(ctx, svc, revert); err != nil {
			return err
		}
	}
	err = b.serving.ServingV1().Revisions(b.p.Namespace).Delete(ctx, revName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete revision %s: %w", revName, err)
	}
	// Named as the revision (SandboxSecretName).
	return b.deleteSecret(ctx, revName)
}
