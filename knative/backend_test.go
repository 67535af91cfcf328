package knative

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// TestLifecycle is the whole life of an agent and its sandboxes against a
// real kube-apiserver, once per way lapd reaches a sandbox.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	modes := []struct {
		name string
		opt  rigOption
		want func(r *rig, svc, tag string) sandboxes.Endpoint
	}{
		{"in-cluster", func(*rig, map[string]string) {}, func(r *rig, svc, tag string) sandboxes.Endpoint {
			return sandboxes.Endpoint{URL: "http://" + tagHost(tag, svc, r.ns), Proxied: true}
		}},
		{"ingress by tag host", withIngress(false), func(r *rig, svc, tag string) sandboxes.Endpoint {
			return sandboxes.Endpoint{URL: r.fake.ingress.URL, Host: tagHost(tag, svc, r.ns), Proxied: true}
		}},
		{"ingress by tag header", withIngress(true), func(r *rig, svc, tag string) sandboxes.Endpoint {
			return sandboxes.Endpoint{URL: r.fake.ingress.URL, Host: svc + "." + r.ns + ".svc.cluster.local", Header: map[string]string{"Knative-Serving-Tag": tag}, Proxied: true}
		}},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, "", mode.opt)
			runLifecycle(t, r, func(svc, tag string) sandboxes.Endpoint { return mode.want(r, svc, tag) })
		})
	}
}

