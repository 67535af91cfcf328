package knative

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// TestAdoption: a restarted lapd finds its sandboxes, running or not.
func TestAdoption(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	agent := r.ensureAgent("adopted")
	running := r.provision(agent, sandboxes.RoleWarm)
	idle := r.provision(agent, sandboxes.RoleSession)
	idle, err := r.b.Suspend(r.ctx(), idle)
	require.NoError(t, err)
	require.NoError(t, r.b.Close(t.Context()))

	restarted := newRigBackend(t, r)
	listed, err := restarted.List(r.ctx())
	require.NoError(t, err)
	require.Len(t, listed, 2)
	byID := map[string]sandboxes.Sandbox{listed[0].ID: listed[0], listed[1].ID: listed[1]}
	assert.Equal(t, running, byID[running.ID])
	assert.False(t, byID[idle.ID].Running)
	assert.Equal(t, idle.Data, byID[idle.ID].Data)
	assert.Equal(t, agent.ID, byID[idle.ID].AgentID)
	assert.EqualValues(t, 1, byID[idle.ID].Generation)

	resumed, err := restarted.Resume(r.ctx(), byID[idle.ID])
	require.NoError(t, err)
	assert.True(t, resumed.Running)

	logs, err := restarted.Logs(r.ctx(), resumed, 1024)
	require.NoError(t, err)
	assert.Empty(t, logs, "no kubelet here, so no pod and no log")
}

// newRigBackend is a second Backend on r's namespace, as after a restart.
func newRigBackend(t *testing.T, r *rig) *Backend {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := NewForConfig(ctx, r.cfg, r.b.log, apiServer(t).Config)
	require.NoError(t, err)
	b.http = r.fake.httpClient()
	t.Cleanup(func() { b.Close(context.Background()) })
	return b
}

// TestDestroyByID: the control plane destroys a sandbox whose provision
// had not returned with a record holding only its id (and agent id). The
// backend finds it by its revision's label or by its Service's route.
func TestDestroyByID(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	agent := r.ensureAgent("orphans")
	tests := []struct {
		name string
		bare func(sb sandboxes.Sandbox) sandboxes.Sandbox
	}{
		{"id and agent id", func(sb sandboxes.Sandbox) sandboxes.Sandbox {
			return sandboxes.Sandbox{ID: sb.ID, AgentID: sb.AgentID, Generation: sb.Generation}
		}},
		{"id alone", func(sb sandboxes.Sandbox) sandboxes.Sandbox { return sandboxes.Sandbox{ID: sb.ID} }},
	}
	for _, tt := range tests {
		sb := r.provision(agent, sandboxes.RoleWarm)
		r.eventually(func() bool { return len(r.mustList()) > 0 }, "%s: the informer sees the revision", tt.name)
		require.NoError(t, r.b.Destroy(r.ctx(), tt.bare(sb)), tt.name)
		_, err := r.admin.ServingV1().Revisions(r.ns).Get(r.ctx(), sb.Data[DataRevision], metav1.GetOptions{})
		assert.True(t, apierrors.IsNotFound(err), "%s: revision after destroy: %v", tt.name, err)
		r.assertSecretGone(sb)
		_, tagged := resources.FindTag(r.service("orphans").Spec.Traffic, sb.Data[DataTag])
		assert.False(t, tagged, "%s: tag after destroy", tt.name)
		r.eventually(func() bool { return len(r.mustList()) == 0 }, "%s: List after destroy", tt.name)
	}

	// lapd stopped between a provision's Secret and its Service update:
	// destroying the record takes the Secret, and no other sandbox's.
	kept := r.provision(agent, sandboxes.RoleWarm)
	spec := newSpec(agent, sandboxes.RoleSession)
	left := resources.MakeSandboxSecret(spec, r.b.p, nil)
	_, err := r.kube.CoreV1().Secrets(r.ns).Create(r.ctx(), left, metav1.CreateOptions{})
	require.NoError(t, err)
	require.NoError(t, r.b.Destroy(r.ctx(), sandboxes.Sandbox{ID: spec.ID, AgentID: agent.ID}))
	_, err = r.kube.CoreV1().Secrets(r.ns).Get(r.ctx(), left.Name, metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "secret a stopped provision left: %v", err)
	r.sandboxSecret(kept)

	// A sandbox found nowhere is already destroyed.
	require.NoError(t, r.b.Destroy(r.ctx(), sandboxes.Sandbox{ID: "01234567-89ab-cdef-0123-456789abcdef", AgentID: agent.ID}))
	require.NoError(t, r.b.Destroy(r.ctx(), sandboxes.Sandbox{ID: "never-provisioned"}))
	require.NoError(t, r.b.Destroy(r.ctx(), sandboxes.Sandbox{ID: "no label holds this/"}))
}
