package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/openai/openai-go/v3"
	openaioption "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tidwall/gjson"

	"lap.dev/lap/control/gateway"
	"lap.dev/lap/control/sandboxtoken"
)

// The OpenAI Responses API (POST /v1/responses), which Codex speaks, goes
// through the gateway as chat completions do: token swapped, relayed
// byte for byte, usage priced and recorded, budgets enforced.

// responsesAnswer is a whole Responses answer of gpt-5: 1200 input tokens
// of which 200 cached, 300 output tokens.
const responsesAnswer = `{"id":"resp_1","object":"response","created_at":1,"status":"completed","model":"gpt-5-2025-08-07",` +
	`"output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant",` +
	`"content":[{"type":"output_text","text":"Hello!","annotations":[]}]}],` +
	`"usage":{"input_tokens":1200,"input_tokens_details":{"cached_tokens":200},"output_tokens":300,` +
	`"output_tokens_details":{"reasoning_tokens":100},"total_tokens":1500}}`

// gpt5Cost is what responsesAnswer costs at gpt-5's price: uncached
// input, cached input and output.
const gpt5Cost = 1000*1.25e-6 + 200*0.125e-6 + 300*10e-6

func responsesClient(e *env, opts ...openaioption.RequestOption) *responses.ResponseService {
	svc := responses.NewResponseService(append([]openaioption.RequestOption{
		openaioption.WithBaseURL(e.URL + "/v1/"), openaioption.WithAPIKey(e.token), openaioption.WithMaxRetries(0)}, opts...)...)
	return &svc
}

func TestResponsesWholeAnswer(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "req-7")
		jsonAnswer(200, responsesAnswer)(w, r)
	})
	e := newEnv(t, up.URL)
	body := `{"model":"gpt-5","instructions":"be brief","input":[{"role":"user","content":"hi"}],"store":false,"max_output_tokens":512}`
	resp := e.post(t, "/v1/responses", body, "Authorization", "Bearer "+e.token,
		"OpenAI-Organization", "org-sandbox-chosen", "Session_id", "codex-session")
	got := readAll(t, resp)
	require.Equal(t, http.StatusOK, resp.StatusCode, "body %s", got)
	assert.Equal(t, responsesAnswer, got, "the answer is relayed byte for byte")
	assert.Equal(t, "req-7", resp.Header.Get("X-Request-Id"))

	reqs := up.Requests()
	require.Len(t, reqs, 1)
	assert.Equal(t, "/v1/responses", reqs[0].Path)
	assert.Equal(t, body, string(reqs[0].Body), "the request goes up unchanged")
	assert.Equal(t, "Bearer "+secret, reqs[0].Header.Get("Authorization"))
	assert.Empty(t, reqs[0].Header.Get("OpenAI-Organization"), "a sandbox does not choose what the key bills")
	assert.Empty(t, reqs[0].Header.Get("Session_id"))
	for name, values := range reqs[0].Header {
		for _, v := range values {
			assert.NotContains(t, v, sandboxtoken.Prefix, "header %s carries the sandbox token upstream", name)
		}
	}

	recs := e.store.waitRecords(t, 1)
	require.Len(t, recs, 1)
	assert.Equal(t, record{SessionID: sessionID, AgentID: agentID, Model: "gpt-5", Usage: gateway.Usage{
		InputTokens: 1200, OutputTokens: 300, CacheReadTokens: 200, CostUSD: recs[0].Usage.CostUSD}}, recs[0])
	assert.InDelta(t, gpt5Cost, recs[0].Usage.CostUSD, 1e-12)
	assert.Equal(t, 1.0, counter(t, e, "lap_llm_requests_total", agentID, "gpt-5", "200"))
	assert.Equal(t, 1200.0, counter(t, e, "lap_llm_input_tokens_total", agentID, "gpt-5"))
	assert.Equal(t, 300.0, counter(t, e, "lap_llm_output_tokens_total", agentID, "gpt-5"))
	assert.InDelta(t, gpt5Cost, counter(t, e, "lap_llm_cost_usd_total", agentID, "gpt-5"), 1e-12)

	// Without /v1, as for a client given the gateway's URL as its base.
	resp = e.post(t, "/responses", body, "Authorization", "Bearer "+e.token)
	assert.Equal(t, responsesAnswer, readAll(t, resp))
	assert.Equal(t, "/v1/responses", up.Requests()[1].Path)

	// The official SDK reads the relayed answer.
	r, err := responsesClient(e).New(context.Background(), responses.ResponseNewParams{
		Model: "gpt-5", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}})
	require.NoError(t, err)
	assert.Equal(t, "Hello!", r.OutputText())
	assert.Equal(t, int64(200), r.Usage.InputTokensDetails.CachedTokens)
}

