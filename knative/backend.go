package knative

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned"
	servinginformers "knative.dev/serving/pkg/client/informers/externalversions"
	servinglisters "knative.dev/serving/pkg/client/listers/serving/v1"

	"lap.dev/lap/config"
	"lap.dev/lap/sandboxes"
)

// Keys of Sandbox.Data this backend writes.
const (
	DataNamespace = "namespace"
	DataService   = "service"
	DataRevision  = "revision"
	DataTag       = "tag"
)

// TagHeader is the header Knative routes by when tag-header-based-routing
// is enabled.
const TagHeader = "Knative-Serving-Tag"

// conflictBackoff retries an update that lost a race with Knative's own
// status writes; they bump the resourceVersion too.
var conflictBackoff = wait.Backoff{Steps: 8, Duration: 10 * time.Millisecond, Factor: 2, Jitter: 0.1}

// Backend runs sandboxes as Knative revisions. It is safe for concurrent
// use; Close stops its informers.
type Backend struct {
	log     *slog.Logger
	kube    kubernetes.Interface
	serving servingclient.Interface
	cfg     config.KnativeConfig
	p       Params
	http    *http.Client

	services  servinglisters.ServiceNamespaceLister
	revisions servinglisters.RevisionNamespaceLister
	changed   notifier
	locks     agentLocks
	stop      context.CancelFunc
}

var _ sandboxes.Backend = (*Backend)(nil)

// New connects to the cluster named by KNATIVE_KUBECONFIG (in-cluster
// configuration when empty) and returns a started Backend.
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (*Backend, error) {
	var rc *rest.Config
	var err error
	if cfg.Knative.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Knative.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config (KNATIVE_KUBECONFIG=%q): %w", cfg.Knative.Kubeconfig, err)
	}
	return NewForConfig(ctx, cfg, log, rc)
}

// NewForConfig is New with an explicit client config.
func NewForConfig(ctx context.Context, cfg config.Config, log *slog.Logger, rc *rest.Config) (*Backend, error) {
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	sc, err := servingclient.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return NewWithClients(ctx, cfg, log, kube, sc)
}

// NewWithClients builds a Backend on the given clientsets, starts its
// informers on the agents' namespace and waits until they have synced
// (bounded by ctx).
func NewWithClients(ctx context.Context, cfg config.Config, log *slog.Logger, kube kubernetes.Interface, sc servingclient.Interface) (*Backend, error) {
	p, err := ParamsFromConfig(cfg)
	if err != nil {
		return nil, err
	}
	b := &Backend{
		log:     log.With("backend", "knative"),
		kube:    kube,
		serving: sc,
		cfg:     cfg.Knative,
		p:       p,
		http:    &http.Client{Timeout: 10 * time.Second},
		changed: notifier{ch: make(chan struct{})},
		locks:   agentLocks{m: map[string]chan struct{}{}},
	}
	if err := preflight(ctx, sc, p.Namespace); err != nil {
		return nil, err
	}
	factory := servinginformers.NewSharedInformerFactoryWithOptions(sc, 0,
		servinginformers.WithNamespace(p.Namespace),
		servinginformers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = LabelManagedBy + "=" + ManagedBy
		}))
	svcInformer := factory.Serving().V1().Services()
	revInformer := factory.Serving().V1().Revisions()
	notify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { b.changed.notify() },
		UpdateFunc: func(any, any) { b.changed.notify() },
		DeleteFunc: func(any) { b.changed.notify() },
	}
	for _, inf := range []cache.SharedIndexInformer{svcInformer.Informer(), revInformer.Informer()} {
		if _, err := inf.AddEventHandler(notify); err != nil {
			return nil, err
		}
	}
	b.services = svcInformer.Lister().Services(p.Namespace)
	b.revisions = revInformer.Lister().Revisions(p.Namespace)
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	b.stop = stop
	factory.Start(runCtx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	synced := factory.WaitForCacheSync(syncCtx.Done())
	for typ, ok := range synced {
		if !ok {
			stop()
			return nil, fmt.Errorf("watch %v in namespace %s: informer did not sync: %w", typ, p.Namespace, context.Cause(syncCtx))
		}
	}
	return b, nil
}