// runLifecycle is shared with the RBAC test, which runs it as lapd's
// ServiceAccount.
func runLifecycle(t *testing.T, r *rig, wantEndpoint func(svc, tag string) sandboxes.Endpoint) {
	agent := newAgent("reviewer")

	// Create agent: the Service, its base revision pinned at 100%.
	require.NoError(t, r.b.EnsureAgent(r.ctx(), agent))
	svc := r.service("reviewer")
	assert.Equal(t, []servingv1.TrafficTarget{resources.BaseTarget("reviewer-g1")}, svc.Spec.Traffic)
	assert.Equal(t, "reviewer-g1", svc.Spec.Template.Name)
	assert.Equal(t, "reviewer-g1", svc.Status.LatestCreatedRevisionName)
	secret, err := r.kube.CoreV1().Secrets(r.ns).Get(r.ctx(), "reviewer-secrets", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "ghp_x", string(secret.Data["GITHUB_TOKEN"]))
	assert.Len(t, secret.Data[resources.BaseTokenKey], 48)

	// Provision ×3: three tagged 0% targets, one pod each.
	var sbs []sandboxes.Sandbox
	var specs []sandboxes.Spec
	for _, role := range []string{sandboxes.RoleWarm, sandboxes.RoleWarm, sandboxes.RoleSession} {
		spec := newSpec(agent, role)
		sb, err := r.b.Provision(r.ctx(), spec)
		require.NoError(t, err)
		tag := resources.SandboxTag(spec.ID)
		assert.True(t, sb.Running)
		assert.Equal(t, wantEndpoint("reviewer", tag), sb.Endpoint)
		assert.Equal(t, map[string]string{
			DataNamespace: r.ns, DataService: "reviewer", DataRevision: "reviewer-" + tag, DataTag: tag,
		}, sb.Data)
		assert.Equal(t, http.StatusOK, r.get(sb.Endpoint, "/session", spec.Env["HARNESS_AUTH_TOKEN"]))
		assert.Equal(t, http.StatusUnauthorized, r.get(sb.Endpoint, "/session", "wrong"))
		sbs, specs = append(sbs, sb), append(specs, spec)
	}
	svc = r.service("reviewer")
	want := []servingv1.TrafficTarget{resources.BaseTarget("reviewer-g1")}
	for _, sb := range sbs {
		want = append(want, resources.SandboxTarget(sb.Data[DataTag], sb.Data[DataRevision]))
	}
	assert.Equal(t, want, svc.Spec.Traffic)
	for i, sb := range sbs {
		rev, err := r.admin.ServingV1().Revisions(r.ns).Get(r.ctx(), sb.Data[DataRevision], metav1.GetOptions{})
		require.NoError(t, err)
		assert.Equal(t, "1", rev.Annotations["autoscaling.knative.dev/min-scale"], rev.Name)
		assert.Equal(t, "1", rev.Annotations["autoscaling.knative.dev/max-scale"], rev.Name)
		assert.Equal(t, sb.ID, rev.Labels[resources.LabelSandboxID])
		assert.Equal(t, specs[i].Role, rev.Labels[resources.LabelRole])
		assertNoTokens(t, rev, specs[i])
		secret := r.sandboxSecret(sb)
		assert.Equal(t, specs[i].Env["HARNESS_AUTH_TOKEN"], string(secret.Data["HARNESS_AUTH_TOKEN"]))
		assert.Equal(t, specs[i].Env["LITELLM_API_KEY"], string(secret.Data["LITELLM_API_KEY"]))
		assert.Equal(t, sb.ID, secret.Labels[resources.LabelSandboxID])
		assert.Equal(t, agent.ID, secret.Labels[resources.LabelAgentID])
		require.Len(t, secret.OwnerReferences, 1, "the Service owns it")
		assert.Equal(t, svc.UID, secret.OwnerReferences[0].UID)
		token, err := r.b.harnessToken(r.ctx(), rev)
		require.NoError(t, err, "adoption reads the token from the Secret")
		assert.Equal(t, specs[i].Env["HARNESS_AUTH_TOKEN"], token)
	}

	// Adoption sees all three running.
	listed, err := r.b.List(r.ctx())
	require.NoError(t, err)
	assert.ElementsMatch(t, sbs, listed)

	// Suspend: the tag leaves the route and the pod goes.
	first := sbs[0]
	suspended, err := r.b.Suspend(r.ctx(), first)
	require.NoError(t, err)
	assert.False(t, suspended.Running)
	_, tagged := resources.FindTag(r.service("reviewer").Spec.Traffic, first.Data[DataTag])
	assert.False(t, tagged, "tag still in the route after suspend")
	r.eventually(func() bool { return r.fake.pod(first.Data[DataRevision]) == nil }, "pod of %s not scaled to zero", first.ID)
	assert.Equal(t, http.StatusNotFound, r.get(first.Endpoint, "/session", specs[0].Env["HARNESS_AUTH_TOKEN"]))
	r.eventually(func() bool {
		listed, err := r.b.List(r.ctx())
		return err == nil && !listed[slices.IndexFunc(listed, func(s sandboxes.Sandbox) bool { return s.ID == first.ID })].Running
	}, "List still reports %s running", first.ID)
	again, err := r.b.Suspend(r.ctx(), suspended)
	require.NoError(t, err, "suspend is idempotent")
	assert.False(t, again.Running)

	// Resume: the tag is back and the harness answers.
	resumed, err := r.b.Resume(r.ctx(), suspended)
	require.NoError(t, err)
	assert.True(t, resumed.Running)
	assert.Equal(t, first.Endpoint, resumed.Endpoint)
	assert.Equal(t, http.StatusOK, r.get(resumed.Endpoint, "/session", specs[0].Env["HARNESS_AUTH_TOKEN"]))
	_, tagged = resources.FindTag(r.service("reviewer").Spec.Traffic, first.Data[DataTag])
	assert.True(t, tagged)

	// Destroy the newest (the template names it) and the first.
	for _, sb := range []sandboxes.Sandbox{sbs[2], resumed} {
		require.NoError(t, r.b.Destroy(r.ctx(), sb))
		_, err := r.admin.ServingV1().Revisions(r.ns).Get(r.ctx(), sb.Data[DataRevision], metav1.GetOptions{})
		assert.True(t, apierrors.IsNotFound(err), "revision %s after destroy: %v", sb.Data[DataRevision], err)
		r.assertSecretGone(sb)
		_, tagged := resources.FindTag(r.service("reviewer").Spec.Traffic, sb.Data[DataTag])
		assert.False(t, tagged)
		require.NoError(t, r.b.Destroy(r.ctx(), sb), "destroy is idempotent")
	}
	svc = r.service("reviewer")
	assert.Equal(t, "reviewer-g1", svc.Spec.Template.Name, "template points back at the base revision")
	assert.Equal(t, []servingv1.TrafficTarget{resources.BaseTarget("reviewer-g1"), resources.SandboxTarget(sbs[1].Data[DataTag], sbs[1].Data[DataRevision])}, svc.Spec.Traffic)
	r.eventually(func() bool {
		return r.service("reviewer").Status.LatestCreatedRevisionName == "reviewer-g1"
	}, "Knative did not take the base revision back as latest")
	r.eventually(func() bool {
		_, err := r.admin.ServingV1().Revisions(r.ns).Get(r.ctx(), sbs[2].Data[DataRevision], metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}, "a destroyed revision came back")
	// List reads the informer's cache, which sees the deletes a little later.
	r.eventually(func() bool {
		listed := r.mustList()
		return len(listed) == 1 && listed[0].ID == sbs[1].ID
	}, "List after destroy: want only %s", sbs[1].ID)

	// Delete the agent: Service and Secret go, and with them the rest.
	require.NoError(t, r.b.DeleteAgent(r.ctx(), agent))
	_, err = r.admin.ServingV1().Services(r.ns).Get(r.ctx(), "reviewer", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "service after DeleteAgent: %v", err)
	_, err = r.kube.CoreV1().Secrets(r.ns).Get(r.ctx(), "reviewer-secrets", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "secret after DeleteAgent: %v", err)
	r.assertSecretGone(sbs[1])
	r.eventually(func() bool {
		listed, err := r.b.List(r.ctx())
		return err == nil && len(listed) == 0
	}, "sandboxes left after DeleteAgent")
	require.NoError(t, r.b.DeleteAgent(r.ctx(), agent), "DeleteAgent is idempotent")
}

// TestWrites pins down how many API writes each operation makes; the
// benchmark reports the same figures with timings.
func TestWrites(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	agent := newAgent("counted")
	count := func(op func() error) int64 {
		t.Helper()
		before := r.writes.n.Load()
		require.NoError(t, op())
		return r.writes.n.Load() - before
	}
	assert.EqualValues(t, 2, count(func() error { return r.b.EnsureAgent(r.ctx(), agent) }), "EnsureAgent: Secret + Service")
	assert.EqualValues(t, 0, count(func() error { return r.b.EnsureAgent(r.ctx(), agent) }), "EnsureAgent again (lapd restart)")

	var sb, older sandboxes.Sandbox
	assert.EqualValues(t, 2, count(func() (err error) {
		older, err = r.b.Provision(r.ctx(), newSpec(agent, sandboxes.RoleWarm))
		return err
	}), "Provision: sandbox Secret + Service")
	assert.EqualValues(t, 2, count(func() (err error) { sb, err = r.b.Provision(r.ctx(), newSpec(agent, sandboxes.RoleWarm)); return err }), "Provision: sandbox Secret + Service")

	// A warm claim is the control plane's bbolt and an HTTP call to the
	// harness: nothing of this backend, and no API write.
	assert.EqualValues(t, 0, count(func() error {
		req, err := http.NewRequest(http.MethodPost, sb.Endpoint.URL+"/session", nil)
		if err != nil {
			return err
		}
		sb.Endpoint.Apply(req)
		req.Header.Set("Authorization", "Bearer "+harnessTokenOf(t, r, sb))
		res, err := r.client.Do(req)
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("POST /session: %s", res.Status)
		}
		return nil
	}), "warm claim")
	assert.EqualValues(t, 0, count(func() (err error) { sb, err = r.b.Resume(r.ctx(), sb); return err }), "Resume of a running sandbox")

	assert.EqualValues(t, 1, count(func() (err error) { sb, err = r.b.Suspend(r.ctx(), sb); return err }), "Suspend")
	assert.EqualValues(t, 0, count(func() (err error) { sb, err = r.b.Suspend(r.ctx(), sb); return err }), "Suspend again")
	assert.EqualValues(t, 1, count(func() (err error) { sb, err = r.b.Resume(r.ctx(), sb); return err }), "Resume")
	assert.EqualValues(t, 3, count(func() error { return r.b.Destroy(r.ctx(), older) }), "Destroy: route + revision + Secret")
	assert.EqualValues(t, 3, count(func() error { return r.b.Destroy(r.ctx(), sb) }), "Destroy of the newest: route and template + revision + Secret")
	assert.EqualValues(t, 0, count(func() error { return r.b.Destroy(r.ctx(), sb) }), "Destroy again")
}

