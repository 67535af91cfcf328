package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"
	"github.com/tidwall/gjson"
)

// dialect is one wire format the gateway speaks: where it goes upstream,
// how the key is sent, what errors look like and where usage is reported.
type dialect struct {
	name string
	// path is the upstream path, appended to the base URL.
	path string
	// billed requests reserve their estimated cost and have their usage
	// recorded; every request is budget-checked.
	billed bool
	// refuse, when set, refuses requests whose cost the gateway could
	// not count, although they parse.
	refuse func(r request) *apiError
	// setKey puts the real upstream key on an upstream request.
	setKey func(h http.Header, key string)
	// errorBody renders one of the gateway's own errors.
	errorBody func(e *apiError) []byte
	// streamError is the server-sent event that reports an error in the
	// middle of a relayed stream.
	streamError func(e *apiError) []byte
	// usage reads the usage of a whole (not streamed) answer.
	usage func(body []byte) (Usage, bool)
	// newStream returns the inspector of one streamed answer.
	newStream func(dropUsageChunk bool) streamInspector
}

// streamInspector watches a relayed stream event by event.
type streamInspector interface {
	// event inspects one event's bytes and reports whether to forward it.
	event(ev []byte) bool
	// usage returns the usage seen so far.
	usage() (Usage, bool)
}

var openAI = &dialect{
	name:   "openai",
	path:   "/v1/chat/completions",
	billed: true,
	refuse: refusePricedTier,
	setKey: func(h http.Header, key string) { h.Set("Authorization", "Bearer "+key) },
	errorBody: func(e *apiError) []byte {
		return mustJSON(openAIErrorBody(e))
	},
	streamError: func(e *apiError) []byte {
		return []byte("data: " + string(mustJSON(openAIErrorBody(e))) + "\n\n")
	},
	usage: func(body []byte) (Usage, bool) {
		return openAIUsage(gjson.GetBytes(body, "usage"))
	},
	newStream: func(drop bool) streamInspector { return &openAIStream{dropUsageChunk: drop} },
}

var anthropicMessages = &dialect{
	name:   "anthropic",
	path:   "/v1/messages",
	billed: true,
	setKey: func(h http.Header, key string) { h.Set("X-Api-Key", key) },
	errorBody: func(e *apiError) []byte {
		return mustJSON(anthropicErrorBody(e))
	},
	streamError: func(e *apiError) []byte {
		return []byte("event: error\ndata: " + string(mustJSON(anthropicErrorBody(e))) + "\n\n")
	},
	usage: func(body []byte) (Usage, bool) {
		u := gjson.GetBytes(body, "usage")
		if !u.IsObject() {
			return Usage{}, false
		}
		var au anthropic.Usage
		if json.Unmarshal([]byte(u.Raw), &au) != nil {
			return Usage{}, false
		}
		return anthropicUsage(au.InputTokens, au.CacheCreationInputTokens, au.CacheReadInputTokens, au.OutputTokens), true
	},
	newStream: func(bool) streamInspector { return &anthropicStream{} },
}

// openAIResponses is the OpenAI Responses API, which Codex speaks. Its
// streams always end with response.completed (or .incomplete, .failed),
// whose response carries the usage, so nothing needs asking for.
var openAIResponses = &dialect{
	name:   "openai-responses",
	path:   "/v1/responses",
	billed: true,
	refuse: refuseUncounted,
	setKey: openAI.setKey,
	// The API's own errors are OpenAI's error body, as chat completions'.
	errorBody: openAI.errorBody,
	streamError: func(e *apiError) []byte {
		return []byte("event: response.failed\ndata: " + string(mustJSON(responsesFailed(e))) + "\n\n")
	},
	usage: func(body []byte) (Usage, bool) {
		return responsesUsage(gjson.GetBytes(body, "usage"))
	},
	newStream: func(bool) streamInspector { return &responsesStream{} },
}

// refusePricedTier refuses OpenAI's priority processing, which costs a
// multiple of the list price the price table holds ("auto", "default"
// and "flex" cost it at most).
func refusePricedTier(r request) *apiError {
	if r.serviceTier == "priority" {
		return errBadRequest("unpriced_service_tier", fmt.Sprintf(
			"service_tier %q costs more than the list price lapd counts against budgets: lapd refuses it; "+
				"leave service_tier unset, or use auto, default or flex", r.serviceTier))
	}
	return nil
}

// refuseUncounted refuses what a Responses request can spend beyond what
// its answer's usage reports, or beyond its reservation:
//   - a hosted tool the provider bills per call (request.hostedTool).
//     Codex offers web_search unless told not to; the terminal harness
//     sets web_search = "disabled";
//   - background: true, whose answer (and usage) comes later from
//     GET /v1/responses/{id}, which the gateway does not serve, while the
//     run, unbounded by the reservation, is billed all the same;
//   - a priced service tier.
func refuseUncounted(r request) *apiError {
	if r.hostedTool != "" {
		return errBadRequest("unpriced_tool", fmt.Sprintf(
			"the request offers the hosted tool %s, which the provider bills per call outside the usage the answer reports, "+
				"so its cost could not count against budgets: lapd refuses it (for Codex, set web_search = \"disabled\")",
			r.hostedTool))
	}
	if r.background {
		return errBadRequest("unsupported_background", "background responses are answered later, outside the gateway, "+
			"so their cost could not count against budgets: lapd refuses background: true")
	}
	return refusePricedTier(r)
}

