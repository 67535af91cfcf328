package main_test

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/sandboxes/protocol"
)

// Figures for `make bench`; the goals are in ARCHITECTURE's issue for the
// harness: idle RSS ≤ 25 MB, process start to ready without a clone
// ≤ 100 ms at the median. Each benchmark iteration starts several
// processes so the figures are medians, not single samples.

const benchRuns = 15

// percentile returns the p-th percentile (0–100) of xs.
func percentile(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// vmRSS reads a process's resident set size in MB from /proc.
func vmRSS(b *testing.B, pid int) float64 {
	b.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				b.Fatalf("parse %q: %v", line, err)
			}
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkIdleRSS reports the resident memory of a ready, idle harness
// that holds one session and one event subscriber.
func BenchmarkIdleRSS(b *testing.B) {
	llm := fakellm.Start(b)
	var rss []float64
	for range b.N {
		for range benchRuns {
			h := runHarness(b, harnessEnv(b, llm, b.TempDir()))
			h.newSession()
			h.subscribe()
			rss = append(rss, vmRSS(b, h.cmd.Process.Pid))
			h.kill()
		}
	}
	b.ReportMetric(percentile(rss, 50), "rss-MB-p50")
	b.ReportMetric(percentile(rss, 100), "rss-MB-max")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkStartToReady reports the time from starting the process to the
// first 2xx of GET /session, for a workspace without a repo to clone.
func BenchmarkStartToReady(b *testing.B) {
	llm := fakellm.Start(b)
	client := &http.Client{Timeout: 5 * time.Second}
	var ms []float64
	for range b.N {
		for range benchRuns {
			env := harnessEnv(b, llm, b.TempDir())
			began := time.Now()
			h := startHarness(b, env)
			req, _ := http.NewRequest("GET", h.url+"/session", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			deadline := began.Add(30 * time.Second)
			for {
				res, err := client.Do(req)
				if err == nil {
					res.Body.Close()
					if res.StatusCode == http.StatusOK {
						break
					}
				}
				if time.Now().After(deadline) {
					b.Fatalf("not ready: %s", h.stderr.String())
				}
				time.Sleep(500 * time.Microsecond)
			}
			ms = append(ms, float64(time.Since(began).Microseconds())/1000)
			h.kill()
		}
	}
	b.ReportMetric(percentile(ms, 50), "ms-p50")
	b.ReportMetric(percentile(ms, 90), "ms-p90")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkTurnOverhead reports the harness's own share of a one-step
// turn: POST /session/:id/message answered by an instant fake LLM, end to
// end over loopback.
func BenchmarkTurnOverhead(b *testing.B) {
	llm := fakellm.Start(b)
	llm.Respond(func(fakellm.Request) fakellm.Reply { return fakellm.Text("ok") })
	h := runHarness(b, harnessEnv(b, llm, b.TempDir()))
	id := h.newSession()
	var ms []float64
	for range b.N {
		for range benchRuns * 2 {
			began := time.Now()
			var msg protocol.Message
			if status := h.do("POST", "/session/"+id+"/message", protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: "hi"}}}, &msg); status != 200 || msg.Info.Error != nil {
				b.Fatalf("turn failed: %d %+v", status, msg.Info.Error)
			}
			ms = append(ms, float64(time.Since(began).Microseconds())/1000)
		}
	}
	b.ReportMetric(percentile(ms, 50), "ms-p50")
	b.ReportMetric(percentile(ms, 90), "ms-p90")
	b.ReportMetric(0, "ns/op")
}
