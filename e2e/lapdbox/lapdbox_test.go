package lapdbox

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/control/api"
	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// Long enough that nothing but the idle step waits for it, short enough
// that the idle step is quick.
const idleTimeout = 20 * time.Second

// TestLapOnKnative drives lapd on Knative Serving's real control plane
// through an agent's life: its Service, its warm pool, a warm claim, turns
// through the ingress and the activator, scale to zero and back, a lapd
// restart, session and agent changes and deletion. Each step's duration
// is logged.
func TestLapOnKnative(t *testing.T) {
	r := newRig(t, rigOptions{idle: idleTimeout})
	s := newStepper(t)
	const name = "coder"
	var agent api.Agent
	pool := 2

	s.step("agent created → Service Ready, base revision pinned at 100%", func() {
		r.mustCall(http.MethodPost, "/agents", api.CreateAgentRequest{
			Name:         name,
			HarnessID:    "lap",
			Model:        "fake-model",
			Prompt:       harnessPrompt,
			RepoURL:      r.repo,
			Branch:       "main",
			EnvVars:      map[string]string{"BOX_SECRET": "s3cret"},
			WarmPoolSize: &pool,
		}, &agent)
		base := resources.BaseRevisionName(name, 1)
		r.eventually("Service Ready with the base revision at 100%", 3*time.Minute, func() bool {
			svc := r.service(name)
			return svc != nil && svc.IsReady() && baseAt100(svc.Spec.Traffic, base) && baseAt100(svc.Status.Traffic, base)
		}, func() string { return fmt.Sprintf("%+v", r.service(name)) })
		svc := r.service(name)
		assert.Equal(t, resources.ManagedBy, svc.Labels[resources.LabelManagedBy])
		assert.Equal(t, agent.ID, svc.Labels[resources.LabelAgentID])
	})

	var warm map[string]string // tag → revision
	s.step("warm pool of 2 → two tagged revisions with one running pod each", func() {
		r.eventually("two warm sandboxes routed, each with one running pod", 3*time.Minute, func() bool {
			svc := r.service(name)
			spec, status := sandboxTags(svc)
			if len(spec) != pool || !maps.Equal(spec, status) {
				return false
			}
			for _, rev := range spec {
				if running, _ := r.pods(rev); len(running) != 1 {
					return false
				}
			}
			warm = spec
			return true
		}, func() string {
			spec, status := sandboxTags(r.service(name))
			return fmt.Sprintf("spec %v status %v", spec, status)
		})
		for _, rev := range warm {
			labels := r.sandboxRevisions(name)[rev]
			assert.Equal(t, sandboxes.RoleWarm, labels[resources.LabelRole], rev)
			_, all := r.pods(rev)
			assert.Len(t, all, 1, "min-scale = max-scale = 1: one pod for %s", rev)
			r.assertTokensInSecret(rev)
		}
	})

	var sess api.Session
	var claimed string // the claimed sandbox's revision
	s.step("a session claims a warm sandbox with zero API writes", func() {
		before := r.sandboxRevisions(name)
		from := time.Now()
		r.mustCall(http.MethodPost, "/agents/"+name+"/session", api.CreateSessionRequest{Title: "box"}, &sess)
		to := time.Now()
		require.Equal(t, api.SessionReady, sess.Status, "a warm claim answers ready")
		claimed = resources.SandboxRevisionName(name, sess.SandboxID)
		require.Contains(t, slices.Collect(maps.Values(warm)), claimed, "the session got one of the warm revisions")
		// The pool refills at once, so lapd's writes in the window may
		// provision a new warm sandbox; none may touch anything else.
		for _, w := range r.writesSettled(from, to) {
			if rev, ok := w.newSandboxTemplate(before); ok {
				t.Logf("pool refill during the claim: %s (%s)", w, rev)
				continue
			}
			if secret, ok := w.newSandboxSecret(before); ok {
				t.Logf("pool refill during the claim: %s (%s)", w, secret)
				continue
			}
			t.Errorf("the claim wrote to the API: %s", w)
		}
	})

	s.step("message: ingress → activator → queue-proxy → lap-harness → gateway → fake LLM", func() {
		n := len(r.llm.Requests())
		reply := r.message(sess.ID, "remember the word PLUM")
		assert.Equal(t, "heard: remember the word PLUM", reply)
		reqs := r.llm.Requests()[n:]
		require.NotEmpty(t, reqs)
		last := reqs[len(reqs)-1]
		assert.Equal(t, "Bearer "+upstreamKey, last.Header.Get("Authorization"), "the gateway swaps in the real key")
		assert.Contains(t, last.SystemText(), harnessPrompt, "the agent's prompt reached the harness")
		// The revision's public Endpoints are the activator's: the
		// request went through it (target-burst-capacity -1).
		eps, err := r.kube.CoreV1().Endpoints(agentsNS).Get(context.Background(), claimed, metav1.GetOptions{})
		require.NoError(t, err)
		assert.Equal(t, r.box.ComponentIP("activator").String(), firstIP(eps), "revision %s is served through the activator", claimed)
	})

	tag := resources.SandboxTag(sess.SandboxID)
	s.step("idle → tag removed → the revision's pods go to zero (seen in the API)", func() {
		r.eventually("session idle", 2*idleTimeout+time.Minute, func() bool { return r.session(sess.ID).Status == api.SessionIdle },
			func() string { return fmt.Sprintf("%+v", r.session(sess.ID)) })
		spec, _ := sandboxTags(r.service(name))
		assert.NotContains(t, spec, tag, "suspend takes the tag out of the route")
		assert.True(t, r.revisionExists(claimed), "the revision stays for the resume")
		r.eventually("no pod of "+claimed, 3*time.Minute, func() bool { _, all := r.pods(claimed); return len(all) == 0 }, nil)
	})

	s.step("next message brings a pod back, the reply carries the history", func() {
		reply := r.message(sess.ID, "which word?")
		assert.Equal(t, "heard: remember the word PLUM | which word?", reply)
		running, _ := r.pods(claimed)
		assert.Len(t, running, 1, "one pod again")
		assert.Equal(t, api.SessionReady, r.session(sess.ID).Status)
	})

	s.step("lapd restarted mid-way → adopts its revisions, the session continues", func() {
		before := r.sandboxRevisions(name)
		r.stopLapd()
		r.startLapd()
		after := r.session(sess.ID)
		assert.Equal(t, sess.SandboxID, after.SandboxID, "the session keeps its sandbox")
		reply := r.message(sess.ID, "still there?")
		assert.Equal(t, "heard: remember the word PLUM | which word? | still there?", reply)
		now := r.sandboxRevisions(name)
		for rev := range before {
			assert.Contains(t, now, rev, "revision %s adopted, not replaced", rev)
		}
		assert.Len(t, now, len(before), "no sandbox provisioned for what was adopted")
	})

	s.step("a turn that sends nothing for longer than Knative's response-start default is answered", func() {
		from := time.Now()
		reply := r.message(sess.ID, slowPrefix+" take your time")
		assert.True(t, strings.HasSuffix(reply, slowPrefix+" take your time"), "reply %q", reply)
		assert.GreaterOrEqual(t, time.Since(from), slowTurn*3/4, "the turn lasted past the box's 4 s default")
	})

	s.step("session deleted → its revision and Secret gone", func() {
		r.mustCall(http.MethodDelete, "/sessions/"+sess.ID, nil, nil)
		r.eventually("revision "+claimed+" deleted", 2*time.Minute, func() bool { return !r.revisionExists(claimed) }, nil)
		r.eventually("Secret "+claimed+" deleted", time.Minute, func() bool { return !slices.Contains(r.sandboxSecrets(agent.ID), claimed) }, nil)
		spec, _ := sandboxTags(r.service(name))
		assert.NotContains(t, spec, tag)
	})

	s.step("agent updated → old warm revisions replaced", func() {
		old := r.sandboxRevisions(name)
		prompt := "You are the second generation."
		var updated api.Agent
		r.mustCall(http.MethodPatch, "/agents/"+name, api.UpdateAgentRequest{Prompt: &prompt}, &updated)
		require.Equal(t, int64(2), updated.Generation)
		base := resources.BaseRevisionName(name, 2)
		r.eventually("generation 2: base pinned, a full pool of new warm revisions, the old ones gone", 4*time.Minute, func() bool {
			svc := r.service(name)
			if !baseAt100(svc.Spec.Traffic, base) || !baseAt100(svc.Status.Traffic, base) {
				return false
			}
			spec, status := sandboxTags(svc)
			if len(spec) != pool || !maps.Equal(spec, status) {
				return false
			}
			revs := r.sandboxRevisions(name)
			for rev := range old {
				if _, ok := revs[rev]; ok {
					return false
				}
			}
			for _, rev := range spec {
				if revs[rev][resources.LabelGeneration] != "2" {
					return false
				}
				if running, _ := r.pods(rev); len(running) != 1 {
					return false
				}
			}
			return true
		}, func() string {
			spec, status := sandboxTags(r.service(name))
			return fmt.Sprintf("spec %v status %v revisions %v", spec, status, r.sandboxRevisions(name))
		})
	})

	s.step("agent deleted → Service gone", func() {
		r.mustCall(http.MethodDelete, "/agents/"+name, nil, nil)
		r.eventually("Service, Secrets and revisions gone", 2*time.Minute, func() bool {
			_, err := r.kube.CoreV1().Secrets(agentsNS).Get(context.Background(), resources.SecretName(name), metav1.GetOptions{})
			return r.service(name) == nil && apierrors.IsNotFound(err) && len(r.sandboxRevisions(name)) == 0 && len(r.sandboxSecrets(agent.ID)) == 0
		}, func() string { return fmt.Sprintf("sandbox secrets %v", r.sandboxSecrets(agent.ID)) })
		r.eventually("every sandbox pod gone", 3*time.Minute, func() bool {
			list, err := r.kube.CoreV1().Pods(agentsNS).List(context.Background(), metav1.ListOptions{})
			return err == nil && len(list.Items) == 0
		}, nil)
	})
}

