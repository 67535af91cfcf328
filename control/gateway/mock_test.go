package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	openaioption "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The mock models answer through the whole gateway (token check, relay,
// usage) with no upstream at all, and the official SDKs understand them.

func TestMockModelsOpenAI(t *testing.T) {
	t.Parallel()
	listFiles := openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
		Name: "list_files",
		Parameters: shared.FunctionParameters{"type": "object",
			"properties": map[string]any{"path": map[string]any{"type": "string"}}, "required": []string{"path"}},
	})
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, "") // no upstream
			c := openai.NewClient(openaioption.WithBaseURL(e.URL+"/v1/"), openaioption.WithAPIKey(e.token),
				openaioption.WithMaxRetries(0))
			turn := func(p openai.ChatCompletionNewParams) openai.ChatCompletion {
				t.Helper()
				if !stream {
					got, err := c.Chat.Completions.New(context.Background(), p)
					require.NoError(t, err)
					return *got
				}
				// No stream_options: the gateway asks for usage and keeps the
				// usage-only chunk from this client.
				s := c.Chat.Completions.NewStreaming(context.Background(), p)
				var acc openai.ChatCompletionAccumulator
				for s.Next() {
					acc.AddChunk(s.Current())
				}
				require.NoError(t, s.Err())
				assert.Zero(t, acc.Usage.TotalTokens, "the client did not ask for the usage chunk")
				return acc.ChatCompletion
			}

			echo := turn(openai.ChatCompletionNewParams{Model: "mock/echo",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say it back.")}})
			require.Len(t, echo.Choices, 1)
			assert.Equal(t, "Say it back.", echo.Choices[0].Message.Content)

			p := openai.ChatCompletionNewParams{Model: "mock/tools",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("What files are here?")},
				Tools:    []openai.ChatCompletionToolUnionParam{listFiles}}
			call := turn(p)
			require.Len(t, call.Choices, 1)
			require.Len(t, call.Choices[0].Message.ToolCalls, 1)
			tc := call.Choices[0].Message.ToolCalls[0]
			assert.Equal(t, "list_files", tc.Function.Name)
			assert.JSONEq(t, `{"path":"."}`, tc.Function.Arguments)

			p.Messages = append(p.Messages, call.Choices[0].Message.ToParam(), openai.ToolMessage("README.md\nmain.go", tc.ID))
			final := turn(p)
			require.Len(t, final.Choices, 1)
			assert.Equal(t, "The list_files tool returned:\n\nREADME.md\nmain.go", final.Choices[0].Message.Content)

			recs := e.store.waitRecords(t, 3)
			for i, r := range recs {
				assert.Equal(t, sessionID, r.SessionID)
				assert.Positive(t, r.Usage.InputTokens, "record %d", i)
				assert.Positive(t, r.Usage.OutputTokens, "record %d", i)
				assert.Zero(t, r.Usage.CostUSD, "mock models are free")
			}
			assert.Equal(t, []string{"mock/echo", "mock/tools", "mock/tools"},
				[]string{recs[0].Model, recs[1].Model, recs[2].Model})
		})
	}
}

func TestMockModelsAnthropic(t *testing.T) {
	t.Parallel()
	bash := anthropic.ToolUnionParam{OfTool: &anthropic.ToolParam{Name: "Bash", InputSchema: anthropic.ToolInputSchemaParam{
		Properties: map[string]any{"command": map[string]any{"type": "string"}}, Required: []string{"command"}}}}
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, "")
			c := anthropic.NewClient(anthropicoption.WithBaseURL(e.URL), anthropicoption.WithAPIKey(e.token),
				anthropicoption.WithMaxRetries(0))
			turn := func(p anthropic.MessageNewParams) anthropic.Message {
				t.Helper()
				if !stream {
					got, err := c.Messages.New(context.Background(), p)
					require.NoError(t, err)
					return *got
				}
				s := c.Messages.NewStreaming(context.Background(), p)
				var msg anthropic.Message
				for s.Next() {
					require.NoError(t, msg.Accumulate(s.Current()))
				}
				require.NoError(t, s.Err())
				return msg
			}
			text := func(m anthropic.Message) (s string) {
				for _, b := range m.Content {
					if tb, ok := b.AsAny().(anthropic.TextBlock); ok {
						s += tb.Text
					}
				}
				return s
			}

			echo := turn(anthropic.MessageNewParams{Model: "mock/echo", MaxTokens: 64,
				Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say it back."))}})
			assert.Equal(t, "Say it back.", text(echo))

			p := anthropic.MessageNewParams{Model: "mock/tools", MaxTokens: 64, Tools: []anthropic.ToolUnionParam{bash},
				Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("What files are here?"))}}
			call := turn(p)
			require.Equal(t, anthropic.StopReasonToolUse, call.StopReason)
			var tu anthropic.ToolUseBlock
			for _, b := range call.Content {
				if x, ok := b.AsAny().(anthropic.ToolUseBlock); ok {
					tu = x
				}
			}
			assert.Equal(t, "Bash", tu.Name)
			var input map[string]any
			require.NoError(t, json.Unmarshal(tu.Input, &input))
			assert.Equal(t, "ls", input["command"])

			p.Messages = append(p.Messages, call.ToParam(),
				anthropic.NewUserMessage(anthropic.NewToolResultBlock(tu.ID, "README.md\nmain.go", false)))
			final := turn(p)
			assert.Equal(t, "The Bash tool returned:\n\nREADME.md\nmain.go", text(final))

			recs := e.store.waitRecords(t, 3)
			for i, r := range recs {
				assert.Positive(t, r.Usage.InputTokens, "record %d", i)
				assert.Positive(t, r.Usage.OutputTokens, "record %d", i)
				assert.Zero(t, r.Usage.CostUSD)
			}
			assert.Equal(t, final.Usage.InputTokens, recs[2].Usage.InputTokens, "recorded what the answer reported")
			assert.Equal(t, final.Usage.OutputTokens, recs[2].Usage.OutputTokens)
		})
	}
}

func TestUnknownMockModel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	for _, d := range dialects {
		resp := e.post(t, d.path, d.body("mock/nope"), d.keyHeader, d.key(e.token))
		body := readAll(t, resp)
		assert.Equal(t, 404, resp.StatusCode, "%s: body %s", d.name, body)
		assert.Contains(t, errorOf(t, body).Error.Message, "the mock models are mock/echo, mock/tools")
	}
	assert.Empty(t, e.store.Records())
}