// Events of a streamed Responses answer of gpt-5: 10 input tokens, 5
// output tokens; CRLF in one, as upstreams may send.
const (
	respCreated = "event: response.created\n" + `data: {"type":"response.created","sequence_number":0,"response":` +
		`{"id":"resp_2","object":"response","created_at":1,"status":"in_progress","model":"gpt-5","output":[],"usage":null}}` + "\n\n"
	respDelta = "event: response.output_text.delta\r\n" + `data: {"type":"response.output_text.delta","sequence_number":1,` +
		`"item_id":"msg_2","output_index":0,"content_index":0,"delta":"Hello"}` + "\r\n\r\n"
	respItemDone = "event: response.output_item.done\n" + `data: {"type":"response.output_item.done","sequence_number":2,"output_index":0,` +
		`"item":{"type":"message","id":"msg_2","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello","annotations":[]}]}}` + "\n\n"
	respCompleted = "event: response.completed\n" + `data: {"type":"response.completed","sequence_number":3,"response":` +
		`{"id":"resp_2","object":"response","created_at":1,"status":"completed","model":"gpt-5","output":[` +
		`{"type":"message","id":"msg_2","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello","annotations":[]}]}],` +
		`"usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":0},"output_tokens":5,` +
		`"output_tokens_details":{"reasoning_tokens":0},"total_tokens":15}}}` + "\n\n"
)

func TestResponsesStream(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	up := newFakeUpstream(t, streamUpstream(t, release, respCreated, respDelta, respItemDone, respCompleted))
	e := newEnv(t, up.URL)
	body := `{"model":"gpt-5","stream":true,"input":"hi"}`
	resp := e.post(t, "/v1/responses", body, "Authorization", "Bearer "+e.token)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))

	br := bufio.NewReader(resp.Body)
	assert.Equal(t, respCreated, readEvent(t, br), "the first event arrives before the upstream sends the rest")
	close(release)
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Equal(t, respDelta+respItemDone+respCompleted, string(rest), "events are relayed byte for byte, none added")
	assert.Equal(t, body, string(up.Requests()[0].Body), "nothing is asked for: the usage comes anyway")

	recs := e.store.waitRecords(t, 1)
	assert.Equal(t, gateway.Usage{InputTokens: 10, OutputTokens: 5, CostUSD: recs[0].Usage.CostUSD}, recs[0].Usage)
	assert.InDelta(t, 10*1.25e-6+5*10e-6, recs[0].Usage.CostUSD, 1e-12)
	assert.Equal(t, 15.0, counter(t, e, "lap_llm_input_tokens_total", agentID, "gpt-5")+
		counter(t, e, "lap_llm_output_tokens_total", agentID, "gpt-5"))
}

// TestResponsesStreamBroken: a stream the upstream cuts short ends with a
// response.failed event the SDK reports, and is charged its reservation.
func TestResponsesStreamBroken(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Content-Length", "100000") // promises more than it sends
		w.WriteHeader(http.StatusOK)
		writeEvents(w, respCreated, respDelta)
	})
	e := newEnv(t, up.URL)
	s := responsesClient(e).NewStreaming(context.Background(), responses.ResponseNewParams{Model: "gpt-5",
		MaxOutputTokens: openai.Int(1000), Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}})
	var types []string
	var failed responses.Response
	for s.Next() {
		ev := s.Current()
		types = append(types, ev.Type)
		if ev.Type == "response.failed" {
			failed = ev.Response
		}
	}
	require.NoError(t, s.Err())
	assert.Equal(t, []string{"response.created", "response.output_text.delta", "response.failed"}, types)
	assert.Equal(t, responses.ResponseStatusFailed, failed.Status)
	assert.Equal(t, "upstream_error", string(failed.Error.Code))
	assert.Contains(t, failed.Error.Message, "LITELLM_API_BASE")

	recs := e.store.waitRecords(t, 1)
	// The reservation: a 2-byte-per-token estimate of the body, and the
	// 1000 output tokens the request allows.
	assert.Greater(t, recs[0].Usage.CostUSD, 1000*10e-6)
}

