package ingress

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"knative.dev/networking/pkg/apis/networking"
	netv1alpha1 "knative.dev/networking/pkg/apis/networking/v1alpha1"
	netlisters "knative.dev/networking/pkg/client/listers/networking/v1alpha1"
)

// split routes all of a path to one revision's Service.
func split(rev string, percent int) netv1alpha1.IngressBackendSplit {
	return netv1alpha1.IngressBackendSplit{
		IngressBackend: netv1alpha1.IngressBackend{ServiceNamespace: "ns", ServiceName: rev, ServicePort: intstr.FromInt32(80)},
		Percent:        percent,
		AppendHeaders:  map[string]string{"Knative-Serving-Revision": rev},
	}
}

// testIngress is an Ingress over fixed caches: a route like Knative's for
// Service "hello" with a tag "canary" by host and by header, and one
// other class's Ingress for the same host that must be ignored.
func testIngress(t *testing.T, backends map[string]string) *Ingress {
	t.Helper()
	ings := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	ours := &netv1alpha1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: "ns", Annotations: map[string]string{networking.IngressClassAnnotationKey: Class}},
		Spec: netv1alpha1.IngressSpec{Rules: []netv1alpha1.IngressRule{
			{
				Hosts:      []string{"hello.ns", "hello.ns.svc.cluster.local"},
				Visibility: netv1alpha1.IngressVisibilityClusterLocal,
				HTTP: &netv1alpha1.HTTPIngressRuleValue{Paths: []netv1alpha1.HTTPIngressPath{
					{
						Headers:       map[string]netv1alpha1.HeaderMatch{"Knative-Serving-Tag": {Exact: "canary"}},
						Splits:        []netv1alpha1.IngressBackendSplit{split("hello-v2", 100)},
						AppendHeaders: map[string]string{"Knative-Serving-Tag": "canary"},
					},
					{Splits: []netv1alpha1.IngressBackendSplit{split("hello-v1", 100)}},
					{Path: "/api", Splits: []netv1alpha1.IngressBackendSplit{split("hello-api", 100)}},
				}},
			},
			{
				Hosts:      []string{"canary-hello.ns.svc.cluster.local"},
				Visibility: netv1alpha1.IngressVisibilityClusterLocal,
				HTTP: &netv1alpha1.HTTPIngressRuleValue{Paths: []netv1alpha1.HTTPIngressPath{
					{Splits: []netv1alpha1.IngressBackendSplit{split("hello-v2", 100)}, AppendHeaders: map[string]string{"Knative-Serving-Tag": "canary"}},
				}},
			},
		}},
	}
	other := ours.DeepCopy()
	other.Name, other.Annotations = "other", map[string]string{networking.IngressClassAnnotationKey: "kourier.ingress.networking.knative.dev"}
	other.Spec.Rules[1].HTTP.Paths[0].Splits = []netv1alpha1.IngressBackendSplit{split("elsewhere", 100)}
	require.NoError(t, ings.Add(ours))
	require.NoError(t, ings.Add(other))

	svcs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	eps := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for rev, addr := range backends {
		u, err := url.Parse(addr)
		require.NoError(t, err)
		host, port := u.Hostname(), u.Port()
		require.NoError(t, svcs.Add(&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: rev, Namespace: "ns"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8012)}}},
		}))
		p := intstr.Parse(port)
		require.NoError(t, eps.Add(&corev1.Endpoints{
			ObjectMeta: metav1.ObjectMeta{Name: rev, Namespace: "ns"},
			Subsets: []corev1.EndpointSubset{{
				Addresses: []corev1.EndpointAddress{{IP: host}},
				Ports:     []corev1.EndpointPort{{Name: "metrics", Port: 1}, {Name: "http", Port: p.IntVal}},
			}},
		}))
	}
	return &Ingress{
		log:       slog.New(slog.DiscardHandler),
		ingresses: netlisters.NewIngressLister(ings),
		services:  corelisters.NewServiceLister(svcs),
		endpoints: corelisters.NewEndpointsLister(eps),
	}
}

func TestProxyRoutes(t *testing.T) {
	t.Parallel()
	backends := map[string]string{}
	for _, rev := range []string{"hello-v1", "hello-v2", "hello-api", "elsewhere"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Echo who answered and what the ingress added.
			_, _ = io.WriteString(w, rev+" "+r.Header.Get("Knative-Serving-Revision")+" "+r.Header.Get("Knative-Serving-Tag")+" "+r.Host)
		}))
		t.Cleanup(srv.Close)
		backends[rev] = srv.URL
	}
	in := testIngress(t, backends)
	front := httptest.NewServer(in)
	t.Cleanup(front.Close)

	tests := []struct {
		name, host, path string
		header           map[string]string
		status           int
		body             string
	}{
		{"default route", "hello.ns.svc.cluster.local", "/", nil, 200, "hello-v1 hello-v1  hello.ns.svc.cluster.local"},
		{"short host, with port", "hello.ns:80", "/session", nil, 200, "hello-v1 hello-v1  hello.ns:80"},
		{"longer prefix wins", "hello.ns", "/api/x", nil, 200, "hello-api hello-api  hello.ns"},
		{"tag by host", "canary-hello.ns.svc.cluster.local", "/", nil, 200, "hello-v2 hello-v2 canary canary-hello.ns.svc.cluster.local"},
		{"tag by header beats the prefix", "hello.ns", "/api/x", map[string]string{"Knative-Serving-Tag": "canary"}, 200, "hello-v2 hello-v2 canary hello.ns"},
		{"unknown tag header", "hello.ns", "/", map[string]string{"Knative-Serving-Tag": "nope"}, 200, "hello-v1 hello-v1 nope hello.ns"},
		{"unknown host", "nope.ns", "/", nil, 404, "no ingress route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, front.URL+tt.path, nil)
			require.NoError(t, err)
			req.Host = tt.host
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			res, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			assert.Equal(t, tt.status, res.StatusCode, "%s", body)
			assert.Contains(t, string(body), tt.body)
		})
	}
}

func TestNoEndpoints(t *testing.T) {
	t.Parallel()
	in := testIngress(t, nil)
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Host = "hello.ns"
	rec := httptest.NewRecorder()
	in.ServeHTTP(rec, req)
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.Contains(t, rec.Body.String(), "hello-v1")
}

func TestPickSplit(t *testing.T) {
	t.Parallel()
	splits := []netv1alpha1.IngressBackendSplit{split("a", 0), split("b", 30), split("c", 70)}
	seen := map[string]int{}
	for range 2000 {
		s, ok := pickSplit(splits)
		require.True(t, ok)
		seen[s.ServiceName]++
	}
	assert.Zero(t, seen["a"], "a 0%% split gets nothing")
	assert.NotZero(t, seen["b"])
	assert.NotZero(t, seen["c"])
	_, ok := pickSplit([]netv1alpha1.IngressBackendSplit{split("a", 0)})
	assert.False(t, ok, "only 0%% splits: no backend")
}
