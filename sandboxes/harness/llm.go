package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"
	"github.com/openai/openai-go/v3/shared"

	"lap.dev/lap/sandboxes/protocol"
)

// llmClient calls the chat-completions API through the official SDK. The
// SDK's own retries are off: retries here are bounded by Config, use its
// (testable) backoff, and never repeat a call that already streamed.
type llmClient struct {
	svc        openai.ChatCompletionService
	maxRetries int
	baseDelay  time.Duration
	maxDelay   time.Duration
	log        *slog.Logger
}

func newLLMClient(cfg Config) *llmClient {
	svc := openai.NewChatCompletionService(
		option.WithBaseURL(llmBaseURL(cfg.LLMBaseURL)),
		option.WithAPIKey(cfg.LLMAPIKey),
		option.WithHTTPClient(cfg.HTTPClient),
		option.WithMaxRetries(0),
		option.WithMiddleware(wrapErrorBody),
	)
	return &llmClient{svc: svc, maxRetries: cfg.MaxRetries, baseDelay: cfg.RetryBaseDelay, maxDelay: cfg.MaxRetryDelay, log: cfg.Logger}
}

// wrapErrorBody makes an error response the SDK can read: a proxy's HTML
// or plain-text error page is wrapped as {"error":{"message":…}}, so the
// turn still reports the upstream status and what it said.
func wrapErrorBody(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	res, err := next(req)
	if err != nil || res.StatusCode < 400 {
		return res, err
	}
	body, readErr := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	_ = res.Body.Close()
	var probe struct {
		Error json.RawMessage `json:"error"`
	}
	if readErr == nil && json.Unmarshal(body, &probe) == nil && len(probe.Error) > 0 && probe.Error[0] == '{' {
		res.Body = io.NopCloser(bytes.NewReader(body))
		return res, nil
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &probe) == nil && len(probe.Error) > 0 && probe.Error[0] == '"' {
		_ = json.Unmarshal(probe.Error, &msg) // {"error":"text"}
	}
	if msg == "" {
		msg = http.StatusText(res.StatusCode)
	}
	wrapped, _ := json.Marshal(map[string]any{"error": map[string]string{"message": truncateUTF8(msg, 2000)}})
	res.Body = io.NopCloser(bytes.NewReader(wrapped))
	res.ContentLength = int64(len(wrapped))
	res.Header.Set("Content-Type", "application/json")
	return res, nil
}

// stepResult is one model answer.
type stepResult struct {
	text   string
	calls  []llmToolCall
	input  int64 // prompt tokens
	output int64 // completion tokens
	finish string
}

// streamHooks receive a step's progress as it streams.
type streamHooks struct {
	// text is called with each piece of text.
	text func(delta string)
	// toolCall is called once per tool call, when its name is known.
	toolCall func(index int, id, name string)
}

// stepError is a failed model call: what info.error reports.
type stepError struct {
	status  int
	message string
	// partial is true when something was streamed before the failure.
	partial bool
	err     error
}

func (e *stepError) Error() string { return e.message }
func (e *stepError) Unwrap() error { return e.err }

// messageError is e as info.error.
func (e *stepError) messageError() *protocol.MessageError {
	return &protocol.MessageError{Name: "APIError", Message: e.message, Status: e.status}
}

// step asks the model for its next message, retrying failures that
// happen before anything streamed.
func (c *llmClient) step(ctx context.Context, params openai.ChatCompletionNewParams, hooks streamHooks) (stepResult, error) {
	for attempt := 0; ; attempt++ {
		res, err := c.stream(ctx, params, hooks)
		if err == nil {
			return res, nil
		}
		var se *stepError
		if !errors.As(err, &se) || se.partial || ctx.Err() != nil || attempt >= c.maxRetries || !retryable(se) {
			return stepResult{}, err
		}
		delay := c.backoff(attempt, se.err)
		c.log.Warn("LLM call failed, retrying", "status", se.status, "err", se.message, "attempt", attempt+1, "in", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return stepResult{}, err
		}
	}
}

// retryable: rate limits, server errors and transport failures.
func retryable(e *stepError) bool {
	return e.status == http.StatusTooManyRequests || e.status >= 500 || e.status == 0
}

// backoff is base·2^attempt with ±25% jitter, at least the upstream's
// Retry-After, at most maxDelay.
func (c *llmClient) backoff(attempt int, err error) time.Duration {
	d := c.baseDelay << min(attempt, 20)
	d = d - d/4 + time.Duration(rand.Int64N(int64(d/2)+1))
	var apiErr *openai.Error
	if errors.As(err, &apiErr) && apiErr.Response != nil {
		if secs, perr := strconv.Atoi(apiErr.Response.Header.Get("Retry-After")); perr == nil && secs > 0 {
			d = max(d, time.Duration(secs)*time.Second)
		}
	}
	return min(d, c.maxDelay)
}

