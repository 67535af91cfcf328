package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	openaioption "github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBudgetRefusesBeforeForwarding(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                     string
		sessionMax, agentMax     *float64
		sessionSpent, agentSpent float64
		wantStatus               int
		wantMessage              string
	}{
		{name: "no budgets", sessionSpent: 100, agentSpent: 100, wantStatus: http.StatusOK},
		{name: "session under budget", sessionMax: ptr(1.0), sessionSpent: 0.5, wantStatus: http.StatusOK},
		{name: "session spent", sessionMax: ptr(0.50), sessionSpent: 0.52, wantStatus: http.StatusPaymentRequired,
			wantMessage: "budget exceeded: session 0193c3d4 spent $0.52 of its $0.50 limit (max_budget_usd); " +
				"start a new session or raise the session's budget"},
		{name: "session budget zero", sessionMax: ptr(0.0), wantStatus: http.StatusPaymentRequired,
			wantMessage: "budget exceeded: session 0193c3d4 spent $0.0000 of its $0.0000 limit"},
		{name: "agent spent exactly", agentMax: ptr(5.0), agentSpent: 5, sessionMax: ptr(10.0), wantStatus: http.StatusPaymentRequired,
			wantMessage: "budget exceeded: agent 0193a1b2 spent $5.00 of its $5.00 limit (max_budget_usd); " +
				"raise it with PATCH /agents/" + agentID},
		{name: "agent under budget", agentMax: ptr(5.0), agentSpent: 4.99, wantStatus: http.StatusOK},
	}
	wantType := map[string]string{"openai": "insufficient_quota", "anthropic": "billing_error", "responses": "insufficient_quota"}
	for _, d := range dialects {
		for _, tt := range tests {
			t.Run(d.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				up := newFakeUpstream(t, jsonAnswer(200, `{}`))
				e := newEnv(t, up.URL)
				e.store.sessionSpent[sessionID], e.store.agentSpent[agentID] = tt.sessionSpent, tt.agentSpent
				if tt.sessionMax != nil {
					e.store.sessionMax[sessionID] = *tt.sessionMax
				}
				if tt.agentMax != nil {
					e.store.agentMax[agentID] = *tt.agentMax
				}
				resp := e.post(t, d.path, d.body("gpt-4o"), d.keyHeader, d.key(e.token))
				body := readAll(t, resp)
				require.Equal(t, tt.wantStatus, resp.StatusCode, "body %s", body)
				if tt.wantStatus == http.StatusOK {
					assert.Len(t, up.Requests(), 1)
					return
				}
				eb := errorOf(t, body)
				assert.Equal(t, wantType[d.name], eb.Error.Type)
				assert.Contains(t, eb.Error.Message, tt.wantMessage)
				assert.Empty(t, up.Requests(), "a refused request must not reach the upstream")
			})
		}
	}
}

// TestBudgetStopsAnswersOnceSpent spends a session's budget with real
// answers, then checks that the official SDKs surface the refusal as an
// error carrying the gateway's message, without retrying it.
func TestBudgetStopsAnswersOnceSpent(t *testing.T) {
	t.Parallel()
	// 1000 + 1000 tokens of gpt-4o: $0.0025 + $0.01 = $0.0125 per answer.
	up := newFakeUpstream(t, jsonAnswer(200, `{"id":"c","object":"chat.completion","created":1,"model":"gpt-4o",`+
		`"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],`+
		`"usage":{"prompt_tokens":1000,"completion_tokens":1000,"total_tokens":2000}}`))
	e := newEnv(t, up.URL)
	e.store.sessionMax[sessionID] = 0.01
	ctx := context.Background()

	// Default retries on: a 402 must not be retried.
	oc := openai.NewClient(openaioption.WithBaseURL(e.URL+"/v1/"), openaioption.WithAPIKey(e.token))
	params := openai.ChatCompletionNewParams{Model: "gpt-4o",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}
	_, err := oc.Chat.Completions.New(ctx, params)
	require.NoError(t, err, "the first answer is within budget")
	e.store.waitRecords(t, 1)

	_, err = oc.Chat.Completions.New(ctx, params)
	var oerr *openai.Error
	require.True(t, errors.As(err, &oerr), "got %v", err)
	assert.Equal(t, http.StatusPaymentRequired, oerr.StatusCode)
	assert.Equal(t, "budget_exceeded", oerr.Code)
	assert.Contains(t, oerr.Message, "budget exceeded: session 0193c3d4 spent $0.0125 of its $0.0100 limit")

	ac := anthropic.NewClient(anthropicoption.WithBaseURL(e.URL), anthropicoption.WithAPIKey(e.token))
	_, err = ac.Messages.New(ctx, anthropic.MessageNewParams{Model: "claude-sonnet-4-5", MaxTokens: 64,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))}})
	var aerr *anthropic.Error
	require.True(t, errors.As(err, &aerr), "got %v", err)
	assert.Equal(t, http.StatusPaymentRequired, aerr.StatusCode)
	assert.Contains(t, aerr.Error(), "budget exceeded: session 0193c3d4")

	assert.Len(t, up.Requests(), 1, "only the answer within budget reached the upstream")
	assert.Equal(t, 1.0, counter(t, e, "lap_llm_requests_total", agentID, "gpt-4o", "402"), "no retries of the refusal")
	assert.Equal(t, 1.0, counter(t, e, "lap_llm_requests_total", agentID, "claude-sonnet-4-5", "402"))
}

func ptr[T any](v T) *T { return &v }
