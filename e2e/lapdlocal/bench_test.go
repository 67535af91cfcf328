package lapdlocal

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/internal/waitfor"
)

// BenchmarkSessionCreate measures, through the built lapd's REST API with
// local sandboxes, how long a session takes from POST …/session to ready:
// with a warm sandbox waiting (claimed in the create request; 100
// sessions, the pool refilled between them, untimed) and with none (cold:
// a harness started for it, then waited for with ?wait=ready).
func BenchmarkSessionCreate(b *testing.B) {
	const warmSamples, coldSamples = 100, 20
	var warm, cold []time.Duration
	for range b.N {
		p := platform.New(b, map[string]string{"WARM_POOL_SIZE": "1", "LOCAL_STOP_ON_EXIT": "true"})
		l := p.Start()
		l.CreateAgent("bench-warm")
		for range warmSamples {
			waitfor.Within(b, platform.Deadline, "a warm sandbox", func() bool { return l.Warm("bench-warm") == 1 })
			start := time.Now()
			sess := l.CreateSession("bench-warm")
			warm = append(warm, time.Since(start))
			require.Equal(b, api.SessionReady, sess.Status, "a warm claim")
			status, body := l.Do(http.MethodDelete, api.BasePath+"/sessions/"+sess.ID, nil, nil)
			require.Equal(b, http.StatusNoContent, status, "%s", body)
		}

		zero := 0
		status, body := l.Do(http.MethodPost, api.BasePath+"/agents", api.CreateAgentRequest{
			Name: "bench-cold", HarnessID: "lap", Model: "test/model", WarmPoolSize: &zero}, nil)
		require.Equal(b, http.StatusCreated, status, "%s", body)
		for range coldSamples {
			start := time.Now()
			sess := l.CreateSession("bench-cold")
			require.Equal(b, api.SessionCreating, sess.Status, "no warm pool: a cold start")
			sess = l.Session(sess.ID, "?wait=ready&timeout=120s")
			cold = append(cold, time.Since(start))
			require.Equal(b, api.SessionReady, sess.Status)
			status, body := l.Do(http.MethodDelete, api.BasePath+"/sessions/"+sess.ID, nil, nil)
			require.Equal(b, http.StatusNoContent, status, "%s", body)
		}
		l.Stop()
	}
	b.ReportMetric(ms(percentile(warm, 50)), "warm-p50-ms")
	b.ReportMetric(ms(percentile(warm, 99)), "warm-p99-ms")
	b.ReportMetric(ms(percentile(cold, 50)), "cold-p50-ms")
	b.ReportMetric(ms(percentile(cold, 99)), "cold-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// percentile returns the p-th percentile of ds (nearest rank).
func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