// responsesFailedEvent is the response.failed event the gateway ends a
// broken Responses stream with: Codex and the SDKs report its error.
type responsesFailedEvent struct {
	Type     string `json:"type"`
	Response struct {
		Object string `json:"object"`
		Status string `json:"status"`
		Error  struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	} `json:"response"`
}

func responsesFailed(e *apiError) responsesFailedEvent {
	ev := responsesFailedEvent{Type: "response.failed"}
	ev.Response.Object, ev.Response.Status = "response", "failed"
	ev.Response.Error.Code, ev.Response.Error.Message = e.openAICode, e.msg
	return ev
}

// responsesUsage converts a Responses usage object, whose input_tokens
// includes the cached ones as Usage's does.
func responsesUsage(u gjson.Result) (Usage, bool) {
	if !u.IsObject() {
		return Usage{}, false
	}
	var ru responses.ResponseUsage
	if json.Unmarshal([]byte(u.Raw), &ru) != nil {
		return Usage{}, false
	}
	return Usage{
		InputTokens:     ru.InputTokens,
		OutputTokens:    ru.OutputTokens,
		CacheReadTokens: ru.InputTokensDetails.CachedTokens,
	}, true
}

// anthropicCountTokens is Anthropic's token counting: free, so not
// recorded, but refused like any other request once the budget is spent
// (it needs the real key all the same, and an agent out of budget has no
// business with the upstream).
var anthropicCountTokens = &dialect{
	name:        "anthropic",
	path:        "/v1/messages/count_tokens",
	setKey:      anthropicMessages.setKey,
	errorBody:   anthropicMessages.errorBody,
	streamError: anthropicMessages.streamError,
	usage:       func([]byte) (Usage, bool) { return Usage{}, false },
	newStream:   anthropicMessages.newStream,
}

// openAIUsage converts an OpenAI usage object. LiteLLM adds Anthropic's
// cache counters to it when it proxies an Anthropic model.
func openAIUsage(u gjson.Result) (Usage, bool) {
	if !u.IsObject() {
		return Usage{}, false
	}
	var ou openai.CompletionUsage
	if json.Unmarshal([]byte(u.Raw), &ou) != nil {
		return Usage{}, false
	}
	out := Usage{
		InputTokens:     ou.PromptTokens,
		OutputTokens:    ou.CompletionTokens,
		CacheReadTokens: ou.PromptTokensDetails.CachedTokens,
	}
	if f, ok := ou.JSON.ExtraFields["cache_creation_input_tokens"]; ok {
		out.CacheWriteTokens, _ = strconv.ParseInt(f.Raw(), 10, 64)
	}
	if f, ok := ou.JSON.ExtraFields["cache_read_input_tokens"]; ok && out.CacheReadTokens == 0 {
		out.CacheReadTokens, _ = strconv.ParseInt(f.Raw(), 10, 64)
	}
	return out, true
}

// anthropicUsage converts Anthropic's counters, whose input_tokens
// excludes the cached tokens, to Usage, whose InputTokens includes them.
func anthropicUsage(input, cacheWrite, cacheRead, output int64) Usage {
	return Usage{
		InputTokens:      input + cacheWrite + cacheRead,
		OutputTokens:     output,
		CacheReadTokens:  cacheRead,
		CacheWriteTokens: cacheWrite,
	}
}

// apiError is an error the gateway answers itself, in the caller's
// dialect.
type apiError struct {
	status int
	// openAIType/openAICode and anthropicType classify it per dialect.
	openAIType, openAICode string
	anthropicType          anthropic.ErrorType
	msg                    string
}

func (e *apiError) Error() string { return e.msg }

func errAuth(msg string) *apiError {
	return &apiError{http.StatusUnauthorized, "invalid_request_error", "invalid_api_key",
		anthropic.ErrorTypeAuthenticationError, msg}
}

// errBudget is 402 Payment Required: SDKs retry 429 (Claude Code many
// times over), which would only delay the message the user has to read.
func errBudget(msg string) *apiError {
	return &apiError{http.StatusPaymentRequired, "insufficient_quota", "budget_exceeded",
		anthropic.ErrorTypeBillingError, msg}
}

func errBadRequest(code, msg string) *apiError {
	return &apiError{http.StatusBadRequest, "invalid_request_error", code,
		anthropic.ErrorTypeInvalidRequestError, msg}
}

func errUpstream(msg string) *apiError {
	return &apiError{http.StatusBadGateway, "server_error", "upstream_error",
		anthropic.ErrorTypeAPIError, msg}
}

func errTimeout(msg string) *apiError {
	return &apiError{http.StatusGatewayTimeout, "server_error", "upstream_timeout",
		anthropic.ErrorTypeTimeoutError, msg}
}

func errInternal(msg string) *apiError {
	return &apiError{http.StatusInternalServerError, "server_error", "internal_error",
		anthropic.ErrorTypeAPIError, msg}
}

type openAIError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	} `json:"error"`
}

func openAIErrorBody(e *apiError) openAIError {
	var b openAIError
	b.Error.Message, b.Error.Type, b.Error.Code = e.msg, e.openAIType, e.openAICode
	return b
}

type anthropicError struct {
	Type  string `json:"type"`
	Error struct {
		Type    anthropic.ErrorType `json:"type"`
		Message string              `json:"message"`
	} `json:"error"`
}

func anthropicErrorBody(e *apiError) anthropicError {
	b := anthropicError{Type: "error"}
	b.Error.Type, b.Error.Message = e.anthropicType, e.msg
	return b
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("gateway: marshal " + err.Error()) // only our own plain structs
	}
	return b
}
