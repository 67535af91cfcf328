package gateway_test

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/gateway"
	"lap.dev/lap/control/sandboxtoken"
)

// dialects are the two ways a harness calls the gateway: its path, how it
// sends its key, and a minimal request for a model.
var dialects = []struct {
	name, path, keyHeader string
	key                   func(token string) string
	body                  func(model string) string
	authErrorType         string
}{
	{"openai", "/v1/chat/completions", "Authorization", func(tok string) string { return "Bearer " + tok },
		func(model string) string {
			return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
		}, "invalid_request_error"},
	{"anthropic", "/v1/messages", "X-Api-Key", func(tok string) string { return tok },
		func(model string) string {
			return `{"model":"` + model + `","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`
		}, "authentication_error"},
	{"responses", "/v1/responses", "Authorization", func(tok string) string { return "Bearer " + tok },
		func(model string) string {
			return `{"model":"` + model + `","input":[{"role":"user","content":"hi"}]}`
		}, "invalid_request_error"},
}

const openAIAnswer = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],` +
	`"usage":{"prompt_tokens":1200,"completion_tokens":300,"total_tokens":1500,"prompt_tokens_details":{"cached_tokens":200}}}`

const anthropicAnswer = `{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",` +
	`"content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn","stop_sequence":null,` +
	`"usage":{"input_tokens":100,"cache_creation_input_tokens":50,"cache_read_input_tokens":1000,"output_tokens":40}}`

func TestAuth(t *testing.T) {
	t.Parallel()
	other := sandboxtoken.NewSigner([]byte("not-lapd's-key-0123456789abcdef!"))
	tests := []struct {
		name string
		// token returns the credential to send ("" sends none) after
		// setting up the store.
		token func(e *env) string
		want  int
	}{
		{"live sandbox", func(e *env) string { return e.token }, http.StatusOK},
		{"no token", func(e *env) string { return "" }, http.StatusUnauthorized},
		{"master key", func(e *env) string { return "sk-lap-master-key-0123456789abcdef" }, http.StatusUnauthorized},
		{"the real upstream key", func(e *env) string { return secret }, http.StatusUnauthorized},
		{"forged token", func(e *env) string {
			return other.Mint(sandboxtoken.Claims{SandboxID: sandboxID, AgentID: agentID})
		}, http.StatusUnauthorized},
		{"destroyed sandbox", func(e *env) string {
			e.store.setSandbox(sandboxID, gateway.SandboxInfo{AgentID: agentID, SessionID: sessionID, Live: false})
			return e.token
		}, http.StatusUnauthorized},
		{"unknown sandbox", func(e *env) string {
			return e.signer.Mint(sandboxtoken.Claims{SandboxID: "0193ffff-dead", AgentID: agentID})
		}, http.StatusUnauthorized},
		{"token of another agent", func(e *env) string {
			return e.signer.Mint(sandboxtoken.Claims{SandboxID: sandboxID, AgentID: "0193ffff-other-agent"})
		}, http.StatusUnauthorized},
	}
	for _, d := range dialects {
		for _, tt := range tests {
			t.Run(d.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				up := newFakeUpstream(t, jsonAnswer(200, openAIAnswer))
				e := newEnv(t, up.URL)
				var headers []string
				if tok := tt.token(e); tok != "" {
					headers = []string{d.keyHeader, d.key(tok)}
				}
				resp := e.post(t, d.path, d.body("mock/echo"), headers...)
				body := readAll(t, resp)
				require.Equal(t, tt.want, resp.StatusCode, "body %s", body)
				if tt.want == http.StatusUnauthorized {
					assert.Equal(t, d.authErrorType, errorOf(t, body).Error.Type)
					assert.NotEmpty(t, errorOf(t, body).Error.Message)
					assert.Empty(t, up.Requests(), "a refused request must not reach the upstream")
					assert.Empty(t, e.store.Records())
				}
			})
		}
	}
}

func TestAuthModelsRoute(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	resp, err := client.Get(e.URL + "/v1/models")
	require.NoError(t, err)
	body := readAll(t, resp)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "body %s", body)
	assert.Contains(t, errorOf(t, body).Error.Message, "missing sandbox token")
}

