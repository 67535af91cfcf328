package gateway_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/gateway"
)

// TestRequestsReadTwoWaysAreRefused: what the gateway prices must be what
// the upstream answers. A body another JSON parser could read differently
// from the gateway — a key twice (gjson reads the first, the upstream the
// last), a key in another case, a mistyped flag — is refused with a 400
// in the caller's dialect and never reaches the upstream.
func TestRequestsReadTwoWaysAreRefused(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, body, code, want string }{
		{"model twice", `{"model":"mock/echo","model":"gpt-4o","max_tokens":8,"messages":[]}`,
			"duplicate_key", `the key "model" twice`},
		{"model twice, escaped", `{"model":"mock/echo","mod\u0065l":"gpt-4o","max_tokens":8,"messages":[]}`,
			"duplicate_key", `the key "model" twice`},
		{"stream twice", `{"model":"gpt-4o","stream":false,"stream":true,"max_tokens":8,"messages":[]}`,
			"duplicate_key", `the key "stream" twice`},
		{"include_usage twice", `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true,"include_usage":false},"max_tokens":8,"messages":[]}`,
			"duplicate_key", `the key "include_usage" twice`},
		{"duplicate deep inside", `{"model":"gpt-4o","max_tokens":8,"messages":[{"role":"user","content":"a","content":"b"}]}`,
			"duplicate_key", `the key "content" twice`},
		{"model in another case", `{"model":"mock/echo","Model":"gpt-4o","max_tokens":8,"messages":[]}`,
			"duplicate_key", "differ only in case"},
		{"stream as a string", `{"model":"gpt-4o","stream":"false","max_tokens":8,"messages":[]}`,
			"invalid_request", "stream must be true or false"},
		{"include_usage as a number", `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":0},"max_tokens":8,"messages":[]}`,
			"invalid_request", "stream_options.include_usage must be true or false"},
		{"model as a number", `{"model":4,"max_tokens":8,"messages":[]}`, "invalid_model", "model must be a string"},
		{"max_tokens negative", `{"model":"gpt-4o","max_tokens":-1,"messages":[]}`, "invalid_request", "max_tokens must be a non-negative integer"},
		{"nested too deep", `{"model":"gpt-4o","max_tokens":8,"messages":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`,
			"invalid_json", "nests deeper than"},
	}
	for _, d := range dialects {
		for _, tt := range tests {
			t.Run(d.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				up := newFakeUpstream(t, jsonAnswer(200, openAIAnswer))
				e := newEnv(t, up.URL)
				resp := e.post(t, d.path, tt.body, d.keyHeader, d.key(e.token))
				body := readAll(t, resp)
				require.Equal(t, http.StatusBadRequest, resp.StatusCode, "body %s", body)
				eb := errorOf(t, body)
				assert.Contains(t, eb.Error.Message, tt.want)
				if d.name != "anthropic" {
					assert.Equal(t, tt.code, eb.Error.Code)
				} else {
					assert.Equal(t, "error", eb.Type)
					assert.Equal(t, "invalid_request_error", eb.Error.Type)
				}
				assert.Empty(t, up.Requests(), "a request read two ways must not reach the upstream")
				assert.Empty(t, e.store.Records())
			})
		}
	}
}

