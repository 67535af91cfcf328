package knative

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

func TestCapacity(t *testing.T) {
	t.Parallel()
	r := newRig(t, "", withEnv("KNATIVE_MAX_SANDBOXES_PER_AGENT", "2"))
	agent := r.ensureAgent("capped")
	a := r.provision(agent, sandboxes.RoleWarm)
	r.provision(agent, sandboxes.RoleWarm)

	before := r.writes.n.Load()
	_, err := r.b.Provision(r.ctx(), newSpec(agent, sandboxes.RoleSession))
	require.ErrorIs(t, err, sandboxes.ErrCapacity)
	assert.ErrorContains(t, err, "KNATIVE_MAX_SANDBOXES_PER_AGENT")
	assert.Equal(t, before, r.writes.n.Load(), "a refused provision writes nothing")

	// A suspended sandbox frees its tag; resuming it needs one back.
	_, err = r.b.Suspend(r.ctx(), a)
	require.NoError(t, err)
	c := r.provision(agent, sandboxes.RoleSession)
	_, err = r.b.Resume(r.ctx(), a)
	require.ErrorIs(t, err, sandboxes.ErrCapacity)
	require.NoError(t, r.b.Destroy(r.ctx(), c))
	a, err = r.b.Resume(r.ctx(), a)
	require.NoError(t, err)
	assert.True(t, a.Running)
}

// TestResumeAfterGC: Knative's garbage collector removed a suspended
// sandbox's revision; Resume reports ErrGone and leaves no tag behind.
func TestResumeAfterGC(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	agent := r.ensureAgent("forgetful")
	sb := r.provision(agent, sandboxes.RoleSession)
	// Another provision, so the suspended one is not the latest created
	// (Knative's GC never removes that one).
	r.provision(agent, sandboxes.RoleWarm)
	sb, err := r.b.Suspend(r.ctx(), sb)
	require.NoError(t, err)
	require.NoError(t, r.admin.ServingV1().Revisions(r.ns).Delete(r.ctx(), sb.Data[DataRevision], metav1.DeleteOptions{}))

	_, err = r.b.Resume(r.ctx(), sb)
	require.ErrorIs(t, err, sandboxes.ErrGone)
	_, tagged := resources.FindTag(r.service("forgetful").Spec.Traffic, sb.Data[DataTag])
	assert.False(t, tagged)
	require.NoError(t, r.b.Destroy(r.ctx(), sb), "destroying what is gone is no error")
}

// TestProvisionFailure: a revision Knative cannot run fails the provision
// with ErrNotReady and leaves nothing behind.
func TestProvisionFailure(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	agent := r.ensureAgent("doomed")
	spec := newSpec(agent, sandboxes.RoleSession)
	r.fake.failRevision(resources.SandboxRevisionName("doomed", spec.ID), "Unable to fetch image \"kind.local/lap-harness:test\"")

	_, err := r.b.Provision(r.ctx(), spec)
	require.ErrorIs(t, err, sandboxes.ErrNotReady)
	assert.ErrorContains(t, err, "Unable to fetch image")
	assert.ErrorContains(t, err, "harness log: (no pod)")

	svc := r.service("doomed")
	assert.Equal(t, []servingv1.TrafficTarget{resources.BaseTarget("doomed-g1")}, svc.Spec.Traffic)
	assert.Equal(t, "doomed-g1", svc.Spec.Template.Name)
	r.eventually(func() bool {
		_, err := r.admin.ServingV1().Revisions(r.ns).Get(r.ctx(), resources.SandboxRevisionName("doomed", spec.ID), metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}, "failed revision left behind")
	_, err = r.kube.CoreV1().Secrets(r.ns).Get(r.ctx(), resources.SandboxSecretName("doomed", spec.ID), metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "failed sandbox's secret left behind: %v", err)

	// The agent is fine afterwards.
	sb := r.provision(agent, sandboxes.RoleSession)
	assert.True(t, sb.Running)

	// Missing parts of a spec are refused before anything is written.
	noToken := newSpec(agent, sandboxes.RoleSession)
	delete(noToken.Env, "HARNESS_AUTH_TOKEN")
	_, err = r.b.Provision(r.ctx(), noToken)
	require.ErrorContains(t, err, "HARNESS_AUTH_TOKEN")
	never := newSpec(newAgent("never-ensured"), sandboxes.RoleSession)
	_, err = r.b.Provision(r.ctx(), never)
	require.ErrorIs(t, err, sandboxes.ErrNotFound)
	_, err = r.kube.CoreV1().Secrets(r.ns).Get(r.ctx(), resources.SandboxSecretName("never-ensured", never.ID), metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "secret of a provision that wrote no Service left behind: %v", err)
}

// TestProvisionWaitsForHarness: Knative's readiness is not enough; the
// harness must answer GET /session with its token.
func TestProvisionWaitsForHarness(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	agent := r.ensureAgent("slow")
	r.fake.setWarmup(3)
	sb := r.provision(agent, sandboxes.RoleSession)
	pod := r.fake.pod(sb.Data[DataRevision])
	require.NotNil(t, pod)
	pod.mu.Lock()
	defer pod.mu.Unlock()
	assert.Equal(t, 4, pod.sessionGets, "three refusals, then ready")
}

// TestProvisionTimeout: a harness that never answers fails with
// ErrNotReady after KNATIVE_READY_TIMEOUT, and the sandbox is removed.
func TestProvisionTimeout(t *testing.T) {
	t.Parallel()
	r := newRig(t, "", withEnv("KNATIVE_READY_TIMEOUT", "2s"))
	agent := r.ensureAgent("stuck")
	r.fake.setWarmup(1 << 30)
	spec := newSpec(agent, sandboxes.RoleSession)
	_, err := r.b.Provision(r.ctx(), spec)
	require.ErrorIs(t, err, sandboxes.ErrNotReady)
	assert.ErrorContains(t, err, "503")
	_, tagged := resources.FindTag(r.service("stuck").Spec.Traffic, resources.SandboxTag(spec.ID))
	assert.False(t, tagged)

	// The caller's own cancellation is reported as such.
	r.fake.setWarmup(0)
	ctx, cancel := context.WithCancel(r.ctx())
	cancel()
	_, err = r.b.Provision(ctx, newSpec(agent, sandboxes.RoleSession))
	require.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, sandboxes.ErrNotReady)
}

// TestConcurrentProvisions: template updates of one agent are serialised,
// so Knative creates every revision even when sandboxes are provisioned at
// once (a template changed twice before Knative looks would lose one).
func TestConcurrentProvisions(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	agent := r.ensureAgent("busy")
	const n = 6
	var wg sync.WaitGroup
	results := make([]sandboxes.Sandbox, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			results[i], errs[i] = r.b.Provision(r.ctx(), newSpec(agent, sandboxes.RoleWarm))
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	svc := r.service("busy")
	assert.Equal(t, n, resources.SandboxTags(svc.Spec.Traffic))
	for _, sb := range results {
		assert.True(t, sb.Running)
		assert.Equal(t, http.StatusOK, r.get(sb.Endpoint, "/", ""))
	}
}