// TestResponsesReservesMaxOutputTokens: a request in flight reserves what
// its max_output_tokens allows, so a second one that would overrun the
// budget waits (429) until the first settles.
func TestResponsesReservesMaxOutputTokens(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		maxOutput  int
		wantStatus int
	}{
		{200_000, http.StatusTooManyRequests}, // $2 at gpt-5's $10/M output
		{1_000, http.StatusOK},                // $0.01
	} {
		t.Run(fmt.Sprint(tt.maxOutput), func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				if gjson.GetBytes(must(io.ReadAll(r.Body)), "stream").Bool() {
					streamUpstream(t, release, respCreated, respCompleted)(w, r)
					return
				}
				jsonAnswer(200, responsesAnswer)(w, r)
			})
			e := newEnv(t, up.URL)
			e.store.agentMax[agentID] = 2.0
			first := e.post(t, "/v1/responses", fmt.Sprintf(`{"model":"gpt-5","stream":true,"max_output_tokens":%d,"input":"hi"}`, tt.maxOutput),
				"Authorization", "Bearer "+e.token)
			defer first.Body.Close()
			br := bufio.NewReader(first.Body)
			readEvent(t, br) // admitted and in flight

			second := e.post(t, "/v1/responses", `{"model":"gpt-5","max_output_tokens":100,"input":"hi"}`, "Authorization", "Bearer "+e.token)
			body := readAll(t, second)
			require.Equal(t, tt.wantStatus, second.StatusCode, "body %s", body)
			if tt.wantStatus != http.StatusOK {
				assert.Equal(t, "budget_reserved", errorOf(t, body).Error.Code)
				assert.Equal(t, "5", second.Header.Get("Retry-After"))
			}
			close(release)
			_, err := io.ReadAll(br)
			require.NoError(t, err)
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestResponsesBudgetStopsAnswersOnceSpent: once a session has spent its
// budget over the Responses API, the next request gets 402, which the
// official SDK reports without retrying.
func TestResponsesBudgetStopsAnswersOnceSpent(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, jsonAnswer(200, responsesAnswer))
	e := newEnv(t, up.URL)
	e.store.sessionMax[sessionID] = 0.004
	svc := responsesClient(e, openaioption.WithMaxRetries(2)) // a 402 must not be retried
	params := responses.ResponseNewParams{Model: "gpt-5", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}}
	_, err := svc.New(context.Background(), params)
	require.NoError(t, err, "the first answer is within budget")
	e.store.waitRecords(t, 1)

	_, err = svc.New(context.Background(), params)
	var oerr *openai.Error
	require.True(t, errors.As(err, &oerr), "got %v", err)
	assert.Equal(t, http.StatusPaymentRequired, oerr.StatusCode)
	assert.Equal(t, "budget_exceeded", oerr.Code)
	assert.Contains(t, oerr.Message, "budget exceeded: session 0193c3d4 spent $0.0043 of its $0.0040 limit")
	assert.Len(t, up.Requests(), 1, "only the answer within budget reached the upstream")
	assert.Equal(t, 1.0, counter(t, e, "lap_llm_requests_total", agentID, "gpt-5", "402"), "no retries of the refusal")
}