// stream makes one streaming call and gathers the answer.
func (c *llmClient) stream(ctx context.Context, params openai.ChatCompletionNewParams, hooks streamHooks) (stepResult, error) {
	stream := c.svc.NewStreaming(ctx, params)
	defer stream.Close()
	var res stepResult
	var text strings.Builder
	calls := map[int64]*llmToolCall{}
	announced := map[int64]bool{}
	started := false
	for stream.Next() {
		chunk := stream.Current()
		started = true
		if chunk.JSON.Usage.Valid() && (chunk.Usage.PromptTokens > 0 || chunk.Usage.CompletionTokens > 0) {
			res.input, res.output = chunk.Usage.PromptTokens, chunk.Usage.CompletionTokens
		}
		for _, ch := range chunk.Choices {
			if ch.Index != 0 {
				continue
			}
			if d := ch.Delta.Content; d != "" {
				text.WriteString(d)
				if hooks.text != nil {
					hooks.text(d)
				}
			}
			for _, tc := range ch.Delta.ToolCalls {
				idx := max(tc.Index, 0) // some providers send -1 for a single call
				call := calls[idx]
				if call == nil {
					call = &llmToolCall{}
					calls[idx] = call
				}
				// Some providers repeat the id and name on every chunk.
				if call.ID == "" {
					call.ID = tc.ID
				}
				if call.Name == "" {
					call.Name = tc.Function.Name
				}
				call.Arguments += tc.Function.Arguments
				if call.Name != "" && !announced[idx] {
					announced[idx] = true
					if hooks.toolCall != nil {
						hooks.toolCall(int(idx), call.ID, call.Name)
					}
				}
			}
			if ch.FinishReason != "" {
				res.finish = ch.FinishReason
			}
		}
	}
	if err := stream.Err(); err != nil {
		se := toStepError(err)
		se.partial = started
		return stepResult{}, se
	}
	res.text = text.String()
	idxs := make([]int64, 0, len(calls))
	for i := range calls {
		idxs = append(idxs, i)
	}
	sort.Slice(idxs, func(a, b int) bool { return idxs[a] < idxs[b] })
	for n, i := range idxs {
		call := *calls[i]
		call.index = int(i)
		if call.ID == "" {
			call.ID = fmt.Sprintf("call_%d", n)
		}
		res.calls = append(res.calls, call)
	}
	return res, nil
}

// toStepError classifies a failed call with the upstream status and
// message when there is one.
func toStepError(err error) *stepError {
	var apiErr *openai.Error
	if errors.As(err, &apiErr) {
		msg := apiErr.Message
		if msg == "" {
			msg = http.StatusText(apiErr.StatusCode)
		}
		return &stepError{status: apiErr.StatusCode, message: msg, err: err}
	}
	var streamErr *ssestream.StreamError
	if errors.As(err, &streamErr) {
		// An error event mid-stream: {"error":{"message":…}}.
		var ev struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		msg := streamErr.Message
		if json.Unmarshal(streamErr.Event.Data, &ev) == nil && ev.Error.Message != "" {
			msg = ev.Error.Message
		}
		return &stepError{message: msg, err: err}
	}
	return &stepError{message: "call the LLM: " + err.Error(), err: err}
}

// chatParams builds the request of one step.
func chatParams(model, system string, msgs []llmMessage, tools []toolSpec) openai.ChatCompletionNewParams {
	p := openai.ChatCompletionNewParams{
		Model:         model,
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	}
	if system != "" {
		p.Messages = append(p.Messages, openai.SystemMessage(system))
	}
	for _, m := range msgs {
		switch m.Role {
		case "user":
			p.Messages = append(p.Messages, openai.UserMessage(m.Content))
		case "tool":
			p.Messages = append(p.Messages, openai.ToolMessage(m.Content, m.ToolCallID))
		case "assistant":
			var a openai.ChatCompletionAssistantMessageParam
			// Content may only be left out when there are tool calls.
			if m.Content != "" || len(m.ToolCalls) == 0 {
				a.Content.OfString = openai.String(m.Content)
			}
			for _, c := range m.ToolCalls {
				a.ToolCalls = append(a.ToolCalls, openai.ChatCompletionMessageToolCallUnionParam{
					OfFunction: &openai.ChatCompletionMessageFunctionToolCallParam{
						ID:       c.ID,
						Function: openai.ChatCompletionMessageFunctionToolCallFunctionParam{Name: c.Name, Arguments: c.Arguments},
					},
				})
			}
			p.Messages = append(p.Messages, openai.ChatCompletionMessageParamUnion{OfAssistant: &a})
		}
	}
	for _, t := range tools {
		p.Tools = append(p.Tools, openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name:        t.Name,
			Description: openai.String(t.Description),
			Parameters:  shared.FunctionParameters(t.Parameters),
		}))
	}
	return p
}
