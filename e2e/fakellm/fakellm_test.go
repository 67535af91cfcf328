package fakellm_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/e2e/fakellm"
)

// client is the official SDK pointed at the fake, so the tests check the
// wire format against the real parser.
func client(f *fakellm.Server) *openai.ChatCompletionService {
	c := openai.NewChatCompletionService(
		option.WithBaseURL(f.URL()+"/v1/"),
		option.WithAPIKey("sk-test"),
		option.WithMaxRetries(0),
	)
	return &c
}

func params(text string) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model: "anthropic/claude-sonnet-4-5",
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("be brief"),
			openai.UserMessage(text),
		},
		Tools: []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name:        "bash",
			Description: openai.String("run a command"),
			Parameters:  shared.FunctionParameters{"type": "object", "properties": map[string]any{"command": map[string]any{"type": "string"}}},
		})},
	}
}

// collect reads a whole stream the way a harness does.
func collect(t *testing.T, stream interface {
	Next() bool
	Current() openai.ChatCompletionChunk
	Err() error
}) (text string, calls map[int64]*fakellm.ToolCall, finish string, u openai.CompletionUsage, chunks int) {
	t.Helper()
	calls = map[int64]*fakellm.ToolCall{}
	for stream.Next() {
		c := stream.Current()
		chunks++
		if c.JSON.Usage.Valid() {
			u = c.Usage
		}
		for _, ch := range c.Choices {
			text += ch.Delta.Content
			for _, tc := range ch.Delta.ToolCalls {
				if calls[tc.Index] == nil {
					calls[tc.Index] = &fakellm.ToolCall{}
				}
				calls[tc.Index].ID += tc.ID
				calls[tc.Index].Name += tc.Function.Name
				calls[tc.Index].Arguments += tc.Function.Arguments
			}
			if ch.FinishReason != "" {
				finish = ch.FinishReason
			}
		}
	}
	require.NoError(t, stream.Err())
	return text, calls, finish, u, chunks
}

func TestStreamedText(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Enqueue(fakellm.Reply{Text: "Hello there, world", Chunks: 4})

	p := params("hi")
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	text, calls, finish, u, chunks := collect(t, client(f).NewStreaming(context.Background(), p))

	assert.Equal(t, "Hello there, world", text)
	assert.Empty(t, calls)
	assert.Equal(t, "stop", finish)
	assert.Positive(t, u.PromptTokens)
	assert.Positive(t, u.CompletionTokens)
	assert.Equal(t, u.PromptTokens+u.CompletionTokens, u.TotalTokens)
	// role, 4 text pieces, finish, usage
	assert.Equal(t, 7, chunks)

	reqs := f.Requests()
	require.Len(t, reqs, 1)
	r := reqs[0]
	assert.Equal(t, 1, r.Seq)
	assert.Equal(t, fakellm.FormatOpenAIChat, r.Format)
	assert.Equal(t, "/v1/chat/completions", r.Path)
	assert.Equal(t, "Bearer sk-test", r.Header.Get("Authorization"))
	assert.Equal(t, "anthropic/claude-sonnet-4-5", r.Model)
	assert.True(t, r.Stream)
	assert.True(t, r.IncludeUsage)
	assert.Equal(t, "be brief", r.SystemText())
	assert.Equal(t, "hi", r.LastUserText())
	assert.Equal(t, []string{"bash"}, r.ToolNames())
	assert.Contains(t, string(r.Body), `"include_usage":true`)
}

func TestStreamedWithoutUsage(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Enqueue(fakellm.Text("ok"))
	_, _, _, u, _ := collect(t, client(f).NewStreaming(context.Background(), params("hi")))
	assert.Zero(t, u.TotalTokens, "usage is only streamed when include_usage is set")
}

func TestStreamedToolCalls(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Enqueue(fakellm.Reply{
		Text: "Let me look.",
		ToolCalls: []fakellm.ToolCall{
			fakellm.Call("bash", map[string]any{"command": "ls -la"}),
			{ID: "mine", Name: "read_file", Arguments: `{"path":"README.md"}`},
		},
		Chunks: 5,
	})
	text, calls, finish, _, _ := collect(t, client(f).NewStreaming(context.Background(), params("look")))
	assert.Equal(t, "Let me look.", text)
	assert.Equal(t, "tool_calls", finish)
	require.Len(t, calls, 2)
	assert.Equal(t, fakellm.ToolCall{ID: "call_1", Name: "bash", Arguments: `{"command":"ls -la"}`}, *calls[0])
	assert.Equal(t, fakellm.ToolCall{ID: "mine", Name: "read_file", Arguments: `{"path":"README.md"}`}, *calls[1])
}

func TestNotStreamed(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Enqueue(fakellm.Text("plain answer"), fakellm.CallTool("bash", map[string]string{"command": "pwd"}))
	c := client(f)

	got, err := c.New(context.Background(), params("one"))
	require.NoError(t, err)
	require.Len(t, got.Choices, 1)
	assert.Equal(t, "plain answer", got.Choices[0].Message.Content)
	assert.Equal(t, "stop", got.Choices[0].FinishReason)
	assert.Positive(t, got.Usage.TotalTokens, "non-streamed answers always carry usage")

	got, err = c.New(context.Background(), params("two"))
	require.NoError(t, err)
	require.Len(t, got.Choices[0].Message.ToolCalls, 1)
	tc := got.Choices[0].Message.ToolCalls[0]
	assert.Equal(t, "bash", tc.Function.Name)
	assert.JSONEq(t, `{"command":"pwd"}`, tc.Function.Arguments)
	assert.Equal(t, "tool_calls", got.Choices[0].FinishReason)
	assert.False(t, f.Requests()[1].Stream)
}