// TestResponsesRefusesWhatCouldBeReadTwoWays: the Responses route parses
// with the same rules as the others; its own output limit is type-checked.
func TestResponsesRefusesWhatCouldBeReadTwoWays(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, jsonAnswer(200, responsesAnswer))
	e := newEnv(t, up.URL)
	for body, want := range map[string]string{
		`{"model":"mock/echo","model":"gpt-5","input":"hi"}`:                           `the key "model" twice`,
		`{"model":"gpt-5","input":[{"role":"user","content":"a","content":"b"}]}`:      `the key "content" twice`,
		`{"model":"gpt-5","max_output_tokens":"100000","input":"hi"}`:                  "max_output_tokens must be a non-negative integer",
		`{"model":"gpt-5","stream":"false","input":"hi"}`:                              "stream must be true or false",
		`{"model":"gpt-5","Model":"gpt-5-nano","input":"hi"}`:                          "differ only in case",
		`{"model":"gpt-5","input":"hi","max_output_tokens":1,"max_output_tokens":900}`: `the key "max_output_tokens" twice`,
	} {
		resp := e.post(t, "/v1/responses", body, "Authorization", "Bearer "+e.token)
		got := readAll(t, resp)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s: body %s", body, got)
		assert.Contains(t, errorOf(t, got).Error.Message, want, body)
	}
	assert.Empty(t, up.Requests())
	assert.Empty(t, e.store.Records())
}

// TestResponsesRefusesHostedToolsBilledPerCall: a tool the provider runs
// and bills per call, outside the usage the answer reports (web search…),
// would spend past any budget, so a request offering one is refused;
// function, custom and Codex's namespace tools pass.
func TestResponsesRefusesHostedToolsBilledPerCall(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, jsonAnswer(200, responsesAnswer))
	e := newEnv(t, up.URL)
	for _, tool := range []string{`{"type":"web_search"}`, `{"type":"web_search_preview","search_context_size":"high"}`,
		`{"type":"file_search","vector_store_ids":["vs_1"]}`, `{"type":"code_interpreter","container":{"type":"auto"}}`,
		`{"type":"image_generation"}`} {
		body := `{"model":"gpt-5","input":"hi","tools":[{"type":"function","name":"exec_command","parameters":{}},` + tool + `]}`
		resp := e.post(t, "/v1/responses", body, "Authorization", "Bearer "+e.token)
		got := readAll(t, resp)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s: body %s", tool, got)
		eb := errorOf(t, got)
		assert.Equal(t, "unpriced_tool", eb.Error.Code)
		assert.Contains(t, eb.Error.Message, "the hosted tool "+gjson.Get(tool, "type").Str)
		assert.Contains(t, eb.Error.Message, `web_search = "disabled"`)
	}
	assert.Empty(t, up.Requests())

	body := `{"model":"gpt-5","input":"hi","tools":[{"type":"function","name":"exec_command","parameters":{}},` +
		`{"type":"custom","name":"apply_patch"},{"type":"namespace","name":"multi_agent_v1","tools":[]}]}`
	resp := e.post(t, "/v1/responses", body, "Authorization", "Bearer "+e.token)
	assert.Equal(t, http.StatusOK, resp.StatusCode, readAll(t, resp))
}

