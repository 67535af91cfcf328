package mockllm_test

// Helpers that drive a server speaking the mock models' wire formats with
// the official OpenAI and Anthropic Go SDKs, so the tests check the real
// wire formats rather than our reading of them. The gateway's tests use the
// same approach; these helpers are small enough to keep in each package.

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	openaioption "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"github.com/stretchr/testify/require"
)

// listFilesTool is the lap harness's list_files tool in OpenAI format.
var listFilesTool = openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
	Name: "list_files",
	Parameters: shared.FunctionParameters{
		"type":       "object",
		"properties": map[string]any{"path": map[string]any{"type": "string"}},
		"required":   []string{"path"},
	},
})

// claudeCodeTools are Claude Code's Glob and Bash tools in Anthropic format.
var claudeCodeTools = []anthropic.ToolUnionParam{
	{OfTool: &anthropic.ToolParam{Name: "Glob", InputSchema: anthropic.ToolInputSchemaParam{
		Properties: map[string]any{"pattern": map[string]any{"type": "string"}, "path": map[string]any{"type": "string"}},
		Required:   []string{"pattern"},
	}}},
	{OfTool: &anthropic.ToolParam{Name: "Bash", InputSchema: anthropic.ToolInputSchemaParam{
		Properties: map[string]any{"command": map[string]any{"type": "string"}, "description": map[string]any{"type": "string"},
			"timeout": map[string]any{"type": "number"}},
		Required: []string{"command"},
	}}},
}

func openaiClient(baseURL, key string) openai.Client {
	return openai.NewClient(openaioption.WithBaseURL(baseURL+"/v1/"), openaioption.WithAPIKey(key),
		openaioption.WithMaxRetries(0))
}

func anthropicClient(baseURL, key string) anthropic.Client {
	return anthropic.NewClient(anthropicoption.WithBaseURL(baseURL), anthropicoption.WithAPIKey(key),
		anthropicoption.WithMaxRetries(0))
}

// openaiTurn sends one chat completions request, streamed or not, and
// returns the whole completion (accumulated from the chunks if streamed).
func openaiTurn(t *testing.T, c openai.Client, stream bool, p openai.ChatCompletionNewParams) openai.ChatCompletion {
	t.Helper()
	ctx := context.Background()
	if !stream {
		got, err := c.Chat.Completions.New(ctx, p)
		require.NoError(t, err)
		return *got
	}
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	s := c.Chat.Completions.NewStreaming(ctx, p)
	var acc openai.ChatCompletionAccumulator
	for s.Next() {
		acc.AddChunk(s.Current())
	}
	require.NoError(t, s.Err())
	return acc.ChatCompletion
}

// anthropicTurn sends one messages request, streamed or not, and returns
// the whole message (accumulated from the events if streamed).
func anthropicTurn(t *testing.T, c anthropic.Client, stream bool, p anthropic.MessageNewParams) anthropic.Message {
	t.Helper()
	ctx := context.Background()
	if !stream {
		got, err := c.Messages.New(ctx, p)
		require.NoError(t, err)
		return *got
	}
	s := c.Messages.NewStreaming(ctx, p)
	var msg anthropic.Message
	for s.Next() {
		require.NoError(t, msg.Accumulate(s.Current()))
	}
	require.NoError(t, s.Err())
	return msg
}

// anthropicToolUse returns the message's tool_use block, if any.
func anthropicToolUse(m anthropic.Message) (anthropic.ToolUseBlock, bool) {
	for _, b := range m.Content {
		if tu, ok := b.AsAny().(anthropic.ToolUseBlock); ok {
			return tu, true
		}
	}
	return anthropic.ToolUseBlock{}, false
}

// anthropicText joins the message's text blocks.
func anthropicText(m anthropic.Message) string {
	var s string
	for _, b := range m.Content {
		if tb, ok := b.AsAny().(anthropic.TextBlock); ok {
			s += tb.Text
		}
	}
	return s
}

func jsonObject(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(s), &m), "JSON object %q", s)
	return m
}