// baseAt100 reports whether traffic sends all of the default route to
// base, by name: no latestRevision target, no other untagged target.
func baseAt100(traffic []servingv1.TrafficTarget, base string) bool {
	n := 0
	for _, t := range traffic {
		if t.Tag != "" {
			continue
		}
		n++
		if t.RevisionName != base || t.Percent == nil || *t.Percent != 100 || (t.LatestRevision != nil && *t.LatestRevision) {
			return false
		}
	}
	return n == 1
}

func firstIP(eps *corev1.Endpoints) string {
	for _, s := range eps.Subsets {
		for _, a := range s.Addresses {
			return a.IP
		}
	}
	return ""
}

// writesSettled returns lapd's writes in [from, to] once the audit log
// has caught up with to: the apiserver records an event when its request
// completes, so a marker write of lapd's user made after to, once
// recorded, vouches for every request that completed before it.
func (r *rig) writesSettled(from, to time.Time) []auditEvent {
	r.t.Helper()
	ctx := context.Background()
	marker := "audit-marker-" + randomHex(4)
	secrets := r.lapdKube.CoreV1().Secrets(agentsNS)
	_, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: marker}}, metav1.CreateOptions{})
	require.NoError(r.t, err)
	require.NoError(r.t, secrets.Delete(ctx, marker, metav1.DeleteOptions{}))
	r.eventually("the audit log records the marker", time.Minute, func() bool {
		for _, w := range r.writes(to, time.Now().Add(time.Hour)) {
			if w.ObjectRef.Name == marker && w.Verb == "delete" {
				return true
			}
		}
		return false
	}, nil)
	return r.writes(from, to)
}