// TestRefusesRunsBeyondTheUsage: a background response (answered later,
// outside the gateway) and priority processing (billed above the list
// price) are refused; flex and the default tier pass.
func TestRefusesRunsBeyondTheUsage(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/responses" {
			jsonAnswer(200, responsesAnswer)(w, r)
			return
		}
		jsonAnswer(200, `{"id":"c","object":"chat.completion","created":1,"model":"gpt-5","choices":[],`+
			`"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)(w, r)
	})
	e := newEnv(t, up.URL)
	for _, tt := range []struct{ path, body, code string }{
		{"/v1/responses", `{"model":"gpt-5","input":"hi","background":true}`, "unsupported_background"},
		{"/v1/responses", `{"model":"gpt-5","input":"hi","background":"false"}`, "invalid_request"},
		{"/v1/responses", `{"model":"gpt-5","input":"hi","service_tier":"priority"}`, "unpriced_service_tier"},
		{"/v1/chat/completions", `{"model":"gpt-5","messages":[],"service_tier":"priority"}`, "unpriced_service_tier"},
		{"/v1/chat/completions", `{"model":"gpt-5","messages":[],"service_tier":1}`, "invalid_request"},
	} {
		resp := e.post(t, tt.path, tt.body, "Authorization", "Bearer "+e.token)
		got := readAll(t, resp)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s: body %s", tt.body, got)
		assert.Equal(t, tt.code, errorOf(t, got).Error.Code, tt.body)
	}
	assert.Empty(t, up.Requests())
	for _, tt := range []struct{ path, body string }{
		{"/v1/responses", `{"model":"gpt-5","input":"hi","background":false,"service_tier":"flex"}`},
		{"/v1/chat/completions", `{"model":"gpt-5","messages":[],"service_tier":"default"}`},
		{"/v1/chat/completions", `{"model":"gpt-5","messages":[],"service_tier":"auto"}`},
	} {
		resp := e.post(t, tt.path, tt.body, "Authorization", "Bearer "+e.token)
		assert.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", tt.body, readAll(t, resp))
	}
}

// TestMockModelsResponses: mock/echo and mock/tools answer the Responses
// API through the whole gateway with no upstream, as Codex calls them:
// mock/tools runs Codex's shell (exec_command) and then answers with what
// it printed.
func TestMockModelsResponses(t *testing.T) {
	t.Parallel()
	execCommand := responses.ToolUnionParam{OfFunction: &responses.FunctionToolParam{Name: "exec_command", Parameters: map[string]any{
		"type": "object", "required": []string{"cmd"},
		"properties": map[string]any{"cmd": map[string]any{"type": "string"}, "workdir": map[string]any{"type": "string"}},
	}}}
	applyPatch := responses.ToolUnionParam{OfCustom: &responses.CustomToolParam{Name: "apply_patch"}}
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, "") // no upstream
			svc := responsesClient(e)
			turn := func(p responses.ResponseNewParams) responses.Response {
				t.Helper()
				if !stream {
					got, err := svc.New(context.Background(), p)
					require.NoError(t, err)
					return *got
				}
				s := svc.NewStreaming(context.Background(), p)
				var text string
				var done *responses.Response
				for s.Next() {
					switch ev := s.Current(); ev.Type {
					case "response.output_text.delta":
						text += ev.Delta
					case "response.completed":
						done = &ev.Response
					}
				}
				require.NoError(t, s.Err())
				require.NotNil(t, done)
				assert.Equal(t, done.OutputText(), text)
				return *done
			}

			echo := turn(responses.ResponseNewParams{Model: "mock/echo",
				Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say it back.")}})
			assert.Equal(t, "Say it back.", echo.OutputText())

			input := responses.ResponseInputParam{
				responses.ResponseInputItemParamOfMessage("What files are here?", responses.EasyInputMessageRoleUser)}
			p := responses.ResponseNewParams{Model: "mock/tools", Tools: []responses.ToolUnionParam{applyPatch, execCommand},
				Input: responses.ResponseNewParamsInputUnion{OfInputItemList: input}}
			call := turn(p)
			require.Len(t, call.Output, 2)
			fc := call.Output[1]
			assert.Equal(t, "function_call", fc.Type)
			assert.Equal(t, "exec_command", fc.Name)
			assert.JSONEq(t, `{"cmd":"ls"}`, fc.Arguments.OfString)

			out := responses.ResponseInputItemParamOfFunctionCallOutput("README.md\nmain.go")
			out.OfFunctionCallOutput.CallID = openai.String(fc.CallID)
			p.Input.OfInputItemList = append(input, responses.ResponseInputItemParamOfFunctionCall(fc.Arguments.OfString, fc.CallID, fc.Name), out)
			final := turn(p)
			assert.Equal(t, "The exec_command tool returned:\n\nREADME.md\nmain.go", final.OutputText())

			recs := e.store.waitRecords(t, 3)
			for i, r := range recs {
				assert.Equal(t, sessionID, r.SessionID)
				assert.Positive(t, r.Usage.InputTokens, "record %d", i)
				assert.Positive(t, r.Usage.OutputTokens, "record %d", i)
				assert.Zero(t, r.Usage.CostUSD, "mock models are free")
			}
			assert.Equal(t, []string{"mock/echo", "mock/tools", "mock/tools"}, []string{recs[0].Model, recs[1].Model, recs[2].Model})
		})
	}
}
