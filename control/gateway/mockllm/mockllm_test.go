package mockllm_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/openai/openai-go/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/gateway/mockllm"
)

func newServer(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(mockllm.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestOpenAIEcho(t *testing.T) {
	t.Parallel()
	c := openaiClient(newServer(t), "any")
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			t.Parallel()
			got := openaiTurn(t, c, stream, openai.ChatCompletionNewParams{
				Model: mockllm.Echo,
				Messages: []openai.ChatCompletionMessageParamUnion{
					openai.SystemMessage("be brief"),
					openai.UserMessage("first"),
					openai.AssistantMessage("first"),
					openai.UserMessage("Summarise the README in three bullets."),
				},
			})
			require.Len(t, got.Choices, 1)
			assert.Equal(t, "Summarise the README in three bullets.", got.Choices[0].Message.Content)
			assert.Equal(t, "stop", got.Choices[0].FinishReason)
			assert.Equal(t, mockllm.Echo, got.Model)
			assert.Positive(t, got.Usage.PromptTokens)
			assert.Positive(t, got.Usage.CompletionTokens)
			assert.Equal(t, got.Usage.PromptTokens+got.Usage.CompletionTokens, got.Usage.TotalTokens)
		})
	}
}

func TestOpenAIToolsCallsListFilesThenAnswers(t *testing.T) {
	t.Parallel()
	c := openaiClient(newServer(t), "any")
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			t.Parallel()
			p := openai.ChatCompletionNewParams{
				Model:    mockllm.Tools,
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("What is in this repo?")},
				Tools:    []openai.ChatCompletionToolUnionParam{listFilesTool},
			}
			first := openaiTurn(t, c, stream, p)
			require.Len(t, first.Choices, 1)
			assert.Equal(t, "tool_calls", first.Choices[0].FinishReason)
			calls := first.Choices[0].Message.ToolCalls
			require.Len(t, calls, 1)
			assert.Equal(t, "list_files", calls[0].Function.Name)
			assert.Equal(t, map[string]any{"path": "."}, jsonObject(t, calls[0].Function.Arguments))
			assert.NotEmpty(t, calls[0].ID)

			p.Messages = append(p.Messages, first.Choices[0].Message.ToParam(),
				openai.ToolMessage("README.md\ngo.mod\nmain.go", calls[0].ID))
			second := openaiTurn(t, c, stream, p)
			require.Len(t, second.Choices, 1)
			assert.Equal(t, "stop", second.Choices[0].FinishReason)
			assert.Empty(t, second.Choices[0].Message.ToolCalls)
			assert.Equal(t, "The list_files tool returned:\n\nREADME.md\ngo.mod\nmain.go", second.Choices[0].Message.Content)
		})
	}
}

func TestOpenAIToolsWithoutAListingTool(t *testing.T) {
	t.Parallel()
	c := openaiClient(newServer(t), "any")
	got := openaiTurn(t, c, false, openai.ChatCompletionNewParams{
		Model:    mockllm.Tools,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")},
	})
	require.Len(t, got.Choices, 1)
	assert.Empty(t, got.Choices[0].Message.ToolCalls)
	assert.Contains(t, got.Choices[0].Message.Content, "offers no tool to list files")
	assert.True(t, strings.HasSuffix(got.Choices[0].Message.Content, "hello"))
}

func TestAnthropicEcho(t *testing.T) {
	t.Parallel()
	c := anthropicClient(newServer(t), "any")
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			t.Parallel()
			got := anthropicTurn(t, c, stream, anthropic.MessageNewParams{
				Model:     mockllm.Echo,
				MaxTokens: 1024,
				Messages: []anthropic.MessageParam{
					anthropic.NewUserMessage(anthropic.NewTextBlock("Summarise the README "), anthropic.NewTextBlock("in three bullets.")),
				},
			})
			assert.Equal(t, "Summarise the README in three bullets.", anthropicText(got))
			assert.Equal(t, anthropic.StopReasonEndTurn, got.StopReason)
			assert.Positive(t, got.Usage.InputTokens)
			assert.Positive(t, got.Usage.OutputTokens)
		})
	}
}

