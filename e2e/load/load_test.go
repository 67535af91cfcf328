// Package load drives many sessions at once through the built lapd with
// local harness processes and the scripted fake LLM (through lapd's
// gateway, as in production): every message must be answered and logged.
// The test is a small run for make test; the benchmark is the full one
// (200 sessions × 20 messages) and measures what lapd adds to a turn over
// calling the same harness directly, interleaved so both see the same load.
package load

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/sandboxes/protocol"
)

func TestMain(m *testing.M) {
	os.Exit(platform.Main(m))
}

// run is one load run: sessions sessions send messages messages each, all
// at once, each answered by the fake LLM after think.
type run struct {
	sessions, messages int
	think              time.Duration
	// direct also sends every message straight to the session's harness,
	// alternating with the one through lapd, to measure what lapd adds.
	direct bool
}

// result is what a run saw.
type result struct {
	lapd, direct []time.Duration
	errs         []error
	elapsed      time.Duration
	logs         map[string][]api.Message // by session id, read after the run
	sessions     []api.Session
}

func (r run) do(tb testing.TB) result {
	p := platform.New(tb, map[string]string{
		"WARM_POOL_SIZE":          "0",
		"LAP_SANDBOX_GATEWAY_URL": "", // the harnesses reach the LLM through lapd's gateway
		"LOCAL_STOP_ON_EXIT":      "true",
	})
	p.LLM.Respond(func(req fakellm.Request) fakellm.Reply {
		if r.think > 0 {
			time.Sleep(r.think)
		}
		return fakellm.Text("re: " + req.LastUserText())
	})
	l := p.Start()
	defer l.Stop()
	l.CreateAgent("load")
	ss := l.ReadySessions("load", r.sessions)

	var mu sync.Mutex
	res := result{sessions: ss, logs: map[string][]api.Message{}}
	fail := func(err error) {
		mu.Lock()
		res.errs = append(res.errs, err)
		mu.Unlock()
	}
	type harness struct{ url, token, session string }
	targets := make([]harness, len(ss))
	for i, s := range ss {
		url, token := p.Harness(s.SandboxID)
		targets[i] = harness{url, token, s.HarnessSessionID}
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var viaLapd, viaHarness []time.Duration
			for n := range r.messages {
				if r.direct {
					text := fmt.Sprintf("direct %d of session %d", n, i)
					began := time.Now()
					if err := sendDirect(targets[i].url, targets[i].token, targets[i].session, text); err != nil {
						fail(err)
						continue
					}
					viaHarness = append(viaHarness, time.Since(began))
				}
				text := fmt.Sprintf("message %d of session %d", n, i)
				began := time.Now()
				if err := sendLapd(l, s.ID, text); err != nil {
					fail(err)
					continue
				}
				viaLapd = append(viaLapd, time.Since(began))
			}
			mu.Lock()
			res.lapd = append(res.lapd, viaLapd...)
			res.direct = append(res.direct, viaHarness...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	for _, s := range ss {
		res.logs[s.ID] = l.Messages(s.ID)
	}
	return res
}

// sendLapd sends text through lapd and checks the answer.
func sendLapd(l *platform.Lapd, session, text string) error {
	var m api.Message
	status, body, err := l.Call(context.Background(), http.MethodPost, api.BasePath+"/sessions/"+session+"/message", api.SendMessageRequest{Text: text}, &m)
	switch {
	case err != nil:
		return fmt.Errorf("lapd %q: %w", text, err)
	case status != http.StatusOK || m.Info.Error != nil:
		return fmt.Errorf("lapd %q: %d %s", text, status, body)
	case m.Text() != "re: "+text:
		return fmt.Errorf("lapd %q: answered %q", text, m.Text())
	}
	return nil
}

// sendDirect sends text straight to a harness session and checks the
// answer.
func sendDirect(url, token, session, text string) error {
	b, _ := json.Marshal(protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: text}}})
	req, err := http.NewRequest(http.MethodPost, url+"/session/"+session+"/message", bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", protocol.Bearer(token))
	req.Header.Set("Content-Type", "application/json")
	resp, err := platform.Client.Do(req)
	if err != nil {
		return fmt.Errorf("harness %q: %w", text, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("harness %q: %w", text, err)
	}
	var m protocol.Message
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &m) != nil || m.Info.Error != nil || m.Text() != "re: "+text {
		return fmt.Errorf("harness %q: %d %s", text, resp.StatusCode, body)
	}
	return nil
}

// TestManySessionsManyMessages sends 5 messages in each of 50 sessions at
// once: every one is answered, and every session's log holds exactly its
// turns, in order.
func TestManySessionsManyMessages(t *testing.T) {
	t.Parallel()
	r := run{sessions: 50, messages: 5}
	res := r.do(t)
	require.Empty(t, res.errs)
	assert.Len(t, res.lapd, r.sessions*r.messages)
	for i, s := range res.sessions {
		var want, got []string
		for n := range r.messages {
			text := fmt.Sprintf("message %d of session %d", n, i)
			want = append(want, fmt.Sprintf("%d user completed %s", 2*n+1, text), fmt.Sprintf("%d assistant completed re: %s", 2*n+2, text))
		}
		for _, m := range res.logs[s.ID] {
			got = append(got, fmt.Sprintf("%d %s %s %s", m.Info.Seq, m.Info.Role, m.Info.Status, m.Text()))
		}
		assert.Equal(t, want, got, "session %d", i)
	}
}

// BenchmarkLoad is the full run: 200 sessions × 20 messages, each turn
// answered by the fake LLM after 200 ms (a fast model), every message
// sent both through lapd and straight to the harness. It reports the
// errors (the goal is none), turns per second through lapd, and the p50
// and p99 latency of each path and their difference: what lapd adds —
// the durable log (two fsynced commits a turn), the relay and its events.
func BenchmarkLoad(b *testing.B) {
	var lapd, direct []time.Duration
	errs := 0
	var rate []float64
	for range b.N {
		r := run{sessions: 200, messages: 20, think: 200 * time.Millisecond, direct: true}
		res := r.do(b)
		for _, err := range res.errs[:min(len(res.errs), 5)] {
			b.Log(err)
		}
		errs += len(res.errs)
		lapd = append(lapd, res.lapd...)
		direct = append(direct, res.direct...)
		rate = append(rate, float64(len(res.lapd))/res.elapsed.Seconds())
	}
	b.ReportMetric(float64(errs), "errors")
	b.ReportMetric(median(rate), "lapd-turns/s")
	b.ReportMetric(ms(percentile(direct, 50)), "direct-p50-ms")
	b.ReportMetric(ms(percentile(direct, 99)), "direct-p99-ms")
	b.ReportMetric(ms(percentile(lapd, 50)), "lapd-p50-ms")
	b.ReportMetric(ms(percentile(lapd, 99)), "lapd-p99-ms")
	b.ReportMetric(ms(percentile(lapd, 50)-percentile(direct, 50)), "added-p50-ms")
	b.ReportMetric(ms(percentile(lapd, 99)-percentile(direct, 99)), "added-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// percentile returns the p-th percentile of ds (nearest rank).
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
