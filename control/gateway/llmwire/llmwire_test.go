package llmwire

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/openai/openai-go/v3"
)

func TestWriteEvent(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	if err := WriteEvent(&b, "ping", Ping{Type: "ping"}); err != nil {
		t.Fatal(err)
	}
	if err := WriteRawEvent(&b, "", ChatDone); err != nil {
		t.Fatal(err)
	}
	if got, want := b.String(), "event: ping\ndata: {\"type\":\"ping\"}\n\ndata: [DONE]\n\n"; got != want {
		t.Errorf("events = %q, want %q", got, want)
	}
}

func TestContentShapes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw, want string
		err       bool
	}{
		{`"hi"`, "hi", false},
		{`null`, "", false},
		{`[{"type":"text","text":"a"},{"type":"image_url"},{"type":"text","text":"b"}]`, "ab", false},
		{`42`, "", true},
	} {
		got, err := ContentText(json.RawMessage(tc.raw))
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("ContentText(%s) = %q, %v; want %q, error %v", tc.raw, got, err, tc.want, tc.err)
		}
		if tc.raw == `[{"type":"text","text":"a"},{"type":"image_url"},{"type":"text","text":"b"}]` {
			continue // not Anthropic's shape of blocks
		}
		got, err = BlocksText(json.RawMessage(tc.raw))
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("BlocksText(%s) = %q, %v; want %q, error %v", tc.raw, got, err, tc.want, tc.err)
		}
	}
}

// TestSDKsDecodeAnswers decodes answers built from these types with the
// official SDKs' types, as a harness would.
func TestSDKsDecodeAnswers(t *testing.T) {
	t.Parallel()
	text := "hello"
	chat, _ := json.Marshal(ChatCompletion{ID: "c1", Object: "chat.completion", Model: "m",
		Choices: []ChatChoice{{Message: ChatAnswerMessage{Role: "assistant", Content: &text,
			ToolCalls: []ChatToolCall{{ID: "call_1", Type: "function", Function: ChatFunctionCall{Name: "ls", Arguments: `{}`}}}},
			FinishReason: "tool_calls"}},
		Usage: NewChatUsage(3, 4)})
	var oc openai.ChatCompletion
	if err := json.Unmarshal(chat, &oc); err != nil {
		t.Fatalf("openai.ChatCompletion: %v", err)
	}
	if oc.Choices[0].Message.Content != "hello" || oc.Choices[0].Message.ToolCalls[0].Function.Name != "ls" || oc.Usage.TotalTokens != 7 {
		t.Errorf("openai decoded %+v", oc)
	}
	reason := "tool_use"
	msg, _ := json.Marshal(Message{ID: "m1", Type: "message", Role: "assistant", Model: "m",
		Content:    []ContentBlock{TextBlock("hi"), ToolUseBlock("toolu_1", "ls", json.RawMessage(`{"path":"."}`))},
		StopReason: &reason, Usage: AnthropicUsage{InputTokens: 3, OutputTokens: 4}})
	var am anthropic.Message
	if err := json.Unmarshal(msg, &am); err != nil {
		t.Fatalf("anthropic.Message: %v", err)
	}
	if len(am.Content) != 2 || am.Content[0].Text != "hi" || am.Content[1].Name != "ls" || string(am.StopReason) != "tool_use" || am.Usage.OutputTokens != 4 {
		t.Errorf("anthropic decoded %+v", am)
	}
}