// TestUnpricedModels: a model missing from the price table would spend
// without counting against any budget, so it is refused unless lapd
// allows unpriced models (then at $0); mock models are free and priced.
func TestUnpricedModels(t *testing.T) {
	t.Parallel()
	answer := `{"id":"c","object":"chat.completion","created":1,"model":"house-model",` +
		`"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":1000,"completion_tokens":1000,"total_tokens":2000}}`
	body := `{"model":"house-model","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`

	t.Run("refused by default", func(t *testing.T) {
		t.Parallel()
		up := newFakeUpstream(t, jsonAnswer(200, answer))
		e := newEnv(t, up.URL)
		resp := e.post(t, "/v1/chat/completions", body, "Authorization", "Bearer "+e.token)
		got := readAll(t, resp)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "body %s", got)
		eb := errorOf(t, got)
		assert.Equal(t, "model_not_priced", eb.Error.Code)
		assert.Contains(t, eb.Error.Message, "model house-model has no price")
		assert.Contains(t, eb.Error.Message, "LAP_PRICES_FILE")
		assert.Contains(t, eb.Error.Message, "LAP_ALLOW_UNPRICED_MODELS=true")
		assert.Empty(t, up.Requests())

		resp = e.post(t, "/v1/messages/count_tokens", body, "X-Api-Key", e.token)
		got = readAll(t, resp)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "count_tokens too: body %s", got)
		assert.Empty(t, up.Requests())
	})
	t.Run("allowed", func(t *testing.T) {
		t.Parallel()
		up := newFakeUpstream(t, jsonAnswer(200, answer))
		e := newEnv(t, up.URL, func(o *gateway.Options) { o.AllowUnpriced = true })
		resp := e.post(t, "/v1/chat/completions", body, "Authorization", "Bearer "+e.token)
		require.Equal(t, http.StatusOK, resp.StatusCode, "body %s", readAll(t, resp))
		recs := e.store.waitRecords(t, 1)
		assert.Zero(t, recs[0].Usage.CostUSD)
		assert.Equal(t, int64(1000), recs[0].Usage.OutputTokens)
	})
	t.Run("mock models are free", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, "")
		resp := e.post(t, "/v1/chat/completions", dialects[0].body("mock/echo"), "Authorization", "Bearer "+e.token)
		require.Equal(t, http.StatusOK, resp.StatusCode, "body %s", readAll(t, resp))
		recs := e.store.waitRecords(t, 1)
		assert.Zero(t, recs[0].Usage.CostUSD)
	})
}

// TestCountTokensIsBudgetChecked: counting tokens is free, but an agent
// out of budget gets nothing more from the upstream.
func TestCountTokensIsBudgetChecked(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, jsonAnswer(200, `{"input_tokens":42}`))
	e := newEnv(t, up.URL)
	e.store.sessionMax[sessionID], e.store.sessionSpent[sessionID] = 0.5, 0.5
	resp := e.post(t, "/v1/messages/count_tokens", `{"model":"claude-sonnet-4-5","messages":[]}`, "X-Api-Key", e.token)
	body := readAll(t, resp)
	require.Equal(t, http.StatusPaymentRequired, resp.StatusCode, "body %s", body)
	assert.Contains(t, errorOf(t, body).Error.Message, "budget exceeded: session 0193c3d4")
	assert.Empty(t, up.Requests())
}

// TestConcurrentRequestsReserveBudget: requests in flight reserve their
// estimated cost, so concurrent requests of one session cannot together
// spend past its budget by more than the one request admitted last. Each
// request here states max_tokens 1000 of gpt-4o ($0.01 of output) and
// answers 1000 output tokens; the session may spend $0.025. Without
// reservations all five would be forwarded (nothing spent yet when each
// is checked) and spend $0.05.
func TestConcurrentRequestsReserveBudget(t *testing.T) {
	t.Parallel()
	const n = 5
	answer := `{"id":"c","object":"chat.completion","created":1,"model":"gpt-4o",` +
		`"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":10,"completion_tokens":1000,"total_tokens":1010}}`
	release := make(chan struct{})
	var arrived atomic.Int32
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		<-release
		jsonAnswer(200, answer)(w, r)
	})
	e := newEnv(t, up.URL)
	const limit = 0.025
	e.store.sessionMax[sessionID] = limit

	var refused atomic.Int32
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := e.post(t, "/v1/chat/completions", `{"model":"gpt-4o","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}`,
				"Authorization", "Bearer "+e.token)
			body := readAll(t, resp)
			if resp.StatusCode != http.StatusOK {
				refused.Add(1)
				assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "body %s", body)
				assert.Contains(t, errorOf(t, body).Error.Message, "budget reserved: session 0193c3d4")
				assert.Equal(t, "5", resp.Header.Get("Retry-After"))
			}
			statuses <- resp.StatusCode
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for arrived.Load()+refused.Load() < n {
		require.True(t, time.Now().Before(deadline), "waited for every request to be forwarded or refused: %d forwarded, %d refused",
			arrived.Load(), refused.Load())
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
	close(release)
	wg.Wait()

	forwarded := int(arrived.Load())
	assert.Equal(t, 3, forwarded, "$0.025 admits three reservations of ~$0.0100 (the third while $0.0048 is unreserved)")
	recs := e.store.waitRecords(t, forwarded)
	spent := 0.0
	for _, r := range recs {
		spent += r.Usage.CostUSD
	}
	oneRequest := 10*2.5e-6 + 1000*10e-6
	assert.LessOrEqual(t, spent, limit+oneRequest+1e-9, "spent past the budget by more than one request")

	// Settled: the budget is now spent for good.
	resp := e.post(t, "/v1/chat/completions", `{"model":"gpt-4o","max_tokens":1000,"messages":[]}`, "Authorization", "Bearer "+e.token)
	assert.Equal(t, http.StatusPaymentRequired, resp.StatusCode, "body %s", readAll(t, resp))
}

