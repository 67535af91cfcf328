package claudeagentsdk_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/sandboxes/protocol"
)

// percentile returns the p-th percentile (0–100) of xs, nearest rank.
func percentile(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// rssMB reads the resident set of pid and its descendants from /proc.
func rssMB(pid int) float64 {
	var total float64
	var walk func(int)
	walk = func(p int) {
		if b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "status")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
					kb, _ := strconv.ParseFloat(f[1], 64)
					total += kb / 1024
				}
			}
		}
		kids, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "task", strconv.Itoa(p), "children"))
		for _, k := range strings.Fields(string(kids)) {
			if c, err := strconv.Atoi(k); err == nil {
				walk(c)
			}
		}
	}
	walk(pid)
	return total
}

// benchHarness measures one Node harness: start to ready (median of
// starts), a trivial turn's latency (median and p90 over turns) — the
// harness's own overhead, the fake model answers at once — and the
// resident memory of the idle harness with all its processes.
func benchHarness(b *testing.B, entry string, starts, turns int) {
	f := fakellm.Start(b)
	f.Respond(func(fakellm.Request) fakellm.Reply { return fakellm.Text("ok") })
	env := map[string]string{
		"LAP_MODEL":        "anthropic/claude-sonnet-4-5",
		"LITELLM_API_BASE": f.URL() + "/llm",
		"LITELLM_API_KEY":  "lapsb_test",
	}
	for range b.N {
		var ready []float64
		var h *harness
		for range starts {
			if h != nil {
				h.stop()
			}
			t0 := time.Now()
			h = startHarness(b, entry, b.TempDir(), env)
			ready = append(ready, float64(time.Since(t0).Milliseconds()))
		}
		session := h.newSession(protocol.CreateSessionRequest{Title: "bench"})
		var lat []float64
		for range turns {
			t0 := time.Now()
			m := h.send(session, "hi")
			if m.Info.Error != nil {
				b.Fatalf("turn failed: %+v", m.Info.Error)
			}
			lat = append(lat, float64(time.Since(t0).Milliseconds()))
		}
		b.ReportMetric(percentile(ready, 50), "ready-ms-p50")
		b.ReportMetric(percentile(lat, 50), "turn-ms-p50")
		b.ReportMetric(percentile(lat, 90), "turn-ms-p90")
		b.ReportMetric(rssMB(h.cmd.Process.Pid), "idle-rss-MB")
		h.stop()
	}
}

func BenchmarkClaudeAgentSDKHarness(b *testing.B) { benchHarness(b, built(b, "server.js"), 5, 10) }

func BenchmarkOpencodeHarness(b *testing.B) { benchHarness(b, built(b, "opencode.js"), 2, 5) }