// preflight lists what the informers will watch, once, so that a cluster
// without Knative or a ServiceAccount without the Role fails lapd's start
// with a message saying so, instead of an informer retrying forever.
func preflight(ctx context.Context, sc servingclient.Interface, ns string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := sc.ServingV1().Services(ns).List(ctx, metav1.ListOptions{Limit: 1})
	if err == nil {
		_, err = sc.ServingV1().Revisions(ns).List(ctx, metav1.ListOptions{Limit: 1})
	}
	switch {
	case err == nil:
		return nil
	case apierrors.IsNotFound(err):
		return fmt.Errorf("list Knative services: %w (is Knative Serving installed in this cluster?)", err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("list Knative services in %s: %w (apply config/deploy's Role, or set KNATIVE_NAMESPACE to where it is bound)", ns, err)
	default:
		return fmt.Errorf("reach the Kubernetes API (KNATIVE_KUBECONFIG, or the in-cluster service account): %w", err)
	}
}

// Close stops the informers. Sandboxes keep running on the cluster for
// the next lapd to adopt.
func (b *Backend) Close(context.Context) error {
	b.stop()
	return nil
}

// ParamsFromConfig resolves the builders' inputs from lap's settings.
func ParamsFromConfig(cfg config.Config) (Params, error) {
	k := cfg.Knative
	p := Params{
		Namespace:      cfg.KnativeNamespace,
		Images:         map[string]string{},
		TimeoutSeconds: int64(k.RevisionTimeout / time.Second),
		ClusterLocal:   k.ClusterLocal,
	}
	for _, h := range sandboxes.Harnesses() {
		p.Images[h.ID] = h.Image
		if img := k.HarnessImages[h.ImageSetting()]; img != "" {
			p.Images[h.ID] = img
		}
	}
	quantities := []struct {
		setting, value string
		list           *corev1.ResourceList
		name           corev1.ResourceName
	}{
		{"KNATIVE_SANDBOX_CPU_REQUEST", k.CPURequest, &p.Resources.Requests, corev1.ResourceCPU},
		{"KNATIVE_SANDBOX_CPU_LIMIT", k.CPULimit, &p.Resources.Limits, corev1.ResourceCPU},
		{"KNATIVE_SANDBOX_MEMORY_REQUEST", k.MemoryRequest, &p.Resources.Requests, corev1.ResourceMemory},
		{"KNATIVE_SANDBOX_MEMORY_LIMIT", k.MemoryLimit, &p.Resources.Limits, corev1.ResourceMemory},
	}
	for _, q := range quantities {
		if q.value == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.value)
		if err != nil {
			return p, fmt.Errorf("%s=%q: %w", q.setting, q.value, err)
		}
		if *q.list == nil {
			*q.list = corev1.ResourceList{}
		}
		(*q.list)[q.name] = v
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := p.Resources.Requests[r]
		lim, hasLim := p.Resources.Limits[r]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			return p, fmt.Errorf("sandbox %s request %s exceeds its limit %s", r, req.String(), lim.String())
		}
	}
	if k.WorkspaceSize != "" {
		v, err := resource.ParseQuantity(k.WorkspaceSize)
		if err != nil {
			return p, fmt.Errorf("KNATIVE_SANDBOX_WORKSPACE_SIZE=%q: %w", k.WorkspaceSize, err)
		}
		p.WorkspaceSize = &v
	}
	return p, nil
}

// image returns the harness's image, or why it cannot be used.
func (b *Backend) image(harness string) (string, error) {
	h, ok := sandboxes.LookupHarness(harness)
	if !ok {
		return "", fmt.Errorf("unknown harness %q (known: %s)", harness, strings.Join(sandboxes.HarnessIDs(), ", "))
	}
	img := b.p.Images[h.ID]
	if strings.HasPrefix(img, "ko://") {
		return "", fmt.Errorf("harness %s has image %s, a ko reference that only `ko resolve` turns into an image: set %s (config/deploy does, through ko)", h.ID, img, h.ImageSetting())
	}
	if _, err := name.ParseReference(img); err != nil {
		return "", fmt.Errorf("harness %s image %q (%s): %w", h.ID, img, h.ImageSetting(), err)
	}
	return img, nil
}

