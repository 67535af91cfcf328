package fakellm_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/e2e/fakellm"
)

// anthropicClient is the official SDK pointed at the fake, so the tests
// check the wire format against the real parser.
func anthropicClient(f *fakellm.Server) *anthropic.MessageService {
	c := anthropic.NewMessageService(
		option.WithBaseURL(f.URL()+"/llm/"),
		option.WithAPIKey("lapsb_test"),
		option.WithMaxRetries(0),
	)
	return &c
}

func anthropicParams(msgs ...anthropic.MessageParam) anthropic.MessageNewParams {
	if len(msgs) == 0 {
		msgs = []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("list the files"))}
	}
	return anthropic.MessageNewParams{
		Model:     "claude-sonnet-4-5",
		MaxTokens: 1024,
		System:    []anthropic.TextBlockParam{{Text: "be brief"}},
		Messages:  msgs,
		Tools: []anthropic.ToolUnionParam{anthropic.ToolUnionParamOfTool(anthropic.ToolInputSchemaParam{
			Properties: map[string]any{"command": map[string]any{"type": "string"}},
		}, "Bash")},
	}
}

func TestAnthropicStreamTextAndToolUse(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Enqueue(fakellm.Reply{Text: "Let me look.", ToolCalls: []fakellm.ToolCall{fakellm.Call("Bash", map[string]string{"command": "ls -la"})}, Chunks: 4})

	stream := anthropicClient(f).NewStreaming(context.Background(), anthropicParams())
	var msg anthropic.Message
	var events []string
	for stream.Next() {
		ev := stream.Current()
		events = append(events, ev.Type)
		require.NoError(t, msg.Accumulate(ev))
	}
	require.NoError(t, stream.Err())

	assert.Equal(t, []string{
		"message_start",
		"content_block_start", "content_block_delta", "content_block_delta", "content_block_delta", "content_block_delta", "content_block_stop",
		"content_block_start", "content_block_delta", "content_block_delta", "content_block_delta", "content_block_delta", "content_block_stop",
		"message_delta", "message_stop",
	}, events, "the SDK skips ping events")
	require.Len(t, msg.Content, 2)
	assert.Equal(t, "text", msg.Content[0].Type)
	assert.Equal(t, "Let me look.", msg.Content[0].Text)
	assert.Equal(t, "tool_use", msg.Content[1].Type)
	assert.Equal(t, "Bash", msg.Content[1].Name)
	assert.Equal(t, "call_1", msg.Content[1].ID)
	assert.JSONEq(t, `{"command":"ls -la"}`, string(msg.Content[1].Input))
	assert.Equal(t, anthropic.StopReasonToolUse, msg.StopReason)
	assert.Positive(t, msg.Usage.InputTokens)
	assert.Positive(t, msg.Usage.OutputTokens)

	req := f.Requests()[0]
	assert.Equal(t, fakellm.FormatAnthropicMessages, req.Format)
	assert.Equal(t, "/llm/v1/messages", req.Path)
	assert.Equal(t, "claude-sonnet-4-5", req.Model)
	assert.True(t, req.Stream)
	assert.Equal(t, "be brief", req.SystemText())
	assert.Equal(t, "list the files", req.LastUserText())
	assert.Equal(t, []string{"Bash"}, req.ToolNames())
	assert.NotEmpty(t, req.Header.Get("Anthropic-Version"))
}