// TestStreamWithoutUsageIsChargedItsReservation: a stream that ends
// without reporting usage is not free.
func TestStreamWithoutUsageIsChargedItsReservation(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		writeEvents(w, `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}`+"\n\n",
			"data: [DONE]\n\n")
	})
	e := newEnv(t, up.URL)
	resp := e.post(t, "/v1/chat/completions", `{"model":"gpt-4o","stream":true,"max_tokens":1000,"messages":[]}`, "Authorization", "Bearer "+e.token)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	readAll(t, resp)
	recs := e.store.waitRecords(t, 1)
	assert.GreaterOrEqual(t, recs[0].Usage.CostUSD, 1000*10e-6, "charged at least its max_tokens of output")
}

// TestBillingHeadersAndQueryStayBehind: OpenAI-Organization and
// OpenAI-Project choose which organization and project the real key
// bills, LiteLLM's x-litellm-* headers its routing and spend tracking,
// and query parameters can do the same; none of them reaches the
// upstream. What the wire formats need still does.
func TestBillingHeadersAndQueryStayBehind(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, jsonAnswer(200, openAIAnswer))
	e := newEnv(t, up.URL)
	resp := e.post(t, "/v1/chat/completions?organization=org-attacker&project=proj-attacker&beta=true",
		`{"model":"gpt-4o","messages":[]}`,
		"Authorization", "Bearer "+e.token,
		"OpenAI-Organization", "org-attacker", "OpenAI-Project", "proj-attacker",
		"X-Litellm-Api-Key", "sk-other", "X-Litellm-Tags", "free", "Cookie", "a=b",
		"Anthropic-Beta", "prompt-caching-2024-07-31", "X-Stainless-Retry-Count", "0", "User-Agent", "OpenAI/Go 3.0")
	require.Equal(t, http.StatusOK, resp.StatusCode, "body %s", readAll(t, resp))
	reqs := up.Requests()
	require.Len(t, reqs, 1)
	got := reqs[0]
	for _, h := range []string{"OpenAI-Organization", "OpenAI-Project", "X-Litellm-Api-Key", "X-Litellm-Tags", "Cookie"} {
		assert.Empty(t, got.Header.Values(h), "header %s went upstream", h)
	}
	assert.Equal(t, "beta=true", got.RawQuery)
	assert.Equal(t, "Bearer "+secret, got.Header.Get("Authorization"))
	assert.Equal(t, "prompt-caching-2024-07-31", got.Header.Get("Anthropic-Beta"))
	assert.Equal(t, "0", got.Header.Get("X-Stainless-Retry-Count"))
	assert.Equal(t, "OpenAI/Go 3.0", got.Header.Get("User-Agent"))
	assert.Equal(t, "application/json", got.Header.Get("Content-Type"))
}

// TestModelNamesAreValidated: a model name reaches logs, metrics and
// error messages, so one that no model has is refused before any of them.
func TestModelNamesAreValidated(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, model, want string }{
		{"too long", "gpt-4o-" + strings.Repeat("x", 300), "at most 256 are accepted"},
		{"newline", `gpt-4o\nlevel=ERROR msg=forged`, "a character (byte 6) that model names do not use"},
		{"space", "gpt 4o", "a character (byte 3)"},
		{"not ascii", "gpt-4o-\u00e9", "a character (byte 7)"},
		{"empty", "", "names no model"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := newFakeUpstream(t, jsonAnswer(200, openAIAnswer))
			var logs bytes.Buffer
			e := newEnv(t, up.URL, func(o *gateway.Options) {
				o.AllowUnpriced = true
				o.Logger = slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))
			})
			resp := e.post(t, "/v1/chat/completions", `{"model":"`+tt.model+`","messages":[]}`, "Authorization", "Bearer "+e.token)
			body := readAll(t, resp)
			require.Equal(t, http.StatusBadRequest, resp.StatusCode, "body %s", body)
			assert.Contains(t, errorOf(t, body).Error.Message, tt.want)
			assert.Empty(t, up.Requests())
			assert.NotContains(t, logs.String(), "forged")
		})
	}
}