func TestAnthropicToolsCallsBashThenAnswers(t *testing.T) {
	t.Parallel()
	c := anthropicClient(newServer(t), "any")
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			t.Parallel()
			p := anthropic.MessageNewParams{
				Model:     mockllm.Tools,
				MaxTokens: 1024,
				Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("What is in this repo?"))},
				Tools:     claudeCodeTools,
			}
			first := anthropicTurn(t, c, stream, p)
			assert.Equal(t, anthropic.StopReasonToolUse, first.StopReason)
			tu, ok := anthropicToolUse(first)
			require.True(t, ok, "no tool_use block in %+v", first.Content)
			assert.Equal(t, "Bash", tu.Name, "Bash is preferred over Glob")
			assert.Equal(t, map[string]any{"command": "ls", "description": "List the files in the working directory"},
				jsonObject(t, string(tu.Input)))

			p.Messages = append(p.Messages, first.ToParam(),
				anthropic.NewUserMessage(anthropic.NewToolResultBlock(tu.ID, "README.md\ngo.mod", false)))
			second := anthropicTurn(t, c, stream, p)
			assert.Equal(t, anthropic.StopReasonEndTurn, second.StopReason)
			_, ok = anthropicToolUse(second)
			assert.False(t, ok)
			assert.Equal(t, "The Bash tool returned:\n\nREADME.md\ngo.mod", anthropicText(second))
		})
	}
}

func TestAnthropicToolsFallsBackToGlob(t *testing.T) {
	t.Parallel()
	c := anthropicClient(newServer(t), "any")
	got := anthropicTurn(t, c, false, anthropic.MessageNewParams{
		Model:     mockllm.Tools,
		MaxTokens: 1024,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("ls please"))},
		Tools:     claudeCodeTools[:1],
	})
	tu, ok := anthropicToolUse(got)
	require.True(t, ok)
	assert.Equal(t, "Glob", tu.Name)
	assert.Equal(t, map[string]any{"pattern": "*"}, jsonObject(t, string(tu.Input)))
}

func TestDeterministic(t *testing.T) {
	t.Parallel()
	body := `{"model":"mock/tools","stream":true,"messages":[{"role":"user","content":"hi"}],` +
		`"tools":[{"type":"function","function":{"name":"list_files","parameters":{"type":"object"}}}]}`
	get := func() string {
		req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
		resp, err := mockllm.Transport{}.RoundTrip(req)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		// created is a timestamp; everything else must repeat exactly.
		return strings.Join(strings.FieldsFunc(string(b), func(r rune) bool { return r >= '0' && r <= '9' }), "")
	}
	assert.Equal(t, get(), get())
}

func TestErrors(t *testing.T) {
	t.Parallel()
	url := newServer(t)
	tests := []struct {
		name, path, body string
		status           int
		want             string
	}{
		{"openai unknown mock model", "/v1/chat/completions", `{"model":"mock/nope","messages":[]}`, 404,
			`"message":"model mock/nope does not exist; the mock models are mock/echo, mock/tools"`},
		{"openai bad json", "/v1/chat/completions", `{`, 400, `"type":"invalid_request_error"`},
		{"anthropic unknown mock model", "/v1/messages", `{"model":"mock/nope","max_tokens":1,"messages":[]}`, 404,
			`{"type":"error","error":{"type":"not_found_error","message":"model mock/nope does not exist`},
		{"anthropic bad json", "/v1/messages", `[]`, 400, `"type":"invalid_request_error"`},
		{"unknown path", "/v1/embeddings", `{}`, 404, `does not serve POST /v1/embeddings`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp, err := http.Post(url+tt.path, "application/json", strings.NewReader(tt.body))
			require.NoError(t, err)
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			assert.Equal(t, tt.status, resp.StatusCode, "body %s", b)
			assert.Contains(t, string(b), tt.want)
		})
	}
}

func TestCountTokensAndModels(t *testing.T) {
	t.Parallel()
	url := newServer(t)
	c := anthropicClient(url, "any")
	n, err := c.Messages.CountTokens(context.Background(), anthropic.MessageCountTokensParams{
		Model:    mockllm.Echo,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hello"))},
	})
	require.NoError(t, err)
	assert.Positive(t, n.InputTokens)

	o := openaiClient(url, "any")
	page, err := o.Models.List(context.Background())
	require.NoError(t, err)
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
	}
	assert.Equal(t, mockllm.Models(), ids)
}
