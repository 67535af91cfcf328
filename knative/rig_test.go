package knative

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned"

	"lap.dev/lap/config"
	"lap.dev/lap/e2e/kubeapitest"
	"lap.dev/lap/sandboxes"
)

// The RBAC test acts as lapd's ServiceAccount from config/deploy; the
// shared apiserver knows its token from the start.
const (
	lapdNamespace = "lap-system"
	lapdAccount   = "lapd"
	lapdToken     = "lapd-sa-token-for-tests"
)

// shared is one kube-apiserver, with Knative's CRDs, for every test of
// the package; each test works in its own namespace.
var shared struct {
	once sync.Once
	srv  *kubeapitest.Server
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop the shared kube-apiserver: %v\n", err)
		}
	}
	os.Exit(code)
}

// apiServer starts the shared apiserver on first use and installs
// Knative Serving's CRDs from the knative.dev/serving module.
func apiServer(t testing.TB) *kubeapitest.Server {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		srv, err := kubeapitest.Start(ctx, kubeapitest.Options{Tokens: []kubeapitest.Token{
			kubeapitest.ServiceAccountToken(lapdToken, lapdNamespace, lapdAccount),
		}})
		if err != nil {
			shared.err = err
			return
		}
		shared.srv = srv
		dir, err := kubeapitest.ModuleDir(ctx, "knative.dev/serving")
		if err != nil {
			shared.err = err
			return
		}
		crds, err := kubeapitest.ReadManifests(filepath.Join(dir, "config", "core", "300-resources"))
		if err != nil {
			shared.err = err
			return
		}
		if err := kubeapitest.Apply(ctx, srv.Config, crds...); err != nil {
			shared.err = fmt.Errorf("install Knative CRDs: %w\n%s", err, srv.LogTail(4096))
		}
	})
	if shared.err != nil {
		t.Fatalf("kube-apiserver with Knative CRDs: %v", shared.err)
	}
	return shared.srv
}

// writeCounter counts the API requests that changed state (2xx answers to
// anything but GET), and separately the attempts refused with a conflict,
// which the backend retries.
type writeCounter struct {
	n         atomic.Int64
	conflicts atomic.Int64
	rt        http.RoundTripper
}

func (c *writeCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	res, err := c.rt.RoundTrip(r)
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return res, err
	}
	if err == nil && res.StatusCode/100 == 2 {
		c.n.Add(1)
	} else if err == nil && res.StatusCode == http.StatusConflict {
		c.conflicts.Add(1)
	}
	return res, err
}

// rig is a Backend on the shared apiserver with the fake Knative behind
// it, in a namespace of its own.
type rig struct {
	t      testing.TB
	ns     string
	b      *Backend
	fake   *fakeKnative
	writes *writeCounter
	admin  servingclient.Interface
	kube   kubernetes.Interface
	cfg    config.Config
	// client reaches sandboxes the way lapd does (cluster DNS → ingress).
	client *http.Client
	// clientConfig is the Backend's; nil = the admin's.
	clientConfig *rest.Config
}

type rigOption func(r *rig, env map[string]string)

// withIngress makes lapd reach sandboxes through the ingress URL, by tag
// host or (header) by the Knative-Serving-Tag header.
func withIngress(header bool) rigOption {
	return func(r *rig, env map[string]string) {
		env["KNATIVE_INGRESS_URL"] = r.fake.ingress.URL
		env["KNATIVE_INGRESS_TAG_HEADER"] = fmt.Sprint(header)
	}
}

func withEnv(k, v string) rigOption {
	return func(_ *rig, env map[string]string) { env[k] = v }
}

// withClientConfig makes the Backend use rc (e.g. a ServiceAccount's)
// instead of the admin's config.
func withClientConfig(rc *rest.Config) rigOption {
	return func(r *rig, _ map[string]string) { r.clientConfig = rc }
}

