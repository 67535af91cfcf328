package knative

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// TestHarnessTokenOfOldRevision: a revision provisioned by a lapd before
// sandbox Secrets has the token as a plain value; adoption still reads it.
func TestHarnessTokenOfOldRevision(t *testing.T) {
	t.Parallel()
	rev := &servingv1.Revision{Spec: servingv1.RevisionSpec{PodSpec: corev1.PodSpec{Containers: []corev1.Container{{
		Env: []corev1.EnvVar{{Name: "HARNESS_AUTH_TOKEN", Value: "old-tok"}},
	}}}}}
	token, err := (&Backend{}).harnessToken(t.Context(), rev)
	require.NoError(t, err)
	assert.Equal(t, "old-tok", token)
}