func harnessTokenOf(t *testing.T, r *rig, sb sandboxes.Sandbox) string {
	rev, err := r.admin.ServingV1().Revisions(r.ns).Get(context.Background(), sb.Data[DataRevision], metav1.GetOptions{})
	require.NoError(t, err)
	token, err := r.b.harnessToken(context.Background(), rev)
	require.NoError(t, err)
	return token
}

// assertNoTokens checks that no value of spec.Env is in rev, only
// references to the sandbox's Secret.
func assertNoTokens(t *testing.T, rev *servingv1.Revision, spec sandboxes.Spec) {
	t.Helper()
	raw, err := json.Marshal(rev)
	require.NoError(t, err)
	for k, v := range spec.Env {
		assert.NotContains(t, string(raw), v, "value of %s in revision %s", k, rev.Name)
	}
	for _, e := range rev.Spec.Containers[0].Env {
		if _, ok := spec.Env[e.Name]; ok {
			assert.Empty(t, e.Value, e.Name)
			require.NotNil(t, e.ValueFrom, e.Name)
			assert.Equal(t, &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: resources.SandboxSecretName(spec.Agent.Name, spec.ID)},
				Key:                  e.Name,
			}, e.ValueFrom.SecretKeyRef, e.Name)
		}
	}
}

func (r *rig) sandboxSecret(sb sandboxes.Sandbox) *corev1.Secret {
	r.t.Helper()
	s, err := r.kube.CoreV1().Secrets(r.ns).Get(context.Background(), sb.Data[DataRevision], metav1.GetOptions{})
	require.NoError(r.t, err)
	return s
}