// Name reports "knative".
func (b *Backend) Name() string { return "knative" }

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
		want := MakeService(agent, b.p)
		svc, err := svcs.Create(ctx, want, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create service %s: %w", agent.Name, err)
		}
		b.log.Info("created agent service", "agent", agent.Name, "revision", want.Spec.Template.Name)
		return b.waitLatestCreated(ctx, svc, want.Spec.Template.Name)
	} else if err != nil {
		return fmt.Errorf("get service %s: %w", agent.Name, err)
	}
	base := BaseRevisionName(agent.Name, agent.Generation)
	templateChanged := false
	svc, err := b.updateService(ctx, agent.Name, func(svc *servingv1.Service) (bool, error) {
		if err := owned(svc, agent.ID); err != nil {
			return false, err
		}
		before := svc.DeepCopy()
		ApplyAgentMeta(svc, agent, b.p)
		if baseTarget(svc.Spec.Traffic) != base {
			svc.Spec.Template = MakeBaseTemplate(agent, b.p)
			svc.Spec.Traffic = WithBase(svc.Spec.Traffic, base)
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

func (b *Backend) checkAgent(agent sandboxes.AgentSpec) error {
	if agent.ID == "" {
		return errors.New("agent has no id")
	}
	if err := ValidateAgentName(agent.Name); err != nil {
		return err
	}
	_, err := b.image(harnessID(agent))
	return err
}

// ensureSecret writes the agent's Secret when it is missing or its
// env_vars changed, keeping the base token it was created with.
func (b *Backend) ensureSecret(ctx context.Context, agent sandboxes.AgentSpec) error {
	secrets := b.kube.CoreV1().Secrets(b.p.Namespace)
	cur, err := secrets.Get(ctx, SecretName(agent.Name), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		token, err := randomToken()
		if err != nil {
			return err
		}
		if _, err := secrets.Create(ctx, MakeSecret(agent, b.p, token), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create secret %s: %w", SecretName(agent.Name), err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get secret %s: %w", SecretName(agent.Name), err)
	}
	if id := cur.Labels[LabelAgentID]; id != agent.ID {
		return fmt.Errorf("secret %s belongs to agent %q, not %s", cur.Name, id, agent.ID)
	}
	token := string(cur.Data[BaseTokenKey])
	if token == "" {
		if token, err = randomToken(); err != nil {
			return err
		}
	}
	want := MakeSecret(agent, b.p, token)
	if equality.Semantic.DeepEqual(cur.Data, want.Data) && cur.Labels[LabelManagedBy] == ManagedBy {
		return nil
	}
	cur.Data = want.Data
	maps.Copy(cur.Labels, want.Labels)
	if _, err := secrets.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update secret %s: %w", cur.Name, err)
	}
	return nil
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
	if err := b.deleteSecret(ctx, SecretName(agent.Name)); err != nil {
		return err
	}
	// By selector, not by the names in the route: a sandbox may be
	// suspended, or its provision may have failed half-way.
	if err := b.deleteSecrets(ctx, sandboxSecretsOf(agent.ID)); err != nil {
		return fmt.Errorf("delete sandbox secrets of agent %s: %w", agent.Name, err)
	}
	return nil
}

// sandboxSecretsOf selects the sandbox Secrets of an agent, not its own.
func sandboxSecretsOf(agentID string) string {
	return labels.SelectorFromSet(labels.Set{LabelManagedBy: ManagedBy, LabelAgentID: agentID}).String() + "," + LabelSandboxID
}

// sandboxSecretOf selects the Secret of one sandbox; false for an id no
// label can hold, which never had one.
func sandboxSecretOf(sandboxID string) (string, bool) {
	sel, err := labels.ValidatedSelectorFromSet(labels.Set{LabelManagedBy: ManagedBy, LabelSandboxID: sandboxID})
	if err != nil {
		return "", false
	}
	return sel.String(), true
}

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
	tmpl := MakeSandboxTemplate(spec, b.p)
	sb := sandboxes.Sandbox{
		ID:         spec.ID,
		AgentID:    spec.Agent.ID,
		Generation: spec.Agent.Generation,
		Data: map[string]string{
			DataNamespace: b.p.Namespace,
			DataService:   spec.Agent.Name,
			DataRevision:  tmpl.Name,
			DataTag:       SandboxTag(spec.ID),
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
	if err := b.createSandboxSecret(ctx, MakeSandboxSecret(spec, b.p, owner)); err != nil {
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
	if err := b.checkCapacity(svc, SandboxTag(spec.ID)); err != nil {
		return nil, err
	}
	return &metav1.OwnerReference{
		APIVersion: servingv1.SchemeGroupVersion.String(),
		Kind:       "Service",
		Name:       svc.Name,
		UID:        svc.UID,
	}, nil
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
	if id := cur.Labels[LabelSandboxID]; id != want.Labels[LabelSandboxID] {
		return fmt.Errorf("secret %s belongs to sandbox %q, not %s", cur.Name, id, want.Labels[LabelSandboxID])
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

// addSandbox is Provision's serialised part. written reports whether the
// Service was changed, so a failure must be cleaned up.
func (b *Backend) addSandbox(ctx context.Context, spec sandboxes.Spec, tmpl servingv1.RevisionTemplateSpec, owner *metav1.OwnerReference) (written bool, err error) {
	unlock, err := b.locks.lock(ctx, spec.Agent.Name)
	if err != nil {
		return false, err
	}
	defer unlock()
	tag := SandboxTag(spec.ID)
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
		svc.Spec.Traffic = WithTarget(svc.Spec.Traffic, SandboxTarget(tag, tmpl.Name))
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

func (b *Backend) checkCapacity(svc *servingv1.Service, tag string) error {
	if _, ok := findTag(svc.Spec.Traffic, tag); ok {
		return nil
	}
	if n := SandboxTags(svc.Spec.Traffic); n >= b.cfg.MaxSandboxesPerAgent {
		return fmt.Errorf("agent %s has %d live sandboxes, the most KNATIVE_MAX_SANDBOXES_PER_AGENT allows: %w", svc.Name, n, sandboxes.ErrCapacity)
	}
	return nil
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
		svc.Spec.Traffic, found = WithoutTag(svc.Spec.Traffic, tag)
		return found, nil
	})
	if apierrors.IsNotFound(err) {
		return nil
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
		_ = b.removeTag(context.WithoutCancel(parent), svcName, tag)
		return fail(fmt.Errorf("revision %s was deleted: %w", revName, sandboxes.ErrGone))
	}
	if err != nil {
		return fail(err)
	}
	if rev.DeletionTimestamp != nil {
		return fail(fmt.Errorf("revision %s is being deleted: %w", revName, sandboxes.ErrGone))
	}
	if c := rev.Status.GetCondition(servingv1.RevisionConditionReady); c != nil && c.IsFalse() {
		_ = b.removeTag(context.WithoutCancel(parent), svcName, tag)
		return fail(fmt.Errorf("revision %s failed (%s: %s): %w", revName, c.Reason, c.Message, sandboxes.ErrGone))
	}
	token, err := b.harnessToken(ctx, rev)
	if err != nil {
		return fail(err)
	}

	unlock, err := b.locks.lock(ctx, svcName)
	if err != nil {
		return fail(err)
	}
	added := false
	_, err = b.updateService(ctx, svcName, func(svc *servingv1.Service) (bool, error) {
		if _, ok := findTag(svc.Spec.Traffic, tag); ok {
			return false, nil
		}
		if err := b.checkCapacity(svc, tag); err != nil {
			return false, err
		}
		svc.Spec.Traffic = WithTarget(svc.Spec.Traffic, SandboxTarget(tag, revName))
		added = true
		return true, nil
	})
	unlock()
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
			// Leave it suspended, so it neither holds a tag of the
			// agent's cap nor keeps the route from settling.
			_ = b.removeTag(context.WithoutCancel(parent), svcName, tag)
		}
		return fail(err)
	}
	sb.Running, sb.Endpoint = true, ep
	return sb, nil
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
		svcName, revName, tag, found = b.locate(sb)
		if svc := b.serviceOf(sb.AgentID); !found && svc != "" {
			// A provision of the agent may be writing it: once it lets
			// go of the agent, the caches show what it wrote.
			unlock, err := b.locks.lock(ctx, svc)
			if err != nil {
				return fmt.Errorf("destroy sandbox %s: %w", sb.ID, err)
			}
			unlock()
			svcName, revName, tag, found = b.locate(sb)
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

func (b *Backend) destroy(ctx context.Context, svcName, revName, tag string) error {
	unlock, err := b.locks.lock(ctx, svcName)
	if err != nil {
		return err
	}
	defer unlock()
	var revert string
	svc, err := b.updateService(ctx, svcName, func(svc *servingv1.Service) (bool, error) {
		var found bool
		svc.Spec.Traffic, found = WithoutTag(svc.Spec.Traffic, tag)
		revert = ""
		if svc.Spec.Template.Name == revName {
			base, err := b.serving.ServingV1().Revisions(b.p.Namespace).Get(ctx, baseTarget(svc.Spec.Traffic), metav1.GetOptions{})
			if err != nil {
				return false, fmt.Errorf("base revision of %s: %w", svc.Name, err)
			}
			svc.Spec.Template = BaseTemplateFrom(base)
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

// locate finds a sandbox by its id alone, in the informers' caches: its
// revision by label, else the agent's Service whose route has its tag or
// whose template is its revision (a provision between its template update
// and Knative's creation of the revision).
func (b *Backend) locate(sb sandboxes.Sandbox) (svc, rev, tag string, found bool) {
	if sb.ID == "" {
		return "", "", "", false
	}
	tag = SandboxTag(sb.ID)
	revs, err := b.revisions.List(labels.SelectorFromSet(labels.Set{LabelManagedBy: ManagedBy, LabelSandboxID: sb.ID}))
	if err == nil && len(revs) > 0 && revs[0].Labels[serving.ServiceLabelKey] != "" {
		return revs[0].Labels[serving.ServiceLabelKey], revs[0].Name, tag, true
	}
	set := labels.Set{LabelManagedBy: ManagedBy}
	if sb.AgentID != "" {
		set[LabelAgentID] = sb.AgentID
	}
	svcs, err := b.services.List(labels.SelectorFromSet(set))
	if err != nil {
		return "", "", "", false
	}
	for _, s := range svcs {
		_, tagged := findTag(s.Spec.Traffic, tag)
		if tagged || s.Spec.Template.Labels[LabelSandboxID] == sb.ID {
			return s.Name, SandboxRevisionName(s.Name, sb.ID), tag, true
		}
	}
	return "", "", "", false
}

// serviceOf is the name of the agent's Service in the cache; "" if
// unknown.
func (b *Backend) serviceOf(agentID string) string {
	if agentID == "" {
		return ""
	}
	svcs, err := b.services.List(labels.SelectorFromSet(labels.Set{LabelManagedBy: ManagedBy, LabelAgentID: agentID}))
	if err != nil || len(svcs) == 0 {
		return ""
	}
	return svcs[0].Name
}

// cleanup undoes a failed provision, even when the caller's context has
// ended: the whole sandbox if the Service was written, else its Secret.
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

// List returns every sandbox revision of lap's agents, as the informer
// sees them: Running when its tag is routed and it is not failed.
func (b *Backend) List(ctx context.Context) ([]sandboxes.Sandbox, error) {
	sel := labels.SelectorFromSet(labels.Set{LabelManagedBy: ManagedBy})
	revs, err := b.revisions.List(sel)
	if err != nil {
		return nil, err
	}
	var out []sandboxes.Sandbox
	for _, rev := range revs {
		id := rev.Labels[LabelSandboxID]
		if id == "" || rev.DeletionTimestamp != nil {
			continue
		}
		svcName := rev.Labels[serving.ServiceLabelKey]
		gen, _ := strconv.ParseInt(rev.Labels[LabelGeneration], 10, 64) // 0 if absent
		sb := sandboxes.Sandbox{
			ID:         id,
			AgentID:    rev.Labels[LabelAgentID],
			Generation: gen,
			Data: map[string]string{
				DataNamespace: b.p.Namespace,
				DataService:   svcName,
				DataRevision:  rev.Name,
				DataTag:       SandboxTag(id),
			},
		}
		if svc, err := b.services.Get(svcName); err == nil {
			_, tagged := findTag(svc.Spec.Traffic, SandboxTag(id))
			c := rev.Status.GetCondition(servingv1.RevisionConditionReady)
			sb.Running = tagged && (c == nil || !c.IsFalse())
			if t, ok := findTag(svc.Status.Traffic, SandboxTag(id)); ok {
				sb.Endpoint = b.endpoint(svc, t)
			}
		}
		out = append(out, sb)
	}
	slices.SortFunc(out, func(a, b sandboxes.Sandbox) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Logs returns the tail of the harness container's log in the sandbox's
// newest pod; "" when it has no pod (scaled to zero).
func (b *Backend) Logs(ctx context.Context, sb sandboxes.Sandbox, n int) (string, error) {
	_, revName, _, err := sandboxNames(sb)
	if err != nil {
		return "", fmt.Errorf("logs of sandbox %s: %w", sb.ID, err)
	}
	pods, err := b.kube.CoreV1().Pods(b.p.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: serving.RevisionLabelKey + "=" + revName,
	})
	if err != nil {
		return "", fmt.Errorf("logs of sandbox %s: %w", sb.ID, err)
	}
	if len(pods.Items) == 0 || n <= 0 {
		return "", nil
	}
	newest := slices.MaxFunc(pods.Items, func(a, b corev1.Pod) int {
		return a.CreationTimestamp.Compare(b.CreationTimestamp.Time)
	})
	// Ask for enough lines to fill n bytes, then cut: the API's
	// limitBytes keeps the head of a log, not its tail.
	lines := int64(n/16 + 100)
	raw, err := b.kube.CoreV1().Pods(b.p.Namespace).GetLogs(newest.Name, &corev1.PodLogOptions{
		Container: ContainerName,
		TailLines: &lines,
	}).DoRaw(ctx)
	if err != nil {
		return "", fmt.Errorf("logs of sandbox %s (pod %s): %w", sb.ID, newest.Name, err)
	}
	if len(raw) > n {
		raw = raw[len(raw)-n:]
	}
	return string(raw), nil
}

// logTail is Logs for error messages.
func (b *Backend) logTail(parent context.Context, sb sandboxes.Sandbox) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), 10*time.Second)
	defer cancel()
	logs, err := b.Logs(ctx, sb, 2048)
	switch {
	case err != nil:
		return "harness log: " + err.Error()
	case logs == "":
		return "harness log: (no pod)"
	}
	return "harness log:\n" + logs
}

// waitError turns the end of Provision's or Resume's own deadline into
// ErrNotReady, and leaves the caller's cancellation as it is.
func (b *Backend) waitError(parent context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil {
		return fmt.Errorf("not ready within KNATIVE_READY_TIMEOUT=%s: %w: %w", b.cfg.ReadyTimeout, sandboxes.ErrNotReady, err)
	}
	return err
}

// updateService applies mutate to a fresh copy of the Service and writes
// it if mutate reports a change, retrying on conflict.
func (b *Backend) updateService(ctx context.Context, svcName string, mutate func(*servingv1.Service) (bool, error)) (*servingv1.Service, error) {
	svcs := b.serving.ServingV1().Services(b.p.Namespace)
	var out *servingv1.Service
	err := retry.RetryOnConflict(conflictBackoff, func() error {
		svc, err := svcs.Get(ctx, svcName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		changed, err := mutate(svc)
		if err != nil || !changed {
			out = svc
			return err
		}
		out, err = svcs.Update(ctx, svc, metav1.UpdateOptions{})
		return err
	})
	return out, err
}

// waitLatestCreated waits until Knative has created the revision the
// template of svc (as written) names. Until then a further template
// update could make Knative skip this revision.
func (b *Backend) waitLatestCreated(ctx context.Context, written *servingv1.Service, revName string) error {
	err := b.waitFor(ctx, func() (bool, error) {
		svc, err := b.services.Get(written.Name)
		if apierrors.IsNotFound(err) {
			return false, nil // the informer has not seen it yet
		}
		if err != nil {
			return false, err
		}
		if svc.Status.LatestCreatedRevisionName == revName {
			return true, nil
		}
		// Knative could not create it, e.g. the name is taken.
		c := svc.Status.GetCondition(servingv1.ServiceConditionConfigurationsReady)
		if svc.Status.ObservedGeneration >= written.Generation && c != nil && c.IsFalse() {
			return false, fmt.Errorf("knative did not create revision %s: %s: %s", revName, c.Reason, c.Message)
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("wait for revision %s to be created: %w", revName, err)
	}
	return nil
}

// waitReady waits until the sandbox's revision is Ready, its tag is in
// the route's status, and its harness answers GET /session.
func (b *Backend) waitReady(ctx context.Context, sb sandboxes.Sandbox, token string) (sandboxes.Endpoint, error) {
	svcName, revName, tag := sb.Data[DataService], sb.Data[DataRevision], sb.Data[DataTag]
	var ep sandboxes.Endpoint
	err := b.waitFor(ctx, func() (bool, error) {
		rev, err := b.revisions.Get(revName)
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if rev.DeletionTimestamp != nil {
			return false, fmt.Errorf("revision %s is being deleted: %w", revName, sandboxes.ErrGone)
		}
		c := rev.Status.GetCondition(servingv1.RevisionConditionReady)
		if c == nil || c.IsUnknown() {
			return false, nil
		}
		if c.IsFalse() {
			return false, fmt.Errorf("revision %s failed: %s: %s: %w", revName, c.Reason, c.Message, sandboxes.ErrNotReady)
		}
		svc, err := b.services.Get(svcName)
		if apierrors.IsNotFound(err) {
			return false, fmt.Errorf("agent service %s was deleted: %w", svcName, sandboxes.ErrGone)
		}
		if err != nil {
			return false, err
		}
		if svc.Status.ObservedGeneration < svc.Generation {
			return false, nil
		}
		t, ok := findTag(svc.Status.Traffic, tag)
		if !ok || t.RevisionName != revName || t.URL == nil {
			return false, nil
		}
		ep = b.endpoint(svc, t)
		return true, nil
	})
	if err != nil {
		return ep, fmt.Errorf("wait for revision %s: %w", revName, err)
	}
	if err := b.probe(ctx, ep, token); err != nil {
		return ep, err
	}
	return ep, nil
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

// probe polls the harness's GET /session, with the sandbox's token, until
// it answers 2xx; the first requests may meet a pod still starting or a
// route still being programmed.
func (b *Backend) probe(ctx context.Context, ep sandboxes.Endpoint, token string) error {
	delay := 50 * time.Millisecond
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(ep.URL, "/")+"/session", nil)
		if err != nil {
			return err
		}
		ep.Apply(req)
		req.Header.Set("Authorization", "Bearer "+token)
		res, err := b.http.Do(req)
		if err == nil {
			res.Body.Close()
			if res.StatusCode/100 == 2 {
				return nil
			}
			err = fmt.Errorf("GET /session: %s", res.Status)
		}
		last = err
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("harness at %s did not answer (%v): %w", ep.URL, last, ctx.Err())
		case <-timer.C:
		}
		delay = min(delay*2, 2*time.Second)
	}
}

// waitFor re-evaluates check on every informer event until it reports
// done, fails, or ctx ends.
func (b *Backend) waitFor(ctx context.Context, check func() (bool, error)) error {
	for {
		changed := b.changed.wait()
		done, err := check()
		if err != nil || done {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// notifier wakes every waiter on each informer event: wait returns a
// channel closed by the next notify.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

func (n *notifier) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.ch)
	n.ch = make(chan struct{})
}

// agentLocks serialises the writes to each agent's Service; waiting for
// one respects the caller's context.
type agentLocks struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

func (l *agentLocks) lock(ctx context.Context, agent string) (unlock func(), err error) {
	l.mu.Lock()
	ch, ok := l.m[agent]
	if !ok {
		ch = make(chan struct{}, 1)
		l.m[agent] = ch
	}
	l.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for agent %s: %w", agent, ctx.Err())
	}
}

// owned checks that svc is the Service of agent id, not a same-named
// Service of someone else or of a deleted agent.
func owned(svc *servingv1.Service, agentID string) error {
	if svc.Labels[LabelManagedBy] != ManagedBy || svc.Labels[LabelAgentID] != agentID {
		return fmt.Errorf("service %s/%s is not lap's agent %s (labels %v)", svc.Namespace, svc.Name, agentID, svc.Labels)
	}
	return nil
}

// sandboxNames reads the names a sandbox's record carries.
func sandboxNames(sb sandboxes.Sandbox) (svc, rev, tag string, err error) {
	svc, rev, tag = sb.Data[DataService], sb.Data[DataRevision], sb.Data[DataTag]
	if svc == "" || rev == "" || tag == "" {
		return "", "", "", fmt.Errorf("record has no Knative service, revision or tag (%v): %w", sb.Data, sandboxes.ErrNotFound)
	}
	return svc, rev, tag, nil
}

// baseTarget is the revision the untagged route target names.
func baseTarget(traffic []servingv1.TrafficTarget) string {
	for _, t := range traffic {
		if t.Tag == "" && t.RevisionName != "" {
			return t.RevisionName
		}
	}
	return ""
}

func findTag(traffic []servingv1.TrafficTarget, tag string) (servingv1.TrafficTarget, bool) {
	for _, t := range traffic {
		if t.Tag == tag {
			return t, true
		}
	}
	return servingv1.TrafficTarget{}, false
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

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