// TestTokenRevokedWhenSandboxDestroyed follows one token through its
// sandbox's life: accepted while live, refused once destroyed.
func TestTokenRevokedWhenSandboxDestroyed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	resp := e.post(t, "/v1/chat/completions", dialects[0].body("mock/echo"), "Authorization", "Bearer "+e.token)
	body := readAll(t, resp)
	require.Equal(t, http.StatusOK, resp.StatusCode, "body %s", body)

	e.store.setSandbox(sandboxID, gateway.SandboxInfo{AgentID: agentID, SessionID: sessionID, Live: false})
	resp = e.post(t, "/v1/chat/completions", dialects[0].body("mock/echo"), "Authorization", "Bearer "+e.token)
	body = readAll(t, resp)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Contains(t, errorOf(t, body).Error.Message, "is no longer live")
}

func TestForwardWholeAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, path, model, requestBody, answer string
		headers                                []string
		base                                   func(url string) string
		wantKeyHeader, wantKey, wantAbsent     string
		wantUsage                              gateway.Usage
	}{
		{
			name: "openai", path: "/v1/chat/completions", model: "gpt-4o",
			requestBody: `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.2}`,
			answer:      openAIAnswer,
			headers:     []string{"Authorization", "Bearer "},
			base:        func(url string) string { return url },
			// the sandbox's token swapped for the real key, in OpenAI's header
			wantKeyHeader: "Authorization", wantKey: "Bearer " + secret, wantAbsent: "X-Api-Key",
			// 1000 uncached × $2.50/M + 200 cached × $1.25/M + 300 × $10/M
			wantUsage: gateway.Usage{InputTokens: 1200, OutputTokens: 300, CacheReadTokens: 200, CostUSD: 0.00575},
		},
		{
			name: "openai with /v1 in LITELLM_API_BASE", path: "/v1/chat/completions", model: "gpt-4o",
			requestBody:   `{"model":"gpt-4o","messages":[]}`,
			answer:        openAIAnswer,
			headers:       []string{"Authorization", "Bearer "},
			base:          func(url string) string { return url + "/v1/" },
			wantKeyHeader: "Authorization", wantKey: "Bearer " + secret, wantAbsent: "X-Api-Key",
			wantUsage: gateway.Usage{InputTokens: 1200, OutputTokens: 300, CacheReadTokens: 200, CostUSD: 0.00575},
		},
		{
			name: "anthropic", path: "/v1/messages?beta=true", model: "anthropic/claude-sonnet-4-5",
			requestBody: `{"model":"anthropic/claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"hi"}]}`,
			answer:      anthropicAnswer,
			headers:     []string{"X-Api-Key", "", "Anthropic-Version", "2023-06-01", "Anthropic-Beta", "prompt-caching-2024-07-31"},
			base:        func(url string) string { return url },
			// Anthropic's header for the key, and no Authorization at all
			wantKeyHeader: "X-Api-Key", wantKey: secret, wantAbsent: "Authorization",
			// 100 × $3/M + 50 cache writes × $3.75/M + 1000 cache reads × $0.30/M + 40 × $15/M
			wantUsage: gateway.Usage{InputTokens: 1150, OutputTokens: 40, CacheReadTokens: 1000, CacheWriteTokens: 50,
				CostUSD: 0.0003 + 0.0001875 + 0.0003 + 0.0006},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Request-Id", "req-42")
				jsonAnswer(200, tt.answer)(w, r)
			})
			e := newEnv(t, tt.base(up.URL))
			headers := append([]string(nil), tt.headers...)
			headers[1] += e.token
			resp := e.post(t, tt.path, tt.requestBody, headers...)
			body := readAll(t, resp)
			require.Equal(t, http.StatusOK, resp.StatusCode, "body %s", body)
			assert.Equal(t, tt.answer, body, "the answer is relayed byte for byte")
			assert.Equal(t, "req-42", resp.Header.Get("X-Request-Id"))

			reqs := up.Requests()
			require.Len(t, reqs, 1)
			got := reqs[0]
			path, query, _ := strings.Cut(tt.path, "?")
			assert.Equal(t, path, got.Path)
			assert.Equal(t, query, got.RawQuery)
			assert.Equal(t, tt.wantKey, got.Header.Get(tt.wantKeyHeader))
			assert.Empty(t, got.Header.Get(tt.wantAbsent))
			assert.Equal(t, tt.requestBody, string(got.Body), "a request that is not a stream goes up unchanged")
			for name, values := range got.Header {
				for _, v := range values {
					assert.NotContains(t, v, sandboxtoken.Prefix, "header %s carries the sandbox token upstream", name)
				}
			}
			for i := 2; i+1 < len(tt.headers); i += 2 {
				assert.Equal(t, tt.headers[i+1], got.Header.Get(tt.headers[i]), "header %s forwarded", tt.headers[i])
			}

			recs := e.store.waitRecords(t, 1)
			require.Len(t, recs, 1)
			assert.Equal(t, sessionID, recs[0].SessionID)
			assert.Equal(t, agentID, recs[0].AgentID)
			assert.Equal(t, tt.model, recs[0].Model)
			assert.InDelta(t, tt.wantUsage.CostUSD, recs[0].Usage.CostUSD, 1e-12)
			tt.wantUsage.CostUSD = recs[0].Usage.CostUSD
			assert.Equal(t, tt.wantUsage, recs[0].Usage)

			assert.Equal(t, 1.0, counter(t, e, "lap_llm_requests_total", agentID, priceEntry(tt.model), "200"))
			assert.Equal(t, float64(tt.wantUsage.InputTokens), counter(t, e, "lap_llm_input_tokens_total", agentID, priceEntry(tt.model)))
			assert.Equal(t, float64(tt.wantUsage.OutputTokens), counter(t, e, "lap_llm_output_tokens_total", agentID, priceEntry(tt.model)))
			assert.InDelta(t, tt.wantUsage.CostUSD, counter(t, e, "lap_llm_cost_usd_total", agentID, priceEntry(tt.model)), 1e-12)
		})
	}
}