// TestModelNamesDoNotGrowMetricsOrLogs: 300 distinct model names, priced
// aliases of one model and names without a price alike, make a handful of
// metrics series (one per price table entry, and "other") and a bounded
// number of log lines.
func TestModelNamesDoNotGrowMetricsOrLogs(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, jsonAnswer(200, openAIAnswer))
	var logs bytes.Buffer
	e := newEnv(t, up.URL, func(o *gateway.Options) {
		o.AllowUnpriced = true
		o.Logger = slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))
	})
	const n = 150
	for i := range n {
		for _, model := range []string{fmt.Sprintf("house-model-%d", i), fmt.Sprintf("openai/gpt-4o@%d", i)} {
			resp := e.post(t, "/v1/chat/completions", `{"model":"`+model+`","messages":[]}`, "Authorization", "Bearer "+e.token)
			body := readAll(t, resp)
			require.Equal(t, http.StatusOK, resp.StatusCode, "body %s", body)
		}
	}
	e.store.waitRecords(t, 2*n)

	families, err := e.reg.Gather()
	require.NoError(t, err)
	models := map[string]bool{}
	series := 0
	for _, f := range families {
		for _, m := range f.GetMetric() {
			series++
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "model" {
					models[lp.GetValue()] = true
				}
			}
		}
	}
	assert.Equal(t, map[string]bool{"gpt-4o": true, "other": true}, models)
	assert.LessOrEqual(t, series, 8, "series of the four counters")
	assert.LessOrEqual(t, strings.Count(logs.String(), "\n"), 25, "log lines")
}

// TestHugeModelNamesLeaveNoMemoryBehind sends ten requests, each naming a
// model of 8 MiB, to a gateway served as lapd serves it (32 MiB bodies),
// and measures the heap in use before and after: nothing of the names may
// stay (in a map of models warned about, a log line, a metrics label).
func TestHugeModelNamesLeaveNoMemoryBehind(t *testing.T) {
	// Not parallel: it measures the process's heap.
	answered := 0
	var mu sync.Mutex
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		answered++
		mu.Unlock()
		jsonAnswer(200, openAIAnswer)(w, r)
	}))
	t.Cleanup(upstream.Close)
	var logBytes atomic.Int64
	e := newEnv(t, upstream.URL)
	g, err := gateway.New(gateway.Options{
		UpstreamBase: upstream.URL, UpstreamKey: secret, Tokens: e.signer, Sandboxes: e.store, Usage: e.store, Budgets: e.store,
		AllowUnpriced: true,
		Logger:        slog.New(slog.NewTextHandler(countingWriter{&logBytes}, nil)),
	})
	require.NoError(t, err)
	app := fiber.New(fiber.Config{DisableStartupMessage: true, BodyLimit: 32 << 20, StreamRequestBody: true})
	g.Register(app.Group("/llm"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go app.Listener(ln)
	t.Cleanup(func() { app.ShutdownWithTimeout(5 * time.Second) })
	url := "http://" + ln.Addr().String() + "/llm/v1/chat/completions"

	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	before := heap()
	for i := range 10 {
		name := fmt.Sprintf("m%d-%s", i, strings.Repeat("x", 8<<20))
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"model":"`+name+`","messages":[]}`))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+e.token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	after := heap()
	grown := int64(after) - int64(before)
	t.Logf("heap in use: %d MiB before, %d MiB after ten 8 MiB model names; %d bytes logged; %d reached the upstream",
		before>>20, after>>20, logBytes.Load(), answered)
	assert.Less(t, grown, int64(40<<20), "heap grew by %d MiB: the names (80 MiB in all) stayed", grown>>20)
	assert.Less(t, logBytes.Load(), int64(64<<10), "bytes logged")
}

// syncWriter serialises writes to w (slog handlers write from the
// gateway's goroutines).
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// countingWriter counts what is written and keeps none of it.
type countingWriter struct{ n *atomic.Int64 }

func (c countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return len(p), nil
}
