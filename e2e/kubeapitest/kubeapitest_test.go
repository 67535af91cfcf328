package kubeapitest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

const manifest = `
# a comment-only document is skipped
---
apiVersion: v1
kind: Namespace
metadata:
  name: widgets
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.lap.dev
spec:
  group: example.lap.dev
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
---
apiVersion: example.lap.dev/v1
kind: Widget
metadata:
  name: first
  namespace: widgets
spec:
  size: 3
`

func TestServer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := StartForTest(t, Options{Tokens: []Token{
		ServiceAccountToken("viewer-token", "widgets", "viewer"),
	}})

	kube, err := kubernetes.NewForConfig(s.Config)
	require.NoError(t, err)
	v, err := kube.Discovery().ServerVersion()
	require.NoError(t, err)
	assert.Equal(t, "v1.34.4", v.GitVersion, "the binary must be linked with the release version")

	for _, f := range []string{s.Kubeconfig, s.CAFile, s.ServiceAccountKeyFile} {
		_, err := os.Stat(f)
		require.NoError(t, err)
	}

	objs, err := Decode([]byte(manifest))
	require.NoError(t, err)
	require.Len(t, objs, 3)
	// The custom resource comes before its CRD's establishment; Apply
	// orders them.
	require.NoError(t, Apply(ctx, s.Config, objs[2], objs[1], objs[0]))
	require.NoError(t, Apply(ctx, s.Config, objs...), "apply is idempotent")

	dyn, err := dynamic.NewForConfig(s.Config)
	require.NoError(t, err)
	w, err := dyn.Resource(schema.GroupVersionResource{Group: "example.lap.dev", Version: "v1", Resource: "widgets"}).
		Namespace("widgets").Get(ctx, "first", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "first", w.GetName())

	// A static token authenticates its user, whom RBAC grants nothing.
	viewer, err := kubernetes.NewForConfig(s.ConfigFor("viewer-token"))
	require.NoError(t, err)
	_, err = viewer.CoreV1().Namespaces().Get(ctx, "widgets", metav1.GetOptions{})
	require.True(t, apierrors.IsForbidden(err), "want Forbidden, got %v", err)
	assert.Contains(t, err.Error(), "system:serviceaccount:widgets:viewer")
	stranger, err := kubernetes.NewForConfig(s.ConfigFor("wrong-token"))
	require.NoError(t, err)
	_, err = stranger.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	require.True(t, apierrors.IsUnauthorized(err), "want Unauthorized, got %v", err)
}

func TestStartFailsClearly(t *testing.T) {
	t.Parallel()
	_, err := Start(context.Background(), Options{Binary: "/nonexistent/lap-kubeapi"})
	require.ErrorContains(t, err, "/nonexistent/lap-kubeapi")
}