func TestRoutesWithoutV1(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, jsonAnswer(200, openAIAnswer))
	e := newEnv(t, up.URL)
	resp := e.post(t, "/chat/completions", `{"model":"gpt-4o","messages":[]}`, "Authorization", "Bearer "+e.token)
	assert.Equal(t, openAIAnswer, readAll(t, resp))
	require.Len(t, up.Requests(), 1)
	assert.Equal(t, "/v1/chat/completions", up.Requests()[0].Path)
}

func TestCountTokensIsForwardedNotBilled(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, jsonAnswer(200, `{"input_tokens":42}`))
	e := newEnv(t, up.URL)
	resp := e.post(t, "/v1/messages/count_tokens", `{"model":"claude-sonnet-4-5","messages":[]}`, "X-Api-Key", e.token)
	assert.Equal(t, `{"input_tokens":42}`, readAll(t, resp))
	require.Len(t, up.Requests(), 1)
	assert.Equal(t, secret, up.Requests()[0].Header.Get("X-Api-Key"))
	assert.Empty(t, e.store.Records())
}

func TestUpstreamErrorsKeepStatusAndMessage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, path, body, answer string
		status                   int
	}{
		{"openai rate limit", "/v1/chat/completions", `{"model":"gpt-4o","messages":[]}`,
			`{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","param":null,"code":"rate_limit_exceeded"}}`, 429},
		{"openai stream, bad request", "/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[]}`,
			`{"error":{"message":"messages must not be empty","type":"invalid_request_error","param":"messages","code":null}}`, 400},
		{"anthropic overloaded", "/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":1,"messages":[]}`,
			`{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`, 529},
		{"anthropic stream, unknown model", "/v1/messages", `{"model":"claude-nope","stream":true,"max_tokens":1,"messages":[]}`,
			`{"type":"error","error":{"type":"not_found_error","message":"model: claude-nope"}}`, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "7")
				jsonAnswer(tt.status, tt.answer)(w, r)
			})
			// claude-nope has no price: let it through for the upstream
			// to refuse.
			e := newEnv(t, up.URL, func(o *gateway.Options) { o.AllowUnpriced = true })
			resp := e.post(t, tt.path, tt.body, "Authorization", "Bearer "+e.token)
			assert.Equal(t, tt.answer, readAll(t, resp))
			assert.Equal(t, tt.status, resp.StatusCode)
			assert.Equal(t, "7", resp.Header.Get("Retry-After"))
			assert.Empty(t, e.store.Records(), "an error answer uses no tokens")
		})
	}
}

func TestUpstreamUnreachableAndTimeout(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	refusing := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())
	hung := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })

	tests := []struct {
		name, base string
		timeout    time.Duration
		status     int
		want       string
	}{
		{"unreachable", refusing, 0, http.StatusBadGateway, "LITELLM_API_BASE could not be reached"},
		{"timeout", hung.URL, 100 * time.Millisecond, http.StatusGatewayTimeout, "did not answer within 100ms (LAP_LLM_TIMEOUT)"},
	}
	for _, tt := range tests {
		for _, d := range dialects {
			t.Run(tt.name+"/"+d.name, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t, tt.base, func(o *gateway.Options) { o.Timeout = tt.timeout })
				resp := e.post(t, d.path, d.body("gpt-4o"), d.keyHeader, d.key(e.token))
				body := readAll(t, resp)
				assert.Equal(t, tt.status, resp.StatusCode, "body %s", body)
				assert.Contains(t, errorOf(t, body).Error.Message, tt.want)
			})
		}
	}
}

func TestNonMockModelWithoutUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	for _, d := range dialects {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			resp := e.post(t, d.path, d.body("anthropic/claude-sonnet-4-5"), d.keyHeader, d.key(e.token))
			body := readAll(t, resp)
			assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
			eb := errorOf(t, body)
			assert.Equal(t, "invalid_request_error", eb.Error.Type)
			assert.Contains(t, eb.Error.Message, "model anthropic/claude-sonnet-4-5 needs an upstream LLM")
			assert.Contains(t, eb.Error.Message, "set LITELLM_API_BASE")
			assert.Contains(t, eb.Error.Message, "mock/echo")
		})
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	tests := []struct{ name, body, want string }{
		{"not json", `{"model":`, "not a JSON object"},
		{"not an object", `["mock/echo"]`, "not a JSON object"},
		{"no model", `{"messages":[]}`, "names no model"},
	}
	for _, d := range dialects {
		for _, tt := range tests {
			t.Run(d.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				resp := e.post(t, d.path, tt.body, d.keyHeader, d.key(e.token))
				body := readAll(t, resp)
				assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
				assert.Contains(t, errorOf(t, body).Error.Message, tt.want)
			})
		}
	}
}

func TestModels(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, jsonAnswer(200,
		`{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"}]}`))
	tests := []struct {
		name, base string
		headers    []string
		want       string
	}{
		{"upstream and mock", up.URL, nil, `{"object":"list","data":[` +
			`{"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"},` +
			`{"created":0,"id":"mock/echo","object":"model","owned_by":"lap"},` +
			`{"created":0,"id":"mock/tools","object":"model","owned_by":"lap"}]}`},
		{"mock only", "", nil, `{"data":[` +
			`{"created":0,"id":"mock/echo","object":"model","owned_by":"lap"},` +
			`{"created":0,"id":"mock/tools","object":"model","owned_by":"lap"}],"object":"list"}`},
		{"mock only, anthropic client", "", []string{"Anthropic-Version", "2023-06-01"}, `{"data":[` +
			`{"created_at":"1970-01-01T00:00:00Z","display_name":"mock/echo (lap offline demo)","id":"mock/echo","type":"model"},` +
			`{"created_at":"1970-01-01T00:00:00Z","display_name":"mock/tools (lap offline demo)","id":"mock/tools","type":"model"}],` +
			`"first_id":"mock/echo","has_more":false,"last_id":"mock/tools"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, tt.base)
			req, err := http.NewRequest(http.MethodGet, e.URL+"/v1/models", nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+e.token)
			for i := 0; i+1 < len(tt.headers); i += 2 {
				req.Header.Set(tt.headers[i], tt.headers[i+1])
			}
			resp, err := client.Do(req)
			require.NoError(t, err)
			body := readAll(t, resp)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.JSONEq(t, tt.want, body)
		})
	}
	for _, r := range up.Requests() {
		assert.Equal(t, "Bearer "+secret, r.Header.Get("Authorization"))
	}
}

// counter returns the value of the counter name with the given labels
// (agent, model and, for requests, code) from e's registry.
func counter(t *testing.T, e *env, name string, labels ...string) float64 {
	t.Helper()
	names := []string{"agent", "model", "code"}
	families, err := e.reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for i, want := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == names[i] {
						found = lp.GetValue() == want
					}
				}
				if !found {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// priceEntry is the metrics label of a model: the name of its price
// table entry, without the provider prefix the request named.
func priceEntry(model string) string { return strings.TrimPrefix(model, "anthropic/") }
