package knative

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned"
	servinginformers "knative.dev/serving/pkg/client/informers/externalversions"
	servinglisters "knative.dev/serving/pkg/client/listers/serving/v1"
	revisionresources "knative.dev/serving/pkg/reconciler/configuration/resources"
	serviceresources "knative.dev/serving/pkg/reconciler/service/resources"
)

// fakeKnative plays Knative Serving's controllers and data plane for the
// apiserver tests, on real objects in a real kube-apiserver. Its
// reconciler does what Knative's would: a Configuration per Service, a
// Revision for each new template name (using Knative's own MakeRevision),
// revision and Service status, and status.traffic only once every target
// is ready. Deleting a Service deletes its Configuration and revisions, as
// Kubernetes' garbage collector would.
//
// Its ingress is one loopback HTTP server that routes by Host (a tag host)
// or, on a route host, by the Knative-Serving-Tag header, to a "pod" of
// the tagged revision: a fake harness that exists while the tag is in the
// route's status, which is how a sandbox scales to zero and back.
type fakeKnative struct {
	client servingclient.Interface
	// kube reads what a kubelet reads: the Secrets a pod's env refers to.
	kube kubernetes.Interface
	ns   string

	ingress *httptest.Server

	mu sync.Mutex
	// pods of routed sandbox revisions, by revision name.
	pods map[string]*fakePod
	// hosts maps tag hosts to revisions; routes maps route hosts to each
	// route's tags.
	hosts  map[string]string
	routes map[string]map[string]string
	// fail makes revisions of these names fail with the message.
	fail map[string]string
	// warmup is how many GET /session each new pod refuses with 503.
	warmup int
	// podsStarted counts pods ever started.
	podsStarted int

	services    servinglisters.ServiceNamespaceLister
	revisions   servinglisters.RevisionNamespaceLister
	configs     servinglisters.ConfigurationNamespaceLister
	changed     notifier
	reconcileMu sync.Mutex
}

// fakePod is one harness process of a revision.
type fakePod struct {
	mu           sync.Mutex
	token        string
	warmupLeft   int
	sessionGets  int
	sessionPosts int
}

func (p *fakePod) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/" {
		fmt.Fprintln(w, "lap harness")
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+p.token {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/session":
		p.sessionGets++
		if p.warmupLeft > 0 {
			p.warmupLeft--
			http.Error(w, "cloning", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "[]")
	case r.Method == http.MethodPost && r.URL.Path == "/session":
		p.sessionPosts++
		fmt.Fprintf(w, `{"id":"ses_%d","title":""}`, p.sessionPosts)
	default:
		http.NotFound(w, r)
	}
}

// startFakeKnative runs the fake for namespace ns until t ends.
func startFakeKnative(t testing.TB, client servingclient.Interface, kube kubernetes.Interface, ns string) *fakeKnative {
	t.Helper()
	f := &fakeKnative{
		client:  client,
		kube:    kube,
		ns:      ns,
		pods:    map[string]*fakePod{},
		hosts:   map[string]string{},
		routes:  map[string]map[string]string{},
		fail:    map[string]string{},
		changed: notifier{ch: make(chan struct{})},
	}
	f.ingress = httptest.NewServer(http.HandlerFunc(f.route))
	t.Cleanup(f.ingress.Close)

	ctx, cancel := context.WithCancel(context.Background())
	factory := servinginformers.NewSharedInformerFactoryWithOptions(client, 0, servinginformers.WithNamespace(ns))
	notify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { f.changed.notify() },
		UpdateFunc: func(any, any) { f.changed.notify() },
		DeleteFunc: func(any) { f.changed.notify() },
	}
	for _, inf := range []cache.SharedIndexInformer{
		factory.Serving().V1().Services().Informer(),
		factory.Serving().V1().Revisions().Informer(),
		factory.Serving().V1().Configurations().Informer(),
	} {
		if _, err := inf.AddEventHandler(notify); err != nil {
			t.Fatal(err)
		}
	}
	f.services = factory.Serving().V1().Services().Lister().Services(ns)
	f.revisions = factory.Serving().V1().Revisions().Lister().Revisions(ns)
	f.configs = factory.Serving().V1().Configurations().Lister().Configurations(ns)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	done := make(chan struct{})
	go func() {
		defer close(done)
		// A controller's resync: a reconcile that lost a race is retried
		// at the next event or tick.
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			changed := f.changed.wait()
			f.reconcileAll(ctx)
			select {
			case <-ctx.Done():
				return
			case <-changed:
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		factory.Shutdown()
	})
	return f
}

// route is the ingress.
func (f *fakeKnative) route(w http.ResponseWriter, r *http.Request) {
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		host = r.Host
	}
	f.mu.Lock()
	rev := f.hosts[host]
	if tag := r.Header.Get(TagHeader); rev == "" && tag != "" {
		rev = f.routes[host][tag]
	}
	pod := f.pods[rev]
	f.mu.Unlock()
	if pod == nil {
		http.Error(w, "no route to host "+host, http.StatusNotFound)
		return
	}
	pod.ServeHTTP(w, r)
}

