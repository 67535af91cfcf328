package control

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes/protocol"
)

// benchEnv is a control plane for benchmarks with its data dir in dir.
func benchEnv(b *testing.B, dir string) *env {
	e := startEnv(b, dir, envOptions{noCleanup: true})
	b.Cleanup(e.stop)
	return e
}

// storeDirs are where the relay benchmark keeps its bbolt file: the disk
// (every commit fsynced), and tmpfs, where fsync is free, to show lapd's
// own cost apart from the disk's.
func storeDirs(b *testing.B) map[string]string {
	dirs := map[string]string{"disk": b.TempDir()}
	if dir, err := os.MkdirTemp("/dev/shm", "lap-bench-"); err == nil {
		b.Cleanup(func() { os.RemoveAll(dir) })
		dirs["tmpfs"] = dir
	}
	return dirs
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

var benchClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxIdleConns: 1024}}

func benchDo(b *testing.B, req *http.Request) {
	resp, err := benchClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("%s %s: %s", req.Method, req.URL, resp.Status)
	}
}

// BenchmarkGetSession measures GET /sessions/:id throughput over loopback
// with 64 concurrent keep-alive clients: the median of 5 rounds.
func BenchmarkGetSession(b *testing.B) {
	e := benchEnv(b, b.TempDir())
	e.createAgent("bench", nil)
	sess := e.readySession("bench")
	const clients, perClient, rounds = 64, 300, 5
	url := e.url + api.BasePath + "/sessions/" + sess.ID
	var rates []float64
	b.ResetTimer()
	for range b.N {
		for range rounds {
			start := time.Now()
			var wg sync.WaitGroup
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range perClient {
						req, _ := http.NewRequest(http.MethodGet, url, nil)
						req.Header.Set("Authorization", "Bearer "+testKey)
						benchDo(b, req)
					}
				}()
			}
			wg.Wait()
			rates = append(rates, clients*perClient/time.Since(start).Seconds())
		}
	}
	b.ReportMetric(median(rates), "req/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkMessageRelayOverhead measures what lapd adds to a turn: 100
// sessions send messages concurrently, once straight to their harnesses
// and once through POST /sessions/:id/message (which also writes the
// user turn and the answer to the durable log, fsynced, before answering).
// Rounds alternate; the figures are medians over rounds of each round's
// p50 and p99.
//
// turn=100ms has the harness take 100 ms per turn, as a (fast) model
// would, so the figure is lapd's added latency at 100 active sessions.
// With arrivals=spread each session starts at a random moment within the
// first turn, so messages arrive spread out as independent users send
// them; with arrivals=burst all 100 start at once and stay in step, so
// every message arrives in a burst of 100 (their log writes then share
// large commits). turn=instant answers at once, so 100 closed-loop
// clients saturate the machine and the figure is mostly queueing for CPU
// and disk. store=tmpfs puts the bbolt file where fsync costs nothing, to
// separate lapd's own cost from the disk's; sessions=1 shows the cost of
// one turn on an idle lapd.
func BenchmarkMessageRelayOverhead(b *testing.B) {
	dirs := storeDirs(b)
	cases := []struct {
		store, turn, text, arrivals string
		sessions                    int
		spread                      time.Duration
	}{
		{"disk", "100ms", "/slow 100ms", "spread", 100, 100 * time.Millisecond},
		{"disk", "100ms", "/slow 100ms", "burst", 100, 0},
		{"tmpfs", "100ms", "/slow 100ms", "spread", 100, 100 * time.Millisecond},
		{"disk", "instant", "hello", "burst", 100, 0},
		{"disk", "instant", "hello", "burst", 1, 0},
	}
	for _, c := range cases {
		name := fmt.Sprintf("sessions=%d/store=%s/turn=%s/arrivals=%s", c.sessions, c.store, c.turn, c.arrivals)
		b.Run(name, func(b *testing.B) {
			dir, ok := dirs[c.store]
			if !ok {
				b.Skip("no tmpfs at /dev/shm")
			}
			benchRelay(b, filepath.Join(dir, fmt.Sprint(c.sessions, c.turn, c.arrivals)), c.text, c.sessions, c.spread)
		})
	}
}

// benchRelay runs the relay benchmark: each session's client starts after
// a random delay of up to spread, then sends perSession messages one
// after the other.
func benchRelay(b *testing.B, dir, text string, sessions int, spread time.Duration) {
	e := benchEnv(b, dir)
	e.createAgent("relay", nil)
	const perSession, rounds = 10, 5
	type pair struct {
		lapd   string
		direct target
	}
	pairs := make([]pair, sessions)
	for i := range pairs {
		sess := e.readySession("relay")
		sb, err := e.store.GetSandbox(b.Context(), sess.SandboxID)
		if err != nil {
			b.Fatal(err)
		}
		bsb, err := backendRecord(sb)
		if err != nil {
			b.Fatal(err)
		}
		pairs[i] = pair{lapd: sess.ID, direct: targetOf(sb, bsb, sess.HarnessSessionID)}
	}
	directBody, _ := json.Marshal(protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: text}}})
	lapdBody, _ := json.Marshal(api.SendMessageRequest{Text: text})
	round := func(viaLapd bool) []time.Duration {
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		for _, p := range pairs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if spread > 0 {
					time.Sleep(rand.N(spread))
				}
				mine := make([]time.Duration, 0, perSession)
				for range perSession {
					var req *http.Request
					if viaLapd {
						req, _ = http.NewRequest(http.MethodPost, e.url+api.BasePath+"/sessions/"+p.lapd+"/message", bytes.NewReader(lapdBody))
						req.Header.Set("Authorization", "Bearer "+testKey)
					} else {
						req, _ = http.NewRequest(http.MethodPost, p.direct.endpoint.URL+"/session/"+p.direct.sessionID+"/message", bytes.NewReader(directBody))
						req.Header.Set("Authorization", "Bearer "+p.direct.token)
					}
					req.Header.Set("Content-Type", "application/json")
					start := time.Now()
					benchDo(b, req)
					mine = append(mine, time.Since(start))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return lat
	}
	round(false) // warm up connections on both paths
	round(true)
	var dp50, dp99, lp50, lp99, op50, op99 []float64
	b.ResetTimer()
	for range b.N {
		for range rounds {
			d := round(false)
			l := round(true)
			dp50, dp99 = append(dp50, ms(percentile(d, .5))), append(dp99, ms(percentile(d, .99)))
			lp50, lp99 = append(lp50, ms(percentile(l, .5))), append(lp99, ms(percentile(l, .99)))
			op50 = append(op50, ms(percentile(l, .5))-ms(percentile(d, .5)))
			op99 = append(op99, ms(percentile(l, .99))-ms(percentile(d, .99)))
		}
	}
	b.ReportMetric(median(dp50), "direct-p50-ms")
	b.ReportMetric(median(dp99), "direct-p99-ms")
	b.ReportMetric(median(lp50), "lapd-p50-ms")
	b.ReportMetric(median(lp99), "lapd-p99-ms")
	b.ReportMetric(median(op50), "overhead-p50-ms")
	b.ReportMetric(median(op99), "overhead-p99-ms")
	b.ReportMetric(0, "ns/op")
}
