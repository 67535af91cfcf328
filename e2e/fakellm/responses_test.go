package fakellm_test

import (
	"context"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/e2e/fakellm"
)

// responsesParams is a second step of a conversation over the Responses
// API: the user's text, the model's tool call and its output.
func responsesParams() responses.ResponseNewParams {
	out := responses.ResponseInputItemParamOfFunctionCallOutput("README.md")
	out.OfFunctionCallOutput.CallID = openai.String("call_9")
	return responses.ResponseNewParams{
		Model:        "gpt-5",
		Instructions: openai.String("be brief"),
		Input: responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{
			responses.ResponseInputItemParamOfMessage("list files", responses.EasyInputMessageRoleUser),
			responses.ResponseInputItemParamOfFunctionCall(`{"cmd":"ls"}`, "call_9", "exec_command"),
			out,
		}},
		Tools: []responses.ToolUnionParam{{OfFunction: &responses.FunctionToolParam{
			Name: "exec_command", Parameters: map[string]any{"type": "object"},
		}}},
	}
}

// TestResponses checks the Responses wire against the official SDK, whole
// and streamed: the conversation parsed, text and a function call answered.
func TestResponses(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	svc := responses.NewResponseService(option.WithBaseURL(f.URL()+"/v1/"), option.WithAPIKey("sk-test"), option.WithMaxRetries(0))
	f.Enqueue(
		fakellm.Reply{Text: "one file", ToolCalls: []fakellm.ToolCall{fakellm.Call("exec_command", map[string]any{"cmd": "cat README.md"})}},
		fakellm.Reply{Text: "streamed answer", ToolCalls: []fakellm.ToolCall{fakellm.Call("exec_command", map[string]any{"cmd": "pwd"})}},
	)

	resp, err := svc.New(context.Background(), responsesParams())
	require.NoError(t, err)
	assert.Equal(t, "one file", resp.OutputText())
	require.Len(t, resp.Output, 2)
	assert.Equal(t, "function_call", resp.Output[1].Type)
	assert.Equal(t, "exec_command", resp.Output[1].Name)
	assert.JSONEq(t, `{"cmd":"cat README.md"}`, resp.Output[1].Arguments.OfString)
	assert.Positive(t, resp.Usage.InputTokens)

	req := f.Requests()[0]
	assert.Equal(t, fakellm.FormatOpenAIResponses, req.Format)
	assert.Equal(t, "/v1/responses", req.Path)
	assert.Equal(t, "be brief", req.SystemText())
	assert.Equal(t, "list files", req.LastUserText())
	assert.Equal(t, []string{"exec_command"}, req.ToolNames())
	res, ok := req.ToolResult("call_9")
	require.True(t, ok)
	assert.Equal(t, "README.md", res)
	require.Len(t, req.Messages, 4)
	assert.Equal(t, "assistant", req.Messages[2].Role)
	assert.Equal(t, "exec_command", req.Messages[2].ToolCalls[0].Name)

	stream := svc.NewStreaming(context.Background(), responsesParams())
	var text string
	var done responses.Response
	var calls []string
	for stream.Next() {
		ev := stream.Current()
		switch ev.Type {
		case "response.output_text.delta":
			text += ev.Delta
		case "response.output_item.done":
			if ev.Item.Type == "function_call" {
				calls = append(calls, ev.Item.Name+" "+ev.Item.Arguments.OfString)
			}
		case "response.completed":
			done = ev.Response
		}
	}
	require.NoError(t, stream.Err())
	assert.Equal(t, "streamed answer", text)
	assert.Equal(t, []string{`exec_command {"cmd":"pwd"}`}, calls)
	assert.Equal(t, "completed", string(done.Status))
	assert.Positive(t, done.Usage.OutputTokens)
	assert.True(t, f.Requests()[1].Stream)
}