// dialer sends every connection to the ingress, as cluster DNS sends
// *.svc.cluster.local to Knative's internal gateway.
func (f *fakeKnative) httpClient() *http.Client {
	addr := f.ingress.Listener.Addr().String()
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
}

func (f *fakeKnative) failRevision(name, message string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[name] = message
}

func (f *fakeKnative) setWarmup(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.warmup = n
}

// kill makes the pod of a routed revision die, as a crash would; the
// next reconcile starts another, as a revision's Deployment would.
func (f *fakeKnative) kill(rev string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pods[rev] == nil {
		return fmt.Errorf("revision %s has no pod to kill", rev)
	}
	delete(f.pods, rev)
	return nil
}

// pod returns the running pod of a revision, or nil.
func (f *fakeKnative) pod(rev string) *fakePod {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pods[rev]
}

func (f *fakeKnative) reconcileAll(ctx context.Context) {
	f.reconcileMu.Lock()
	defer f.reconcileMu.Unlock()
	svcs, err := f.services.List(labels.Everything())
	if err != nil {
		fmt.Printf("fake knative: list services: %v\n", err)
		return
	}
	routed := map[string]*servingv1.Revision{} // of every routed tag
	hosts := map[string]string{}               // tag host → revision
	routes := map[string]map[string]string{}
	for _, svc := range svcs {
		if svc.DeletionTimestamp != nil {
			continue
		}
		if err := f.reconcile(ctx, svc); err != nil && !apierrors.IsConflict(err) && ctx.Err() == nil {
			fmt.Printf("fake knative: reconcile %s: %v\n", svc.Name, err)
		}
		svc, err := f.services.Get(svc.Name)
		if err != nil {
			continue
		}
		routeHost := svc.Name + "." + f.ns + ".svc.cluster.local"
		routes[routeHost] = map[string]string{}
		for _, t := range svc.Status.Traffic {
			if t.Tag == "" || t.URL == nil {
				continue
			}
			rev, err := f.revisions.Get(t.RevisionName)
			if err != nil {
				continue
			}
			routed[rev.Name] = rev
			hosts[t.URL.Host] = rev.Name
			routes[routeHost][t.Tag] = rev.Name
		}
	}
	f.collectGarbage(ctx)

	f.mu.Lock()
	defer f.mu.Unlock()
	f.hosts, f.routes = hosts, routes
	for rev := range f.pods {
		if _, ok := routed[rev]; !ok {
			delete(f.pods, rev) // scaled to zero
		}
	}
	for name, rev := range routed {
		if f.pods[name] != nil {
			continue
		}
		if token, ok := f.podToken(ctx, rev); ok {
			f.pods[name] = &fakePod{token: token, warmupLeft: f.warmup}
			f.podsStarted++
		}
	}
}

// podToken is the HARNESS_AUTH_TOKEN a pod of rev gets, as a kubelet
// resolves it: a plain value, or a key of a Secret. Without the Secret a
// pod does not start (CreateContainerConfigError), until it exists.
func (f *fakeKnative) podToken(ctx context.Context, rev *servingv1.Revision) (string, bool) {
	for _, e := range rev.Spec.Containers[0].Env {
		if e.Name != "HARNESS_AUTH_TOKEN" {
			continue
		}
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			return e.Value, true
		}
		ref := e.ValueFrom.SecretKeyRef
		s, err := f.kube.CoreV1().Secrets(f.ns).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return "", false
		}
		token, ok := s.Data[ref.Key]
		return string(token), ok
	}
	return "", true
}

