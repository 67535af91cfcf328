// Package ingress is the KIngress implementation of Knative in a box: it
// plays the part Kourier or Istio play in a cluster, in a few hundred
// lines and without Envoy.
//
// It watches Knative's networking Ingresses of its class and marks each
// Ready (network configured, load balancer ready with an internal domain,
// the generation observed) once it routes by it. It serves HTTP on a host
// address and proxies each request by its Host header (both visibilities,
// ExternalIP and ClusterLocal), the longest matching path prefix, the
// path's exact header matches (Knative-Serving-Tag with tag-header-based
// routing), and the splits' percentages, adding the path's and the split's
// appendHeaders, to a ready address of the split's Service — for a
// revision, the activator or the pods, as Knative's serverless service
// arranges its Endpoints.
package ingress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
	"knative.dev/networking/pkg/apis/networking"
	netv1alpha1 "knative.dev/networking/pkg/apis/networking/v1alpha1"
	netclient "knative.dev/networking/pkg/client/clientset/versioned"
	netinformers "knative.dev/networking/pkg/client/informers/externalversions"
	netlisters "knative.dev/networking/pkg/client/listers/networking/v1alpha1"
)

// Class is the ingress class the box's config-network names.
const Class = "box.ingress.networking.knative.dev"

// Config configures an Ingress.
type Config struct {
	Networking netclient.Interface
	Kube       kubernetes.Interface
	// Listen is the address the proxy serves on, e.g. "127.0.0.1:0".
	Listen string
	// Domain is the internal domain the Ingresses' load balancer status
	// names (Knative points its placeholder Services at it).
	Domain string
	Log    *slog.Logger
}

// Ingress is a running KIngress implementation.
type Ingress struct {
	// URL is where the proxy listens, e.g. http://127.0.0.1:40123.
	URL string

	cfg       Config
	log       *slog.Logger
	ingresses netlisters.IngressLister
	services  corelisters.ServiceLister
	endpoints corelisters.EndpointsLister
	queue     workqueue.RateLimitingInterface
	server    *http.Server
	cancel    context.CancelFunc
	done      chan struct{}
}

// Start starts watching Ingresses and serving.
func Start(ctx context.Context, cfg Config) (*Ingress, error) {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("ingress listen: %w", err)
	}
	in := &Ingress{
		URL:   "http://" + ln.Addr().String(),
		cfg:   cfg,
		log:   cfg.Log.With("component", "ingress"),
		queue: workqueue.NewRateLimitingQueue(workqueue.DefaultControllerRateLimiter()),
		done:  make(chan struct{}),
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	in.cancel = cancel

	nf := netinformers.NewSharedInformerFactory(cfg.Networking, 0)
	ingInformer := nf.Networking().V1alpha1().Ingresses()
	in.ingresses = ingInformer.Lister()
	_, err = ingInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    in.enqueue,
		UpdateFunc: func(_, o any) { in.enqueue(o) },
	})
	if err != nil {
		cancel()
		ln.Close()
		return nil, err
	}
	kf := kubeinformers.NewSharedInformerFactory(cfg.Kube, 0)
	in.services = kf.Core().V1().Services().Lister()
	in.endpoints = kf.Core().V1().Endpoints().Lister()
	nf.Start(runCtx.Done())
	kf.Start(runCtx.Done())
	for _, synced := range []map[any]bool{toAny(nf.WaitForCacheSync(ctx.Done())), toAny(kf.WaitForCacheSync(ctx.Done()))} {
		for typ, ok := range synced {
			if !ok {
				cancel()
				ln.Close()
				return nil, fmt.Errorf("ingress: watch %v: %w", typ, context.Cause(ctx))
			}
		}
	}
	go func() {
		defer close(in.done)
		for in.processNext(runCtx) {
		}
	}()
	in.server = &http.Server{Handler: in, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = in.server.Serve(ln) }()
	return in, nil
}

func toAny[K comparable](m map[K]bool) map[any]bool {
	out := make(map[any]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Stop stops serving and watching.
func (in *Ingress) Stop() {
	_ = in.server.Close()
	in.cancel()
	in.queue.ShutDown()
	<-in.done
}

func (in *Ingress) enqueue(o any) {
	ing, ok := o.(*netv1alpha1.Ingress)
	if !ok || ing.Annotations[networking.IngressClassAnnotationKey] != Class {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(ing)
	if err == nil {
		in.queue.Add(key)
	}
}

func (in *Ingress) processNext(ctx context.Context) bool {
	item, quit := in.queue.Get()
	if quit {
		return false
	}
	defer in.queue.Done(item)
	key := item.(string)
	if err := in.markReady(ctx, key); err != nil && ctx.Err() == nil {
		in.log.Warn("ingress status", "ingress", key, "err", err)
		in.queue.AddRateLimited(key)
		return true
	}
	in.queue.Forget(key)
	return true
}

// markReady writes an Ingress's Ready status for its current generation.
// The proxy reads the same informer cache that delivered this generation,
// so it already routes by it.
func (in *Ingress) markReady(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return err
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ing, err := in.cfg.Networking.NetworkingV1alpha1().Ingresses(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if ing.Status.ObservedGeneration == ing.Generation && ing.IsReady() {
			return nil
		}
		lb := []netv1alpha1.LoadBalancerIngressStatus{{DomainInternal: in.cfg.Domain}}
		ing.Status.InitializeConditions()
		ing.Status.MarkNetworkConfigured()
		ing.Status.MarkLoadBalancerReady(lb, lb)
		ing.Status.ObservedGeneration = ing.Generation
		_, err = in.cfg.Networking.NetworkingV1alpha1().Ingresses(ns).UpdateStatus(ctx, ing, metav1.UpdateOptions{})
		return err
	})
}

// ServeHTTP routes one request.
func (in *Ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path, err := in.route(r)
	if err != nil {
		in.log.Debug("no route", "host", r.Host, "path", r.URL.Path, "err", err)
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	split, ok := pickSplit(path.Splits)
	if !ok {
		http.Error(w, "route has no backend with traffic", http.StatusServiceUnavailable)
		return
	}
	target, err := in.backend(split.IngressBackend)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
			pr.Out.Host = pr.In.Host
			if path.RewriteHost != "" {
				pr.Out.Host = path.RewriteHost
			}
			for k, v := range path.AppendHeaders {
				pr.Out.Header.Set(k, v)
			}
			for k, v := range split.AppendHeaders {
				pr.Out.Header.Set(k, v)
			}
		},
		// Stream: harness events are server-sent events.
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			in.log.Info("proxy error", "host", r.Host, "backend", target.Host, "err", err)
			http.Error(w, "ingress: "+err.Error(), http.StatusBadGateway)
		},
	}
	proxy.ServeHTTP(w, r)
}

