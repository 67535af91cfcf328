package lapdbox

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"lap.dev/lap/control/api"
	"lap.dev/lap/knative/resources"
)

// BenchmarkLapOnKnative measures lap on Knative Serving's real control
// plane (Knative in a box) through lapd's API, as a user sees it:
//
//   - warm claim: POST /agents/:id/session answering ready, a warm
//     sandbox claimed (pool of 2, refilled between claims);
//   - cold provision: POST session with no warm pool until the first
//     answer — template update, revision Ready, harness up, one turn;
//   - resume from zero: a message to a session whose pod Knative has
//     scaled to zero, until its answer;
//   - memory per sandbox pod: resident memory of queue-proxy and
//     lap-harness together.
//
// Figures are medians and 90th percentiles over the rounds; the fake LLM
// answers at once, so they are lap's and Knative's own cost.
func BenchmarkLapOnKnative(b *testing.B) {
	const (
		warmRounds   = 5
		coldRounds   = 5
		resumeRounds = 5
		idle         = 15 * time.Second
	)
	r := newRig(b, rigOptions{idle: idle})
	pool := 2
	zero := 0
	var warmAgent, coldAgent api.Agent
	r.mustCall(http.MethodPost, "/agents", api.CreateAgentRequest{Name: "warm", Model: "fake-model", RepoURL: r.repo, WarmPoolSize: &pool}, &warmAgent)
	r.mustCall(http.MethodPost, "/agents", api.CreateAgentRequest{Name: "cold", Model: "fake-model", RepoURL: r.repo, WarmPoolSize: &zero}, &coldAgent)

	var warmClaim, coldReady, coldAnswer, resume []time.Duration
	var rss []float64
	b.ResetTimer()
	for range b.N {
		var sessions []api.Session
		claimed := map[string]bool{}
		for range warmRounds {
			r.waitWarm("warm", pool, claimed)
			start := time.Now()
			var s api.Session
			r.mustCall(http.MethodPost, "/agents/warm/session", api.CreateSessionRequest{}, &s)
			warmClaim = append(warmClaim, time.Since(start))
			if s.Status != api.SessionReady {
				b.Fatalf("warm claim answered %s, not ready", s.Status)
			}
			claimed[resources.SandboxRevisionName("warm", s.SandboxID)] = true
			r.message(s.ID, "hello")
			sessions = append(sessions, s)
		}
		rss = append(rss, r.podMemory()...)

		for range coldRounds {
			start := time.Now()
			var s api.Session
			r.mustCall(http.MethodPost, "/agents/cold/session", api.CreateSessionRequest{}, &s)
			r.mustCall(http.MethodGet, "/sessions/"+s.ID+"?wait=ready&timeout=300s", nil, &s)
			if s.Status != api.SessionReady {
				b.Fatalf("cold session %s: %s %s", s.ID, s.Status, s.FailureReason)
			}
			coldReady = append(coldReady, time.Since(start))
			r.message(s.ID, "hello")
			coldAnswer = append(coldAnswer, time.Since(start))
		}

		for _, s := range sessions[:resumeRounds] {
			rev := resources.SandboxRevisionName("warm", s.SandboxID)
			r.eventually("session idle and its pod gone", 3*time.Minute, func() bool {
				_, all := r.pods(rev)
				return r.session(s.ID).Status == api.SessionIdle && len(all) == 0
			}, nil)
			start := time.Now()
			r.message(s.ID, "again")
			resume = append(resume, time.Since(start))
		}
	}
	b.StopTimer()
	b.ReportMetric(r.box.StartupTime().Seconds(), "box-start-s")
	report(b, "warm-claim", warmClaim)
	report(b, "cold-ready", coldReady)
	report(b, "cold-first-answer", coldAnswer)
	report(b, "resume-from-zero", resume)
	slices.Sort(rss)
	b.ReportMetric(quantile(rss, 0.5), "pod-MiB-p50")
}

// waitWarm waits until the agent has n warm sandboxes routed, none of
// them claimed, each with a running pod.
func (r *rig) waitWarm(agent string, n int, claimed map[string]bool) {
	r.t.Helper()
	r.eventually("a full warm pool", 5*time.Minute, func() bool {
		spec, status := sandboxTags(r.service(agent))
		free := 0
		for tag, rev := range spec {
			if claimed[rev] || status[tag] != rev {
				continue
			}
			if running, _ := r.pods(rev); len(running) == 1 {
				free++
			}
		}
		return free >= n
	}, nil)
}

// podMemory is the resident memory of each running sandbox pod, in MiB:
// every container's process (queue-proxy and lap-harness).
func (r *rig) podMemory() []float64 {
	var out []float64
	for _, p := range r.box.Kubelet.Pods() {
		if p.Namespace == agentsNS && len(p.Pids) > 0 {
			out = append(out, float64(rss(p.Pids))/(1<<20))
		}
	}
	return out
}

func report(b *testing.B, name string, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	ms := make([]float64, len(d))
	for i, v := range d {
		ms[i] = float64(v.Microseconds()) / 1000
	}
	slices.Sort(ms)
	b.ReportMetric(quantile(ms, 0.5), name+"-ms-p50")
	b.ReportMetric(quantile(ms, 0.9), name+"-ms-p90")
}

// quantile of sorted values, nearest rank.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