// reconcile is the service, configuration, revision and route reconcilers
// for one Service.
func (f *fakeKnative) reconcile(ctx context.Context, svc *servingv1.Service) error {
	cfg, err := f.configs.Get(svc.Name)
	if apierrors.IsNotFound(err) {
		cfg, err = f.client.ServingV1().Configurations(f.ns).Create(ctx, serviceresources.MakeConfiguration(svc), metav1.CreateOptions{})
	} else if err == nil && !equality.Semantic.DeepEqual(cfg.Spec, svc.Spec.ConfigurationSpec) {
		cfg = cfg.DeepCopy()
		cfg.Spec = svc.Spec.ConfigurationSpec
		cfg, err = f.client.ServingV1().Configurations(f.ns).Update(ctx, cfg, metav1.UpdateOptions{})
	}
	if err != nil {
		return err
	}

	tmpl := svc.Spec.Template
	var createFailure string
	rev, err := f.revisions.Get(tmpl.Name)
	switch {
	case apierrors.IsNotFound(err):
		// The lister may lag a creation of ours; the API decides.
		rev, err = f.client.ServingV1().Revisions(f.ns).Create(ctx, revisionresources.MakeRevision(ctx, cfg, time.Now()), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		if err != nil {
			return err
		}
	case err != nil:
		return err
	case !metav1.IsControlledBy(rev, cfg) || !equality.Semantic.DeepEqual(rev.Spec, tmpl.Spec):
		// Knative's CheckNameAvailability.
		createFailure = fmt.Sprintf("revisions.serving.knative.dev %q already exists", tmpl.Name)
	}
	if err := f.reconcileRevisions(ctx, svc.Name); err != nil {
		return err
	}

	st := svc.Status.DeepCopy()
	st.ObservedGeneration = svc.Generation
	st.URL = &apis.URL{Scheme: "http", Host: svc.Name + "." + f.ns + ".svc.cluster.local"}
	configReady := apis.Condition{Type: servingv1.ServiceConditionConfigurationsReady, Status: "True"}
	if createFailure != "" {
		configReady = apis.Condition{Type: servingv1.ServiceConditionConfigurationsReady, Status: "False", Reason: "RevisionFailed", Message: createFailure}
	} else {
		st.LatestCreatedRevisionName = tmpl.Name
		if r, err := f.revisions.Get(tmpl.Name); err == nil && r.IsReady() {
			st.LatestReadyRevisionName = tmpl.Name
		}
	}
	// The route changes its traffic only when every target is ready.
	var traffic []servingv1.TrafficTarget
	routesReady := apis.Condition{Type: servingv1.ServiceConditionRoutesReady, Status: "True"}
	for _, t := range svc.Spec.Traffic {
		r, err := f.revisions.Get(t.RevisionName)
		if err != nil || !r.IsReady() {
			routesReady = apis.Condition{Type: servingv1.ServiceConditionRoutesReady, Status: "Unknown", Reason: "RevisionMissing",
				Message: fmt.Sprintf("Revision %q is not ready.", t.RevisionName)}
			break
		}
		t := *t.DeepCopy()
		if t.Tag != "" {
			t.URL = &apis.URL{Scheme: "http", Host: t.Tag + "-" + svc.Name + "." + f.ns + ".svc.cluster.local"}
		}
		traffic = append(traffic, t)
	}
	if routesReady.Status == "True" {
		st.Traffic = traffic
	}
	ready := apis.Condition{Type: apis.ConditionReady, Status: "True"}
	if configReady.Status != "True" || routesReady.Status != "True" {
		ready = apis.Condition{Type: apis.ConditionReady, Status: "Unknown"}
	}
	st.Conditions = duckv1.Conditions{configReady, ready, routesReady}
	if equality.Semantic.DeepEqual(&svc.Status, st) {
		return nil
	}
	next := svc.DeepCopy()
	next.Status = *st
	_, err = f.client.ServingV1().Services(f.ns).UpdateStatus(ctx, next, metav1.UpdateOptions{})
	return err
}

// reconcileRevisions sets the status of the Service's new revisions:
// Ready, or failed for the names in f.fail.
func (f *fakeKnative) reconcileRevisions(ctx context.Context, svcName string) error {
	revs, err := f.revisions.List(labels.SelectorFromSet(labels.Set{serving.ServiceLabelKey: svcName}))
	if err != nil {
		return err
	}
	for _, rev := range revs {
		if rev.Status.GetCondition(apis.ConditionReady) != nil {
			continue
		}
		f.mu.Lock()
		msg, failed := f.fail[rev.Name]
		f.mu.Unlock()
		next := rev.DeepCopy()
		next.Status.ObservedGeneration = rev.Generation
		next.Status.Conditions = duckv1.Conditions{{Type: apis.ConditionReady, Status: "True"}}
		if failed {
			next.Status.Conditions = duckv1.Conditions{{Type: apis.ConditionReady, Status: "False", Reason: "ContainerMissing", Message: msg}}
		}
		if _, err := f.client.ServingV1().Revisions(f.ns).UpdateStatus(ctx, next, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// collectGarbage deletes Configurations whose Service is gone and
// revisions whose Configuration is gone.
func (f *fakeKnative) collectGarbage(ctx context.Context) {
	report := func(err error, what string) {
		if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
			fmt.Printf("fake knative: collect garbage: %s: %v\n", what, err)
		}
	}
	cfgs, err := f.configs.List(labels.Everything())
	report(err, "list configurations")
	for _, c := range cfgs {
		if _, err := f.services.Get(c.Name); apierrors.IsNotFound(err) {
			report(f.client.ServingV1().Configurations(f.ns).Delete(ctx, c.Name, metav1.DeleteOptions{}), "delete configuration "+c.Name)
		}
	}
	revs, err := f.revisions.List(labels.Everything())
	report(err, "list revisions")
	for _, r := range revs {
		if _, err := f.configs.Get(r.Labels[serving.ConfigurationLabelKey]); apierrors.IsNotFound(err) {
			if _, err := f.services.Get(r.Labels[serving.ServiceLabelKey]); apierrors.IsNotFound(err) {
				report(f.client.ServingV1().Revisions(f.ns).Delete(ctx, r.Name, metav1.DeleteOptions{}), "delete revision "+r.Name)
			}
		}
	}
}

// tagHost is the host Knative gives a tag of a cluster-local Service.
func tagHost(tag, svc, ns string) string {
	return strings.Join([]string{tag + "-" + svc, ns, "svc", "cluster", "local"}, ".")
}
