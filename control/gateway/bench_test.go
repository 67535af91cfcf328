package gateway_test

import (
	"bufio"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkGatewayOverhead measures what the gateway adds to an LLM call:
// the same requests go to a fake upstream on loopback directly and through
// the gateway (token check, budget check, key swap, relay, usage parsing
// and recording), interleaved so both see the same machine load. It
// reports p50 latencies over many samples in every run, whatever b.N, so
// `make bench` (-benchtime 1x) gets stable figures. Goal: ≤ 1 ms p50 added,
// including the first byte of a stream.
func BenchmarkGatewayOverhead(b *testing.B) {
	const answer = openAIAnswer
	events := []string{
		`data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}],"usage":null}` + "\n\n",
		`data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}],"usage":null}` + "\n\n",
		`data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}` + "\n\n",
		"data: [DONE]\n\n",
	}
	up := newFakeUpstream(b, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "chat/completions") && strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
			w.Header().Set("Content-Type", "text/event-stream")
			writeEvents(w, events...)
			return
		}
		jsonAnswer(200, answer)(w, r)
	})
	e := newEnv(b, up.URL)
	// A conversation of realistic size: the whole history goes up each turn.
	history := strings.Repeat(`{"role":"user","content":"`+strings.Repeat("lorem ipsum ", 80)+`"},`, 40)
	body := `{"model":"gpt-4o","messages":[` + history + `{"role":"user","content":"hi"}]}`
	streamBody := `{"model":"gpt-4o","stream":true,"messages":[` + history + `{"role":"user","content":"hi"}]}`

	// call returns the time to the first byte of the body and to its end.
	call := func(url string, body string, stream bool, auth bool) (first, total time.Duration) {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if stream {
			req.Header.Set("Accept", "text/event-stream")
		}
		if auth {
			req.Header.Set("Authorization", "Bearer "+e.token)
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		if _, err := br.ReadByte(); err != nil {
			b.Fatal(err)
		}
		first = time.Since(start)
		if _, err := io.Copy(io.Discard, br); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
		return first, time.Since(start)
	}

	direct := up.URL + "/v1/chat/completions"
	gw := e.URL + "/v1/chat/completions"
	for range 50 { // warm connections and caches
		call(direct, body, false, false)
		call(gw, body, false, true)
		call(direct, streamBody, true, false)
		call(gw, streamBody, true, true)
	}

	samples := max(b.N, 500)
	var dWhole, gWhole, dFirst, gFirst, dStream, gStream []time.Duration
	b.ResetTimer()
	for range samples {
		_, t := call(direct, body, false, false)
		dWhole = append(dWhole, t)
		_, t = call(gw, body, false, true)
		gWhole = append(gWhole, t)
		f, t := call(direct, streamBody, true, false)
		dFirst, dStream = append(dFirst, f), append(dStream, t)
		f, t = call(gw, streamBody, true, true)
		gFirst, gStream = append(gFirst, f), append(gStream, t)
	}
	b.StopTimer()

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(p50(gWhole)-p50(dWhole)), "added-ms-p50-whole")
	b.ReportMetric(ms(p50(gFirst)-p50(dFirst)), "added-ms-p50-stream-first-byte")
	b.ReportMetric(ms(p50(gStream)-p50(dStream)), "added-ms-p50-stream-whole")
	b.ReportMetric(ms(p50(dWhole)), "direct-ms-p50-whole")
	b.ReportMetric(ms(p50(dFirst)), "direct-ms-p50-stream-first-byte")
	b.ReportMetric(ms(p90(gFirst)-p90(dFirst)), "added-ms-p90-stream-first-byte")
	b.ReportMetric(float64(len(body))/1024, "request-KiB")
}

func p50(d []time.Duration) time.Duration { return percentile(d, 50) }
func p90(d []time.Duration) time.Duration { return percentile(d, 90) }

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}