func TestAnthropicNonStreamingAndToolResults(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Respond(func(r fakellm.Request) fakellm.Reply {
		if out, ok := r.ToolResult("toolu_1"); ok {
			return fakellm.Text("the files are: " + out)
		}
		return fakellm.Fail(http.StatusBadRequest, "unexpected conversation")
	})
	conv := []anthropic.MessageParam{
		anthropic.NewUserMessage(anthropic.NewTextBlock("list the files")),
		anthropic.NewAssistantMessage(anthropic.NewTextBlock("Sure."), anthropic.NewToolUseBlock("toolu_1", map[string]string{"command": "ls"}, "Bash")),
		anthropic.NewUserMessage(anthropic.NewToolResultBlock("toolu_1", "a.txt b.txt", false)),
	}
	msg, err := anthropicClient(f).New(context.Background(), anthropicParams(conv...))
	require.NoError(t, err)
	require.Len(t, msg.Content, 1)
	assert.Equal(t, "the files are: a.txt b.txt", msg.Content[0].Text)
	assert.Equal(t, anthropic.StopReasonEndTurn, msg.StopReason)

	req := f.Requests()[0]
	assert.False(t, req.Stream)
	roles := []string{}
	for _, m := range req.Messages {
		roles = append(roles, m.Role)
	}
	assert.Equal(t, []string{"system", "user", "assistant", "tool"}, roles)
	assert.Equal(t, "Sure.", req.Messages[2].Text)
	require.Len(t, req.Messages[2].ToolCalls, 1)
	assert.Equal(t, "Bash", req.Messages[2].ToolCalls[0].Name)
	assert.JSONEq(t, `{"command":"ls"}`, req.Messages[2].ToolCalls[0].Arguments)
}

func TestAnthropicErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		reply    fakellm.Reply
		msgs     []anthropic.MessageParam
		status   int
		wantType string
	}{
		{name: "scripted rate limit", reply: fakellm.Fail(http.StatusTooManyRequests, "slow down"), status: 429, wantType: "rate_limit_error"},
		{name: "scripted overload", reply: fakellm.Fail(529, "busy"), status: 529, wantType: "overloaded_error"},
		{
			name: "tool_use without tool_result",
			msgs: []anthropic.MessageParam{
				anthropic.NewUserMessage(anthropic.NewTextBlock("hi")),
				anthropic.NewAssistantMessage(anthropic.NewToolUseBlock("toolu_9", map[string]string{}, "Bash")),
				anthropic.NewUserMessage(anthropic.NewTextBlock("and?")),
			},
			status: 400, wantType: "invalid_request_error",
		},
		{
			name:   "first message from the assistant",
			msgs:   []anthropic.MessageParam{anthropic.NewAssistantMessage(anthropic.NewTextBlock("hello"))},
			status: 400, wantType: "invalid_request_error",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := fakellm.Start(t)
			f.Enqueue(tt.reply)
			_, err := anthropicClient(f).New(context.Background(), anthropicParams(tt.msgs...))
			var apiErr *anthropic.Error
			require.True(t, errors.As(err, &apiErr), "err = %v", err)
			assert.Equal(t, tt.status, apiErr.StatusCode)
			var body struct {
				Type  string `json:"type"`
				Error struct {
					Type string `json:"type"`
				} `json:"error"`
			}
			require.NoError(t, json.Unmarshal([]byte(apiErr.RawJSON()), &body))
			assert.Equal(t, "error", body.Type)
			assert.Equal(t, tt.wantType, body.Error.Type)
			if tt.reply.Status == 0 {
				assert.Equal(t, 1, f.Pending(), "an invalid request uses up no reply")
			}
		})
	}
}

func TestAnthropicStreamErrorAndHang(t *testing.T) {
	t.Parallel()
	f := fakellm.Start(t)
	f.Enqueue(fakellm.Reply{Text: "partial", StreamError: "Overloaded"}, fakellm.Reply{Text: "thinking", Hang: true})

	stream := anthropicClient(f).NewStreaming(context.Background(), anthropicParams())
	for stream.Next() {
	}
	require.Error(t, stream.Err())
	assert.Contains(t, stream.Err().Error(), "Overloaded")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream = anthropicClient(f).NewStreaming(ctx, anthropicParams())
	var text string
	for stream.Next() {
		ev := stream.Current()
		if ev.Type == "content_block_delta" {
			text += ev.Delta.Text
			if text == "thinking" {
				cancel()
			}
		}
	}
	assert.Equal(t, "thinking", text)
	assert.ErrorIs(t, stream.Err(), context.Canceled)
}
