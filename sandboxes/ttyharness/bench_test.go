package ttyharness_test

import (
	"slices"
	"strconv"
	"testing"
	"time"
)

// Figures for `make bench` (issue 16: attach → first screen ≤ 100 ms p50
// on a warm sandbox, keystroke echo ≤ 5 ms p50 through lapd over
// loopback). These measure the harness alone, without lapd's relay, with
// the fake tool in tmux: the time from dialling GET /tty to the first
// screen drawn, and from a key sent to its echo received.

func percentile(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkAttachFirstScreen reports dial → the tool's screen drawn.
func BenchmarkAttachFirstScreen(b *testing.B) {
	h := startInProcess(b)
	var got []float64
	for range b.N {
		for range 20 {
			began := time.Now()
			tm := dial(b, h.url, token, false)
			tm.waitFor("fake tool ready", 1, 30*time.Second)
			got = append(got, ms(time.Since(began)))
			tm.close()
		}
	}
	b.ReportMetric(percentile(got, 50), "ms-p50")
	b.ReportMetric(percentile(got, 90), "ms-p90")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkKeystrokeEcho reports a key sent → its echo received.
func BenchmarkKeystrokeEcho(b *testing.B) {
	h := startInProcess(b)
	tm := dial(b, h.url, token, false)
	tm.waitFor("fake tool ready", 1, 30*time.Second)
	var got []float64
	for range b.N {
		for i := range 100 {
			key := strconv.Itoa(i % 10)
			mark := tm.mark()
			got = append(got, ms(tm.waitAfter(mark, key, 10*time.Second, func() { tm.send(key) })))
		}
		tm.send("\r")
	}
	b.ReportMetric(percentile(got, 50), "ms-p50")
	b.ReportMetric(percentile(got, 90), "ms-p90")
	b.ReportMetric(0, "ns/op")
}