func TestFail(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		reply  fakellm.Reply
		status int
		msg    string
	}{
		{"rate limited", fakellm.Fail(http.StatusTooManyRequests, "slow down"), 429, "slow down"},
		{"server error", fakellm.Fail(http.StatusBadGateway, ""), 502, "Bad Gateway"},
		{"bad request", fakellm.Fail(http.StatusBadRequest, "model not found"), 400, "model not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := fakellm.Start(t)
			f.Enqueue(tt.reply)
			stream := client(f).NewStreaming(context.Background(), params("x"))
			for stream.Next() {
			}
			var apiErr *openai.Error
			require.ErrorAs(t, stream.Err(), &apiErr)
			assert.Equal(t, tt.status, apiErr.StatusCode)
			assert.Equal(t, tt.msg, apiErr.Message)
		})
	}
}

func TestStreamError(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Enqueue(fakellm.Reply{Text: "partial", StreamError: "overloaded"})
	stream := client(f).NewStreaming(context.Background(), params("x"))
	var text string
	for stream.Next() {
		for _, ch := range stream.Current().Choices {
			text += ch.Delta.Content
		}
	}
	assert.Equal(t, "partial", text)
	require.Error(t, stream.Err())
	assert.Contains(t, stream.Err().Error(), "overloaded")
}

func TestHangUntilCancelled(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		stream bool
		reply  fakellm.Reply
	}{
		{"streamed after text", true, fakellm.Reply{Text: "thinking", Hang: true}},
		{"not streamed", false, fakellm.Hang()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := fakellm.Start(t)
			f.Enqueue(tt.reply)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				if tt.stream {
					stream := client(f).NewStreaming(ctx, params("x"))
					for stream.Next() {
					}
					done <- stream.Err()
					return
				}
				_, err := client(f).New(ctx, params("x"))
				done <- err
			}()
			wait, stop := context.WithTimeout(context.Background(), 10*time.Second)
			defer stop()
			_, err := f.WaitForRequests(wait, 1)
			require.NoError(t, err)
			select {
			case err := <-done:
				t.Fatalf("request ended before it was cancelled: %v", err)
			default:
			}
			cancel()
			select {
			case err := <-done:
				assert.True(t, errors.Is(err, context.Canceled), "err = %v, want context.Canceled", err)
			case <-wait.Done():
				t.Fatal("request still hanging after cancel")
			}
		})
	}
}

func TestResponderSeesConversation(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Enqueue(fakellm.CallTool("bash", map[string]string{"command": "echo hi"}))
	f.Respond(func(r fakellm.Request) fakellm.Reply {
		if out, ok := r.ToolResult("call_1"); ok {
			return fakellm.Text("the tool said " + out)
		}
		return fakellm.Fail(http.StatusTeapot, "unexpected")
	})
	c := client(f)

	first, err := c.New(context.Background(), params("go"))
	require.NoError(t, err)
	call := first.Choices[0].Message.ToolCalls[0]

	p := params("go")
	p.Messages = append(p.Messages, first.Choices[0].Message.ToParam(), openai.ToolMessage("hi", call.ID))
	second, err := c.New(context.Background(), p)
	require.NoError(t, err)
	assert.Equal(t, "the tool said hi", second.Choices[0].Message.Content)

	last := f.Requests()[1]
	assert.Equal(t, "tool", last.Last().Role)
	assert.Equal(t, "call_1", last.Last().ToolCallID)
	assert.Equal(t, []fakellm.ToolCall{{ID: "call_1", Name: "bash", Arguments: `{"command":"echo hi"}`}}, last.Messages[2].ToolCalls)
	assert.True(t, last.Contains("hi"))
	assert.Zero(t, f.Pending())
}

func TestConversationChecked(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Enqueue(fakellm.Text("never used"))
	p := params("x")
	p.Messages = append(p.Messages, openai.ToolMessage("orphan", "call_404"))
	_, err := client(f).New(context.Background(), p)
	var apiErr *openai.Error
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusBadRequest, apiErr.StatusCode)
	assert.Contains(t, apiErr.Message, "call_404")
	assert.Equal(t, 1, f.Pending(), "an invalid request uses up no reply")
	assert.Len(t, f.Requests(), 1, "invalid requests are recorded too")
}

func TestScriptExhausted(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	_, err := client(f).New(context.Background(), params("x"))
	var apiErr *openai.Error
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusInternalServerError, apiErr.StatusCode)
	assert.True(t, strings.Contains(apiErr.Message, "no scripted reply"), apiErr.Message)
}

func TestRetryAfterHeader(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Enqueue(fakellm.Reply{Status: http.StatusTooManyRequests, Header: map[string]string{"Retry-After": "7"}})
	resp, err := http.Post(f.URL()+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"x"}]}`))
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.Equal(t, "7", resp.Header.Get("Retry-After"))
}
