package llmwire

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// The OpenAI Responses API (POST /v1/responses), which Codex speaks (it
// refuses wire_api = "chat"). A request's input is a list of items —
// messages, function calls and their outputs — and an answer is a
// response object whose output is a list of items, whole or streamed as
// response.* events that end with response.completed, which carries the
// usage.

// ResponsesRequest is the part of a Responses request that lap's
// stand-in models read. Input is a string (one user message) or an array
// of items (Items reads both).
type ResponsesRequest struct {
	Model           string          `json:"model"`
	Stream          bool            `json:"stream"`
	Instructions    string          `json:"instructions"`
	Input           json.RawMessage `json:"input"`
	Tools           []ResponsesTool `json:"tools"`
	MaxOutputTokens *int64          `json:"max_output_tokens"`
}

// Items returns the request's input as items; a string input is one user
// message.
func (r ResponsesRequest) Items() ([]ResponsesItem, error) {
	if len(r.Input) == 0 || string(r.Input) == "null" {
		return nil, nil
	}
	if r.Input[0] == '"' {
		return []ResponsesItem{{Type: "message", Role: "user", Content: r.Input}}, nil
	}
	var items []ResponsesItem
	if err := json.Unmarshal(r.Input, &items); err != nil {
		return nil, fmt.Errorf("input: %w", err)
	}
	return items, nil
}

// ResponsesTool is a tool offered to the model: a function (type
// "function", with a JSON schema) or one of Codex's freeform tools (type
// "custom", e.g. apply_patch); built-in tools (web_search…) have no name.
type ResponsesTool struct {
	Type        string          `json:"type"`
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Parameters  json.RawMessage `json:"parameters"`
}

// ResponsesItem is one input item: a message (type "message" or none), a
// call the model made earlier (function_call, custom_tool_call) or a
// call's output (function_call_output, custom_tool_call_output). Content
// and Output are strings or arrays of parts (ResponsesText reads them).
type ResponsesItem struct {
	Type      string          `json:"type"`
	Role      string          `json:"role"`
	Content   json.RawMessage `json:"content"`
	CallID    string          `json:"call_id"`
	Name      string          `json:"name"`
	Arguments string          `json:"arguments"`
	// Input is a custom_tool_call's freeform input.
	Input  string          `json:"input"`
	Output json.RawMessage `json:"output"`
}

// ResponsesText reads content that is a string, null or an array of parts
// (input_text, output_text…), joining the parts' text.
func ResponsesText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", ErrNotContent
	}
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(p.Text)
	}
	return b.String(), nil
}

// Response is a whole answer (object "response"), also the payload of
// the response.created, .completed and .failed events.
type Response struct {
	ID        string                `json:"id"`
	Object    string                `json:"object"` // "response"
	CreatedAt int64                 `json:"created_at"`
	Status    string                `json:"status"` // in_progress, completed, failed, incomplete
	Model     string                `json:"model"`
	Output    []ResponsesOutputItem `json:"output"`
	Usage     *ResponsesUsage       `json:"usage,omitempty"`
	Error     *ResponsesError       `json:"error"`
}

// ResponsesOutputItem is one item of an answer: an assistant message
// (NewResponsesMessage) or a function call (NewResponsesFunctionCall).
type ResponsesOutputItem struct {
	Type   string `json:"type"` // "message" or "function_call"
	ID     string `json:"id"`
	Status string `json:"status"`
	// Role and Content are a message's.
	Role    string             `json:"role,omitempty"`
	Content []ResponsesContent `json:"content,omitempty"`
	// CallID, Name and Arguments (a JSON object encoded as a string) are
	// a function call's.
	CallID    string  `json:"call_id,omitempty"`
	Name      string  `json:"name,omitempty"`
	Arguments *string `json:"arguments,omitempty"`
}

// ResponsesContent is one part of an assistant message: output_text.
type ResponsesContent struct {
	Type        string `json:"type"` // "output_text"
	Text        string `json:"text"`
	Annotations []any  `json:"annotations"`
}

// NewResponsesMessage is a completed assistant message with text.
func NewResponsesMessage(id, text string) ResponsesOutputItem {
	return ResponsesOutputItem{Type: "message", ID: id, Status: "completed", Role: "assistant",
		Content: []ResponsesContent{{Type: "output_text", Text: text, Annotations: []any{}}}}
}

// NewResponsesFunctionCall is a completed call of the function name with
// args (a JSON object); callID pairs it with its output.
func NewResponsesFunctionCall(id, callID, name, args string) ResponsesOutputItem {
	return ResponsesOutputItem{Type: "function_call", ID: id, Status: "completed", CallID: callID, Name: name, Arguments: &args}
}

// ResponsesUsage counts an answer's tokens; InputTokens includes the
// cached ones.
type ResponsesUsage struct {
	InputTokens         int64                `json:"input_tokens"`
	InputTokensDetails  ResponsesInputDetail `json:"input_tokens_details"`
	OutputTokens        int64                `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int64 `json:"total_tokens"`
}

// ResponsesInputDetail says how many input tokens came from the cache.
type ResponsesInputDetail struct {
	CachedTokens int64 `json:"cached_tokens"`
}

// NewResponsesUsage fills TotalTokens.
func NewResponsesUsage(input, output int64) *ResponsesUsage {
	return &ResponsesUsage{InputTokens: input, OutputTokens: output, TotalTokens: input + output}
}

// ResponsesError is why a response failed.
type ResponsesError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ResponsesEvent is one event of a streamed answer; Type is also the
// event's name. Which fields are set depends on the type:
//
//	response.created, .completed, .failed   Response
//	response.output_item.added, .done       OutputIndex, Item
//	response.output_text.delta              OutputIndex, ContentIndex, ItemID, Delta
//	response.function_call_arguments.delta  OutputIndex, ItemID, Delta
type ResponsesEvent struct {
	Type           string               `json:"type"`
	SequenceNumber int                  `json:"sequence_number"`
	Response       *Response            `json:"response,omitempty"`
	OutputIndex    *int                 `json:"output_index,omitempty"`
	ContentIndex   *int                 `json:"content_index,omitempty"`
	ItemID         string               `json:"item_id,omitempty"`
	Item           *ResponsesOutputItem `json:"item,omitempty"`
	Delta          string               `json:"delta,omitempty"`
}

// ResponsesStream writes a streamed answer's events, numbering them.
type ResponsesStream struct {
	w   io.Writer
	seq int
}

// NewResponsesStream returns a stream that writes events to w.
func NewResponsesStream(w io.Writer) *ResponsesStream { return &ResponsesStream{w: w} }

// Send writes ev as the next event, named after its type.
func (s *ResponsesStream) Send(ev ResponsesEvent) error {
	ev.SequenceNumber = s.seq
	s.seq++
	return WriteEvent(s.w, ev.Type, ev)
}

// Index returns a pointer to i, for OutputIndex and ContentIndex.
func Index(i int) *int { return &i }
