package mockllm_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/gateway/mockllm"
)

// codexTools are Codex's shell tools as it offers them over the Responses
// API, whichever of them a Codex version offers, and its freeform
// apply_patch, which mock/tools must not pick.
var codexTools = map[string]responses.ToolUnionParam{
	"exec_command": {OfFunction: &responses.FunctionToolParam{Name: "exec_command", Parameters: map[string]any{
		"type": "object", "required": []string{"cmd"},
		"properties": map[string]any{"cmd": map[string]any{"type": "string"}, "workdir": map[string]any{"type": "string"}},
	}}},
	"shell": {OfFunction: &responses.FunctionToolParam{Name: "shell", Parameters: map[string]any{
		"type": "object", "required": []string{"command"},
		"properties": map[string]any{"command": map[string]any{"type": "array", "items": map[string]any{"type": "string"}},
			"timeout_ms": map[string]any{"type": "number"}},
	}}},
}

var applyPatch = responses.ToolUnionParam{OfCustom: &responses.CustomToolParam{Name: "apply_patch"}}

// responsesTurn sends one Responses request, streamed or not, and returns
// the response: streamed, the one response.completed carries, whose text
// must equal the deltas' and whose items must equal the done items.
func responsesTurn(t *testing.T, c openai.Client, stream bool, p responses.ResponseNewParams) responses.Response {
	t.Helper()
	ctx := context.Background()
	if !stream {
		got, err := c.Responses.New(ctx, p)
		require.NoError(t, err)
		return *got
	}
	s := c.Responses.NewStreaming(ctx, p)
	var text string
	var done []responses.ResponseOutputItemUnion
	var completed *responses.Response
	for s.Next() {
		ev := s.Current()
		switch ev.Type {
		case "response.output_text.delta":
			text += ev.Delta
		case "response.output_item.done":
			done = append(done, ev.Item)
		case "response.completed":
			r := ev.Response
			completed = &r
		}
	}
	require.NoError(t, s.Err())
	require.NotNil(t, completed, "no response.completed")
	assert.Equal(t, completed.OutputText(), text)
	require.Len(t, done, len(completed.Output))
	for i := range done {
		assert.Equal(t, completed.Output[i].Type, done[i].Type)
		assert.Equal(t, completed.Output[i].Arguments.OfString, done[i].Arguments.OfString)
	}
	return *completed
}

func TestResponsesEcho(t *testing.T) {
	t.Parallel()
	c := openaiClient(newServer(t), "any")
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			t.Parallel()
			got := responsesTurn(t, c, stream, responses.ResponseNewParams{
				Model:        mockllm.Echo,
				Instructions: openai.String("be brief"),
				Input: responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{
					responses.ResponseInputItemParamOfMessage("<environment_context>…</environment_context>", responses.EasyInputMessageRoleUser),
					responses.ResponseInputItemParamOfMessage("Summarise the README.", responses.EasyInputMessageRoleUser),
				}},
			})
			assert.Equal(t, "Summarise the README.", got.OutputText())
			assert.Equal(t, responses.ResponseStatusCompleted, got.Status)
			assert.Equal(t, mockllm.Echo, got.Model)
			assert.Positive(t, got.Usage.InputTokens)
			assert.Positive(t, got.Usage.OutputTokens)
			assert.Equal(t, got.Usage.InputTokens+got.Usage.OutputTokens, got.Usage.TotalTokens)

			// A string input is one user message.
			got = responsesTurn(t, c, stream, responses.ResponseNewParams{
				Model: mockllm.Echo, Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hello")},
			})
			assert.Equal(t, "hello", got.OutputText())
		})
	}
}

// TestResponsesToolsCallsCodexShell: mock/tools lists the files with
// whichever shell Codex offers, in the arguments that shell takes, and
// answers with what it returned once the output comes back.
func TestResponsesToolsCallsCodexShell(t *testing.T) {
	t.Parallel()
	c := openaiClient(newServer(t), "any")
	wantArgs := map[string]map[string]any{
		"exec_command": {"cmd": "ls"},
		"shell":        {"command": []any{"ls"}},
	}
	for name, shell := range codexTools {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%v", name, stream), func(t *testing.T) {
				t.Parallel()
				input := responses.ResponseInputParam{
					responses.ResponseInputItemParamOfMessage("what is here?", responses.EasyInputMessageRoleUser),
				}
				p := responses.ResponseNewParams{
					Model: mockllm.Tools,
					Input: responses.ResponseNewParamsInputUnion{OfInputItemList: input},
					Tools: []responses.ToolUnionParam{applyPatch, shell},
				}
				got := responsesTurn(t, c, stream, p)
				require.Len(t, got.Output, 2)
				call := got.Output[1]
				assert.Equal(t, "function_call", call.Type)
				assert.Equal(t, name, call.Name)
				assert.NotEmpty(t, call.CallID)
				assert.Equal(t, wantArgs[name], jsonObject(t, call.Arguments.OfString))

				out := responses.ResponseInputItemParamOfFunctionCallOutput("README.md\nmain.go\n")
				out.OfFunctionCallOutput.CallID = openai.String(call.CallID)
				p.Input.OfInputItemList = append(input,
					responses.ResponseInputItemParamOfFunctionCall(call.Arguments.OfString, call.CallID, call.Name), out)
				got = responsesTurn(t, c, stream, p)
				require.Len(t, got.Output, 1)
				assert.Equal(t, "The "+name+" tool returned:\n\nREADME.md\nmain.go\n", got.OutputText())
			})
		}
	}
}

func TestResponsesUnknownModel(t *testing.T) {
	t.Parallel()
	c := openaiClient(newServer(t), "any")
	_, err := c.Responses.New(context.Background(), responses.ResponseNewParams{
		Model: "mock/nope", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")},
	})
	var apiErr *openai.Error
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 404, apiErr.StatusCode)
	assert.Contains(t, apiErr.Message, mockllm.Echo)
}
