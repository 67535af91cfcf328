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

func TestResponsesShapes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		input string
		want  []ResponsesItem
		err   bool
	}{
		{`"hi"`, []ResponsesItem{{Type: "message", Role: "user", Content: json.RawMessage(`"hi"`)}}, false},
		{`null`, nil, false},
		{`[{"type":"function_call_output","call_id":"c1","output":"ok"}]`,
			[]ResponsesItem{{Type: "function_call_output", CallID: "c1", Output: json.RawMessage(`"ok"`)}}, false},
		{`{"role":"user"}`, nil, true},
	} {
		got, err := ResponsesRequest{Input: json.RawMessage(tc.input)}.Items()
		if (err != nil) != tc.err || !equalJSON(t, got, tc.want) {
			t.Errorf("Items(%s) = %+v, %v; want %+v, error %v", tc.input, got, err, tc.want, tc.err)
		}
	}
	text, err := ResponsesText(json.RawMessage(`[{"type":"input_text","text":"a"},{"type":"input_image"},{"type":"input_text","text":"b"}]`))
	if text != "ab" || err != nil {
		t.Errorf("ResponsesText = %q, %v; want ab", text, err)
	}
}

// TestResponsesStreamNumbers: events are named after their type and
// numbered in order, and index 0 is sent, not omitted.
func TestResponsesStreamNumbers(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	s := NewResponsesStream(&b)
	for _, ev := range []ResponsesEvent{
		{Type: "response.created", Response: &Response{ID: "r", Object: "response", Status: "in_progress", Output: []ResponsesOutputItem{}}},
		{Type: "response.output_text.delta", OutputIndex: Index(0), ContentIndex: Index(0), ItemID: "m", Delta: "hi"},
	} {
		if err := s.Send(ev); err != nil {
			t.Fatal(err)
		}
	}
	want := "event: response.created\n" +
		`data: {"type":"response.created","sequence_number":0,"response":{"id":"r","object":"response","created_at":0,"status":"in_progress","model":"","output":[],"error":null}}` + "\n\n" +
		"event: response.output_text.delta\n" +
		`data: {"type":"response.output_text.delta","sequence_number":1,"output_index":0,"content_index":0,"item_id":"m","delta":"hi"}` + "\n\n"
	if b.String() != want {
		t.Errorf("events = %q, want %q", b.String(), want)
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}
