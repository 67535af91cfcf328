package knative

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"lap.dev/lap/sandboxes"
)

// BenchmarkLifecycle measures the API writes and the time of each
// sandbox operation against the real kube-apiserver, with the fake
// Knative answering at once: the backend's own cost (API round trips,
// informer waits, the harness probe), not pod start-up, which on a real
// cluster comes on top. Figures are medians and 90th percentiles over
// `rounds` sandboxes per iteration.
func BenchmarkLifecycle(b *testing.B) {
	const rounds = 20
	r := newRig(b, "", withEnv("KNATIVE_MAX_SANDBOXES_PER_AGENT", "50"))
	agent := newAgent("bench")
	if err := r.b.EnsureAgent(r.ctx(), agent); err != nil {
		b.Fatal(err)
	}
	type op struct {
		name   string
		times  []time.Duration
		writes []int64
	}
	ops := map[string]*op{}
	measure := func(name string, f func() error) {
		o := ops[name]
		if o == nil {
			o = &op{name: name}
			ops[name] = o
		}
		before := r.writes.n.Load()
		start := time.Now()
		if err := f(); err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		o.times = append(o.times, time.Since(start))
		o.writes = append(o.writes, r.writes.n.Load()-before)
	}
	b.ResetTimer()
	for range b.N {
		for range rounds {
			spec := newSpec(agent, sandboxes.RoleWarm)
			var sb sandboxes.Sandbox
			measure("provision", func() (err error) { sb, err = r.b.Provision(r.ctx(), spec); return err })
			measure("claim", func() error { return claim(r, sb, spec.Env["HARNESS_AUTH_TOKEN"]) })
			measure("suspend", func() (err error) { sb, err = r.b.Suspend(r.ctx(), sb); return err })
			measure("resume", func() (err error) { sb, err = r.b.Resume(r.ctx(), sb); return err })
			measure("destroy", func() error { return r.b.Destroy(r.ctx(), sb) })
		}
	}
	b.StopTimer()
	for _, name := range []string{"provision", "claim", "suspend", "resume", "destroy"} {
		o := ops[name]
		slices.Sort(o.times)
		slices.Sort(o.writes)
		b.ReportMetric(ms(percentile(o.times, 50)), name+"-ms-p50")
		b.ReportMetric(ms(percentile(o.times, 90)), name+"-ms-p90")
		b.ReportMetric(float64(percentile(o.writes, 50)), name+"-writes-p50")
		b.ReportMetric(float64(o.writes[len(o.writes)-1]), name+"-writes-max")
	}
	b.ReportMetric(float64(r.writes.conflicts.Load())/float64(b.N*rounds), "conflicts/round")
}

// claim is what the control plane does with a warm sandbox: record it in
// bbolt (not here) and open a harness session over its endpoint.
func claim(r *rig, sb sandboxes.Sandbox, token string) error {
	req, err := http.NewRequest(http.MethodPost, sb.Endpoint.URL+"/session", nil)
	if err != nil {
		return err
	}
	sb.Endpoint.Apply(req)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := r.client.Do(req)
	if err != nil {
		return err
	}
	return res.Body.Close()
}

// percentile returns the p-th percentile of sorted values.
func percentile[T any](sorted []T, p int) T {
	return sorted[(len(sorted)-1)*p/100]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
