package knative

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// sandboxNames reads the names a sandbox's record carries.
func sandboxNames(sb sandboxes.Sandbox) (svc, rev, tag string, err error) {
	svc, rev, tag = sb.Data[DataService], sb.Data[DataRevision], sb.Data[DataTag]
	if svc == "" || rev == "" || tag == "" {
		return "", "", "", fmt.Errorf("record has no Knative service, revision or tag (%v): %w", sb.Data, sandboxes.ErrNotFound)
	}
	return svc, rev, tag, nil
}

// locate finds a sandbox by its id alone, in the informers' caches: its
// revision by label, else the agent's Service whose route has its tag or
// whose template is its revision (a provision between its template update
// and Knative's creation of the revision).
func (b *Backend) locate(sb sandboxes.Sandbox) (svc, rev, tag string, found bool) {
	if sb.ID == "" {
		return "", "", "", false
	}
	tag = resources.SandboxTag(sb.ID)
	revs, err := b.revisions.List(labels.SelectorFromSet(labels.Set{resources.LabelManagedBy: resources.ManagedBy, resources.LabelSandboxID: sb.ID}))
	if err == nil && len(revs) > 0 && revs[0].Labels[serving.ServiceLabelKey] != "" {
		return revs[0].Labels[serving.ServiceLabelKey], revs[0].Name, tag, true
	}
	set := labels.Set{resources.LabelManagedBy: resources.ManagedBy}
	if sb.AgentID != "" {
		set[resources.LabelAgentID] = sb.AgentID
	}
	svcs, err := b.services.List(labels.SelectorFromSet(set))
	if err != nil {
		return "", "", "", false
	}
	for _, s := range svcs {
		_, tagged := resources.FindTag(s.Spec.Traffic, tag)
		if tagged || s.Spec.Template.Labels[resources.LabelSandboxID] == sb.ID {
			return s.Name, resources.SandboxRevisionName(s.Name, sb.ID), tag, true
		}
	}
	return "", "", "", false
}

// locateSettled is locate for Destroy of a bare record. A sandbox not in
// the caches may be one a provision of its agent is writing: once that
// provision lets go of the agent, the caches show what it wrote, so it
// looks again after taking the agent's lock.
func (b *Backend) locateSettled(ctx context.Context, sb sandboxes.Sandbox) (svc, rev, tag string, found bool, err error) {
	svc, rev, tag, found = b.locate(sb)
	agentSvc := b.serviceOf(sb.AgentID)
	if found || agentSvc == "" {
		return svc, rev, tag, found, nil
	}
	unlock, err := b.locks.lock(ctx, agentSvc)
	if err != nil {
		return "", "", "", false, err
	}
	unlock()
	svc, rev, tag, found = b.locate(sb)
	return svc, rev, tag, found, nil
}

// serviceOf is the name of the agent's Service in the cache; "" if
// unknown.
func (b *Backend) serviceOf(agentID string) string {
	if agentID == "" {
		return ""
	}
	svcs, err := b.services.List(labels.SelectorFromSet(labels.Set{resources.LabelManagedBy: resources.ManagedBy, resources.LabelAgentID: agentID}))
	if err != nil || len(svcs) == 0 {
		return ""
	}
	return svcs[0].Name
}

// List returns every sandbox revision of lap's agents, as the informer
// sees them: Running when its tag is routed and it is not failed. The
// caches see this backend's own writes a moment after they return, and a
// deleted agent's revisions once Kubernetes' garbage collector removed
// them.
func (b *Backend) List(ctx context.Context) ([]sandboxes.Sandbox, error) {
	sel := labels.SelectorFromSet(labels.Set{resources.LabelManagedBy: resources.ManagedBy})
	revs, err := b.revisions.List(sel)
	if err != nil {
		return nil, fmt.Errorf("list sandbox revisions: %w", err)
	}
	var out []sandboxes.Sandbox
	for _, rev := range revs {
		id := rev.Labels[resources.LabelSandboxID]
		if id == "" || rev.DeletionTimestamp != nil {
			continue
		}
		svcName := rev.Labels[serving.ServiceLabelKey]
		sb := sandboxes.Sandbox{
			ID:         id,
			AgentID:    rev.Labels[resources.LabelAgentID],
			Generation: b.generation(rev),
			Data: map[string]string{
				DataNamespace: b.p.Namespace,
				DataService:   svcName,
				DataRevision:  rev.Name,
				DataTag:       resources.SandboxTag(id),
			},
		}
		if svc, err := b.services.Get(svcName); err == nil {
			_, tagged := resources.FindTag(svc.Spec.Traffic, resources.SandboxTag(id))
			c := rev.Status.GetCondition(servingv1.RevisionConditionReady)
			sb.Running = tagged && (c == nil || !c.IsFalse())
			if t, ok := resources.FindTag(svc.Status.Traffic, resources.SandboxTag(id)); ok {
				sb.Endpoint = b.endpoint(svc, t)
			}
		}
		out = append(out, sb)
	}
	slices.SortFunc(out, func(a, b sandboxes.Sandbox) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// generation is the agent generation a sandbox revision was made for; 0
// when its label is absent (a revision of an older lapd) or unreadable,
// which is logged rather than failing the whole List.
func (b *Backend) generation(rev *servingv1.Revision) int64 {
	v, ok := rev.Labels[resources.LabelGeneration]
	if !ok {
		return 0
	}
	gen, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		b.log.Warn("sandbox revision has an unreadable generation label", "revision", rev.Name, "label", resources.LabelGeneration, "err", err)
		return 0
	}
	return gen
}

// endpoint says how lapd reaches a routed tag: at the tag's URL inside the
// cluster, or through the ingress by the tag host or the tag header.
func (b *Backend) endpoint(svc *servingv1.Service, t servingv1.TrafficTarget) sandboxes.Endpoint {
	if b.cfg.IngressURL == "" {
		return sandboxes.Endpoint{URL: t.URL.String(), Proxied: true}
	}
	if b.cfg.TagHeader && svc.Status.URL != nil {
		return sandboxes.Endpoint{URL: b.cfg.IngressURL, Host: svc.Status.URL.Host, Header: map[string]string{TagHeader: t.Tag}, Proxied: true}
	}
	return sandboxes.Endpoint{URL: b.cfg.IngressURL, Host: t.URL.Host, Proxied: true}
}
