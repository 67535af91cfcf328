package knative

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned"

	"lap.dev/lap/e2e/kubeapitest"
	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// TestRBAC applies config/deploy (namespaces, lapd, its ServiceAccount and
// Role), runs the backend's whole lifecycle as lapd's ServiceAccount, and
// checks that what the Role does not grant is refused.
func TestRBAC(t *testing.T) {
	t.Parallel()
	srv := apiServer(t)
	// The whole of config/deploy: the apiserver validates the lapd
	// Deployment, its volume claim and Service too.
	objs, err := kubeapitest.ReadManifests(filepath.Join("..", "config", "deploy"))
	require.NoError(t, err)
	ctx := t.Context()
	require.NoError(t, kubeapitest.Apply(ctx, srv.Config, objs...))

	const agents = "lap-agents" // KNATIVE_NAMESPACE in config/deploy
	asLapd := srv.ConfigFor(lapdToken)
	r := newRig(t, agents, withClientConfig(asLapd))
	runLifecycle(t, r, func(svc, tag string) sandboxes.Endpoint {
		return sandboxes.Endpoint{URL: "http://" + tagHost(tag, svc, agents), Proxied: true}
	})

	// Failure paths use the rest of the Role: a failed provision cleans
	// up, reading the (absent) pod's log on the way.
	agent := newAgent("rbac-fail")
	require.NoError(t, r.b.EnsureAgent(r.ctx(), agent))
	spec := newSpec(agent, sandboxes.RoleSession)
	r.fake.failRevision(resources.SandboxRevisionName(agent.Name, spec.ID), "no such image")
	_, err = r.b.Provision(r.ctx(), spec)
	require.ErrorIs(t, err, sandboxes.ErrNotReady)

	// A sandbox pod's log (pods list + pods/log get). This apiserver has
	// no kubelet, so a pod is never scheduled and its log is empty, but
	// reading it is authorised.
	sb, err := r.b.Provision(r.ctx(), newSpec(agent, sandboxes.RoleSession))
	require.NoError(t, err)
	_, err = r.kube.CoreV1().Pods(agents).Create(r.ctx(), sandboxPod(sb), metav1.CreateOptions{})
	require.NoError(t, err)
	logs, err := r.b.Logs(r.ctx(), sb, 1024)
	require.NoError(t, err)
	assert.Empty(t, logs)
	require.NoError(t, r.b.DeleteAgent(r.ctx(), agent))

	// lapd started on a namespace its Role does not cover fails at once,
	// saying why.
	wrongNS := r.cfg
	wrongNS.KnativeNamespace = "default"
	_, err = NewForConfig(ctx, wrongNS, r.b.log, asLapd)
	require.ErrorContains(t, err, "apply config/deploy's Role")

	// What the Role does not grant.
	kube, err := kubernetes.NewForConfig(asLapd)
	require.NoError(t, err)
	sc, err := servingclient.NewForConfig(asLapd)
	require.NoError(t, err)
	refused := []struct {
		name string
		do   func() error
	}{
		{"create a revision", func() error {
			_, err := sc.ServingV1().Revisions(agents).Create(ctx, &servingv1.Revision{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		}},
		{"list secrets", func() error {
			_, err := kube.CoreV1().Secrets(agents).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"read a secret in lap-system", func() error {
			_, err := kube.CoreV1().Secrets("lap-system").Get(ctx, "lapd", metav1.GetOptions{})
			return err
		}},
		{"create a Deployment", func() error {
			_, err := kube.AppsV1().Deployments(agents).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		}},
		{"create a Knative Service elsewhere", func() error {
			_, err := sc.ServingV1().Services("default").Create(ctx, resources.MakeService(newAgent("elsewhere"), r.b.p), metav1.CreateOptions{})
			return err
		}},
		{"read a pod's log in lap-system", func() error {
			_, err := kube.CoreV1().Pods("lap-system").GetLogs("x", &corev1.PodLogOptions{}).DoRaw(ctx)
			return err
		}},
		{"delete a pod", func() error {
			return kube.CoreV1().Pods(agents).Delete(ctx, "x", metav1.DeleteOptions{})
		}},
		{"patch a Knative Service", func() error {
			_, err := sc.ServingV1().Services(agents).Patch(ctx, "reviewer", "application/merge-patch+json", []byte(`{}`), metav1.PatchOptions{})
			return err
		}},
	}
	for _, tt := range refused {
		err := tt.do()
		assert.True(t, apierrors.IsForbidden(err), "%s: want Forbidden, got %v", tt.name, err)
	}
}

// sandboxPod is a pod as Knative would run it for sb's revision, compliant
// with the namespace's restricted Pod Security profile.
func sandboxPod(sb sandboxes.Sandbox) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:   sb.Data[DataRevision] + "-pod",
			Labels: map[string]string{serving.RevisionLabelKey: sb.Data[DataRevision]},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  resources.ContainerName,
			Image: "kind.local/lap-harness:test",
			SecurityContext: &corev1.SecurityContext{
				RunAsNonRoot:             ptr(true),
				AllowPrivilegeEscalation: ptr(false),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		}}},
	}
}
