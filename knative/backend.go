package knative

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned"
	servinginformers "knative.dev/serving/pkg/client/informers/externalversions"
	servinglisters "knative.dev/serving/pkg/client/listers/serving/v1"

	"lap.dev/lap/config"
	"lap.dev/lap/knative/resources"
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

// Backend runs sandboxes as Knative revisions. It is safe for concurrent
// use; Close stops its informers.
type Backend struct {
	log     *slog.Logger
	kube    kubernetes.Interface
	serving servingclient.Interface
	cfg     config.KnativeConfig
	p       resources.Params
	// http reaches the harnesses, for the readiness probe only.
	http *http.Client

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
			o.LabelSelector = resources.LabelManagedBy + "=" + resources.ManagedBy
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

// Name reports "knative".
func (b *Backend) Name() string { return "knative" }
