package knative

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"testing"

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