func (r *rig) assertSecretGone(sb sandboxes.Sandbox) {
	r.t.Helper()
	_, err := r.kube.CoreV1().Secrets(r.ns).Get(context.Background(), sb.Data[DataRevision], metav1.GetOptions{})
	assert.True(r.t, apierrors.IsNotFound(err), "secret of sandbox %s: %v", sb.ID, err)
}

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

// TestNoWriteOnClaimPath: the Backend has exactly the contract's methods
// (plus Close); there is no claim method that could write.
func TestNoWriteOnClaimPath(t *testing.T) {
	t.Parallel()
	contract := reflect.TypeFor[sandboxes.Backend]()
	var want []string
	for m := range contract.Methods() {
		want = append(want, m.Name)
	}
	want = append(want, "Close")
	var got []string
	for m := range reflect.TypeFor[*Backend]().Methods() {
		got = append(got, m.Name)
	}
	assert.ElementsMatch(t, want, got)
}

func TestEnsureAgent(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	agent := newAgent("evolving")
	require.NoError(t, r.b.EnsureAgent(r.ctx(), agent))
	sb := r.provision(agent, sandboxes.RoleSession)

	// A new generation takes the default route; running sandboxes stay.
	agent.Generation = 2
	agent.Secrets = map[string]string{"GITHUB_TOKEN": "ghp_rotated", "NPM_TOKEN": "npm_x"}
	before, err := r.kube.CoreV1().Secrets(r.ns).Get(r.ctx(), "evolving-secrets", metav1.GetOptions{})
	require.NoError(t, err)
	require.NoError(t, r.b.EnsureAgent(r.ctx(), agent))
	svc := r.service("evolving")
	assert.Equal(t, "evolving-g2", svc.Spec.Template.Name)
	assert.Equal(t, []servingv1.TrafficTarget{resources.BaseTarget("evolving-g2"), resources.SandboxTarget(sb.Data[DataTag], sb.Data[DataRevision])}, svc.Spec.Traffic)
	assert.Equal(t, "evolving-g2", svc.Status.LatestCreatedRevisionName)
	assert.Equal(t, "2", svc.Annotations[resources.LabelGeneration])
	after, err := r.kube.CoreV1().Secrets(r.ns).Get(r.ctx(), "evolving-secrets", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "ghp_rotated", string(after.Data["GITHUB_TOKEN"]))
	assert.Equal(t, "npm_x", string(after.Data["NPM_TOKEN"]))
	assert.Equal(t, before.Data[resources.BaseTokenKey], after.Data[resources.BaseTokenKey], "the base token survives updates")
	sb, err = r.b.Resume(r.ctx(), sb)
	require.NoError(t, err, "the old generation's sandbox still runs")
	assert.True(t, sb.Running)

	// A same-named Service of another agent is not taken over.
	other := newAgent("evolving")
	err = r.b.EnsureAgent(r.ctx(), other)
	require.ErrorContains(t, err, "belongs to agent")
	_, err = r.b.Provision(r.ctx(), newSpec(other, sandboxes.RoleSession))
	require.ErrorContains(t, err, "not lap's agent")
	require.ErrorContains(t, r.b.DeleteAgent(r.ctx(), other), "not lap's agent")

	// Names Knative cannot take, and unresolved images, fail clearly.
	bad := newAgent("9lives")
	require.ErrorContains(t, r.b.EnsureAgent(r.ctx(), bad), "cannot name a Knative Service")
	noImage := newAgent("opencode-agent")
	noImage.HarnessID = "nope"
	require.ErrorContains(t, r.b.EnsureAgent(r.ctx(), noImage), `unknown harness "nope"`)
}

func TestUnresolvedKoImage(t *testing.T) {
	t.Parallel()
	r := newRig(t, "", withEnv("HARNESS_IMAGE_LAP", ""))
	err := r.b.EnsureAgent(r.ctx(), newAgent("ko-agent"))
	require.ErrorContains(t, err, "HARNESS_IMAGE_LAP")
	require.ErrorContains(t, err, "ko://lap.dev/lap/cmd/lap-harness")
}

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

func (r *rig) mustList() []sandboxes.Sandbox {
	r.t.Helper()
	listed, err := r.b.List(r.ctx())
	require.NoError(r.t, err)
	return listed
}

// ensureAgent and provision are the setup most tests share: an agent, a
// sandbox of it; both fail the test on error.
func (r *rig) ensureAgent(name string) sandboxes.AgentSpec {
	r.t.Helper()
	agent := newAgent(name)
	require.NoError(r.t, r.b.EnsureAgent(r.ctx(), agent))
	return agent
}

func (r *rig) provision(agent sandboxes.AgentSpec, role string) sandboxes.Sandbox {
	r.t.Helper()
	sb, err := r.b.Provision(r.ctx(), newSpec(agent, role))
	require.NoError(r.t, err)
	return sb
}