// route finds the path of an Ingress of the box's class that the request
// matches: its host, then the most specific path — exact header matches
// first, then the longest prefix.
func (in *Ingress) route(r *http.Request) (netv1alpha1.HTTPIngressPath, error) {
	host := strings.ToLower(r.Host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	ings, err := in.ingresses.List(labels.Everything())
	if err != nil {
		return netv1alpha1.HTTPIngressPath{}, err
	}
	var best *netv1alpha1.HTTPIngressPath
	bestScore := -1
	for _, ing := range ings {
		if ing.Annotations[networking.IngressClassAnnotationKey] != Class || ing.DeletionTimestamp != nil {
			continue
		}
		for _, rule := range ing.Spec.Rules {
			if rule.HTTP == nil || !slices.Contains(rule.Hosts, host) {
				continue
			}
			for i := range rule.HTTP.Paths {
				p := &rule.HTTP.Paths[i]
				prefix := p.Path
				if prefix == "" {
					prefix = "/"
				}
				if !strings.HasPrefix(r.URL.Path, prefix) || !headersMatch(r.Header, p.Headers) {
					continue
				}
				// Header matches outrank any prefix length.
				score := len(prefix) + 10000*len(p.Headers)
				if score > bestScore {
					best, bestScore = p, score
				}
			}
		}
	}
	if best == nil {
		return netv1alpha1.HTTPIngressPath{}, fmt.Errorf("no ingress route for host %q path %q", host, r.URL.Path)
	}
	return *best, nil
}

func headersMatch(h http.Header, want map[string]netv1alpha1.HeaderMatch) bool {
	for k, m := range want {
		if h.Get(k) != m.Exact {
			return false
		}
	}
	return true
}

// pickSplit chooses a split by its percentage.
func pickSplit(splits []netv1alpha1.IngressBackendSplit) (netv1alpha1.IngressBackendSplit, bool) {
	total := 0
	for _, s := range splits {
		total += s.Percent
	}
	if total <= 0 {
		return netv1alpha1.IngressBackendSplit{}, false
	}
	n := rand.IntN(total)
	for _, s := range splits {
		if n < s.Percent {
			return s, true
		}
		n -= s.Percent
	}
	return splits[len(splits)-1], true
}

// backend resolves a split's Service and port to one ready address of its
// Endpoints: the Endpoints port named like the Service port.
func (in *Ingress) backend(b netv1alpha1.IngressBackend) (*url.URL, error) {
	svc, err := in.services.Services(b.ServiceNamespace).Get(b.ServiceName)
	if err != nil {
		return nil, fmt.Errorf("backend service %s/%s: %w", b.ServiceNamespace, b.ServiceName, err)
	}
	var sp *corev1.ServicePort
	for i, p := range svc.Spec.Ports {
		if (b.ServicePort.Type == intstr.Int && p.Port == b.ServicePort.IntVal) ||
			(b.ServicePort.Type == intstr.String && p.Name == b.ServicePort.StrVal) {
			sp = &svc.Spec.Ports[i]
		}
	}
	if sp == nil {
		return nil, fmt.Errorf("backend service %s/%s has no port %s", b.ServiceNamespace, b.ServiceName, b.ServicePort.String())
	}
	eps, err := in.endpoints.Endpoints(b.ServiceNamespace).Get(b.ServiceName)
	if err != nil {
		return nil, fmt.Errorf("backend endpoints %s/%s: %w", b.ServiceNamespace, b.ServiceName, err)
	}
	var addrs []string
	for _, ss := range eps.Subsets {
		for _, ep := range ss.Ports {
			if ep.Name != sp.Name {
				continue
			}
			for _, a := range ss.Addresses {
				addrs = append(addrs, net.JoinHostPort(a.IP, strconv.Itoa(int(ep.Port))))
			}
		}
	}
	if len(addrs) == 0 {
		return nil, errors.New("backend " + b.ServiceNamespace + "/" + b.ServiceName + " has no ready endpoints")
	}
	return &url.URL{Scheme: "http", Host: addrs[rand.IntN(len(addrs))]}, nil
}
