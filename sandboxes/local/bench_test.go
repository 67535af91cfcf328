package local

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkLocalSandbox measures the local backend's lifecycle with the
// real lap-harness and no repository to clone: cold provision (start to
// GET /session answering), resume after suspend, and the resident memory
// of an idle harness. Figures are medians and 99th percentiles over
// samples repeated within each iteration.
func BenchmarkLocalSandbox(b *testing.B) {
	const samples = 40
	ctx := testCtx(b)
	backend := newBackend(b, "", nil)
	f := newFixture(b)
	var provision, resume []time.Duration
	var rss []float64
	for range b.N {
		for range samples {
			start := time.Now()
			sb, err := backend.Provision(ctx, f.spec())
			require.NoError(b, err)
			provision = append(provision, time.Since(start))

			n, err := rssBytes(pidOf(b, sb))
			require.NoError(b, err)
			rss = append(rss, float64(n)/(1<<20))

			sb, err = backend.Suspend(ctx, sb)
			require.NoError(b, err)
			start = time.Now()
			sb, err = backend.Resume(ctx, sb)
			require.NoError(b, err)
			resume = append(resume, time.Since(start))
			require.NoError(b, backend.Destroy(ctx, sb))
		}
	}
	b.ReportMetric(ms(percentile(provision, 50)), "provision-p50-ms")
	b.ReportMetric(ms(percentile(provision, 99)), "provision-p99-ms")
	b.ReportMetric(ms(percentile(resume, 50)), "resume-p50-ms")
	b.ReportMetric(ms(percentile(resume, 99)), "resume-p99-ms")
	slices.Sort(rss)
	b.ReportMetric(rss[len(rss)/2], "idle-rss-MiB")
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
