package cli_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"lap.dev/lap/cli"
	"lap.dev/lap/cli/clitest"
	"lap.dev/lap/control/api"
)

// reps is how many times each benchmark repeats its operation to report a
// median and a 95th percentile (make bench runs every benchmark once).
const reps = 25

func percentiles(b *testing.B, unit string, samples []time.Duration) {
	slices.Sort(samples)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(samples[len(samples)/2]), "p50-"+unit)
	b.ReportMetric(ms(samples[len(samples)*95/100]), "p95-"+unit)
}

// BenchmarkStartupHelp: how long `lap --help` takes as a process.
func BenchmarkStartupHelp(b *testing.B) {
	for range b.N {
		var samples []time.Duration
		for range reps {
			start := time.Now()
			if err := exec.Command(lapBin, "--help").Run(); err != nil {
				b.Fatal(err)
			}
			samples = append(samples, time.Since(start))
		}
		percentiles(b, "ms", samples)
	}
}

// BenchmarkTimeToPrompt: from starting `lap my-sdk-agent` on a terminal to
// its "> " prompt, against a real control plane with a warm session (the CLI's own
// share of "sessions reach ready in under 2 seconds").
func BenchmarkTimeToPrompt(b *testing.B) {
	f := newServerB(b)
	tg := clitest.Target{Bin: lapBin, URL: f.URL, Key: f.Key}
	for range b.N {
		var samples []time.Duration
		for range reps {
			start := time.Now()
			tm := clitest.StartTerm(b, lapBin, tg.Env(b.TempDir()), "my-sdk-agent", "--rm")
			tm.WaitFor("the prompt", func(l []string) bool { return len(l) >= 5 && l[4] == ">" })
			samples = append(samples, time.Since(start))
			tm.Send("\x04")
			tm.Wait()
		}
		percentiles(b, "ms", samples)
	}
}

// BenchmarkOneShotTurn: `lap my-sdk-agent -m hi` in-process, end to end
// against a real control plane (agent lookup, harness check, session, turn stream).
func BenchmarkOneShotTurn(b *testing.B) {
	f := newServerB(b)
	home := b.TempDir()
	env := map[string]string{"HOME": home, cli.EnvURL: f.URL, cli.EnvKey: f.Key}
	for range b.N {
		var samples []time.Duration
		for range reps {
			var out bytes.Buffer
			start := time.Now()
			code := cli.Main([]string{"my-sdk-agent", "-m", "hi", "--rm"}, cli.Env{Stdout: &out, Stderr: io.Discard, Getenv: func(k string) string { return env[k] }})
			samples = append(samples, time.Since(start))
			if code != 0 {
				b.Fatalf("exit %d", code)
			}
		}
		percentiles(b, "ms", samples)
	}
}

// BenchmarkRenderStream: rendering a long streamed reply (2,000 text deltas
// and 50 tool calls) through the SSE reader and the renderer, piped.
func BenchmarkRenderStream(b *testing.B) {
	var stream strings.Builder
	ev := func(v any) {
		data, _ := json.Marshal(v)
		stream.WriteString("event: harness_event\ndata: " + string(data) + "\n\n")
	}
	for i := range 2000 {
		ev(map[string]any{"type": "message.part.updated", "properties": map[string]any{
			"part": map[string]any{"id": "t", "messageID": "m", "type": "text"}, "delta": "word " + strings.Repeat("x", i%7) + " "}})
		if i%40 == 0 {
			for _, st := range []string{"pending", "running", "completed"} {
				ev(map[string]any{"type": "message.part.updated", "properties": map[string]any{
					"part": map[string]any{"id": "tool", "messageID": "m", "type": "tool", "tool": "bash", "callID": fmt.Sprint(i), "state": map[string]any{"status": st, "input": map[string]any{"command": "ls"}}}}})
			}
		}
	}
	stream.WriteString("event: done\ndata: {\"info\":{\"id\":\"m\",\"role\":\"assistant\",\"time\":{\"created\":1}},\"parts\":[]}\n\n")
	body := stream.String()
	b.ResetTimer()
	for range b.N {
		var samples []time.Duration
		for range reps {
			start := time.Now()
			if err := cli.RenderStream(strings.NewReader(body), io.Discard, io.Discard); err != nil {
				b.Fatal(err)
			}
			samples = append(samples, time.Since(start))
		}
		percentiles(b, "ms", samples)
	}
}

func newServerB(b *testing.B) *clitest.Server {
	f := clitest.NewServer(b, clitest.Options{Warm: true})
	f.AddAgent(b, apiAgent("my-sdk-agent"))
	return f
}

func apiAgent(name string) api.CreateAgentRequest {
	return api.CreateAgentRequest{Name: name, HarnessID: "claude-agent-sdk", Model: "anthropic/claude-sonnet-4-5"}
}