func newRig(t testing.TB, namespace string, opts ...rigOption) *rig {
	t.Helper()
	srv := apiServer(t)
	ctx := context.Background()
	r := &rig{t: t, ns: namespace}
	if r.ns == "" {
		r.ns = "t-" + strings.ToLower(uuid.NewString()[:8])
	}
	var err error
	r.admin, err = servingclient.NewForConfig(srv.Config)
	require.NoError(t, err)
	r.kube, err = kubernetes.NewForConfig(srv.Config)
	require.NoError(t, err)
	_, err = r.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.ns}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		require.NoError(t, err)
	}
	r.fake = startFakeKnative(t, r.admin, r.kube, r.ns)
	r.client = r.fake.httpClient()

	env := map[string]string{
		"MASTER_KEY":            "0123456789abcdef0123",
		"LAP_BACKEND":           "knative",
		"KNATIVE_NAMESPACE":     r.ns,
		"HARNESS_IMAGE_LAP":     "kind.local/lap-harness:test",
		"KNATIVE_READY_TIMEOUT": "60s",
	}
	for _, o := range opts {
		o(r, env)
	}
	r.cfg, err = config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, "")
	require.NoError(t, err)

	rc := rest.CopyConfig(srv.Config)
	if r.clientConfig != nil {
		rc = rest.CopyConfig(r.clientConfig)
	}
	r.writes = &writeCounter{}
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		r.writes.rt = rt
		return r.writes
	})
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	r.b, err = NewForConfig(startCtx, r.cfg, log, rc)
	require.NoError(t, err)
	r.b.http = r.fake.httpClient()
	t.Cleanup(func() { r.b.Close(context.Background()) })
	return r
}

// ctx is a context for one backend call.
func (r *rig) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	r.t.Cleanup(cancel)
	return ctx
}

func (r *rig) service(name string) *servingv1.Service {
	svc, err := r.admin.ServingV1().Services(r.ns).Get(context.Background(), name, metav1.GetOptions{})
	require.NoError(r.t, err)
	return svc
}

// get calls the harness at ep the way lapd does.
func (r *rig) get(ep sandboxes.Endpoint, path, token string) int {
	req, err := http.NewRequest(http.MethodGet, ep.URL+path, nil)
	require.NoError(r.t, err)
	ep.Apply(req)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := r.client.Do(req)
	require.NoError(r.t, err)
	res.Body.Close()
	return res.StatusCode
}

// eventually polls cond until it holds, failing t after a deadline.
func (r *rig) eventually(cond func() bool, format string, args ...any) {
	r.t.Helper()
	require.Eventuallyf(r.t, cond, 30*time.Second, 10*time.Millisecond, format, args...)
}

// newAgent is an agent of the lap harness with every part of its
// environment, under a fresh id.
func newAgent(name string) sandboxes.AgentSpec {
	return sandboxes.AgentSpec{
		ID:         uuid.NewString(),
		Name:       name,
		HarnessID:  "lap",
		Generation: 1,
		Env: map[string]string{
			"REPO_URL":         "https://git.example/acme/app.git",
			"BRANCH":           "main",
			"AGENT_PROMPT":     "You review pull requests.",
			"LAP_MODEL":        "mock/tools",
			"LITELLM_API_BASE": "http://lapd.lap-system.svc.cluster.local/llm",
		},
		Secrets: map[string]string{"GITHUB_TOKEN": "ghp_x"},
	}
}

func ptr[T any](v T) *T { return &v }

func newSpec(agent sandboxes.AgentSpec, role string) sandboxes.Spec {
	id := uuid.Must(uuid.NewV7())
	return sandboxes.Spec{
		ID:    id.String(),
		Role:  role,
		Agent: agent,
		Env: map[string]string{
			"HARNESS_AUTH_TOKEN": "harness-" + id.String(),
			"LITELLM_API_KEY":    "lapsb_" + id.String(),
		},
	}
}
