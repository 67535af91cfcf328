package llmwire

import (
	"encoding/json"
	"errors"
	"strings"
)

// MessagesRequest is the part of an Anthropic messages request
// (POST /v1/messages, and /v1/messages/count_tokens) that lap's stand-in
// models read. System and each message's content are a string or an
// array of blocks (Blocks reads them).
type MessagesRequest struct {
	Model     string          `json:"model"`
	MaxTokens int64           `json:"max_tokens"`
	Stream    bool            `json:"stream"`
	System    json.RawMessage `json:"system"`
	Messages  []InputMessage  `json:"messages"`
	Tools     []AnthropicTool `json:"tools"`
}

// InputMessage is one turn of the conversation, "user" or "assistant".
type InputMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// AnthropicTool is a tool offered to the model.
type AnthropicTool struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	InputSchema json.RawMessage `json:"input_schema"`
}

// Block is a content block of a request: text, tool_use (in assistant
// turns) or tool_result (in user turns; its Content is a string or text
// blocks).
type Block struct {
	Type string `json:"type"`
	Text string `json:"text"`
	// tool_use
	ID    string          `json:"id"`
	Name  string          `json:"name"`
	Input json.RawMessage `json:"input"`
	// tool_result
	ToolUseID string          `json:"tool_use_id"`
	Content   json.RawMessage `json:"content"`
	IsError   bool            `json:"is_error"`
}

// ErrNotBlocks is Blocks's error for content of another shape.
var ErrNotBlocks = errors.New("neither a string nor an array of content blocks")

// Blocks reads content that is null, a string (one text block) or an
// array of blocks.
func Blocks(raw json.RawMessage) ([]Block, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return []Block{{Type: "text", Text: s}}, nil
	}
	var blocks []Block
	if err := json.Unmarshal(raw, &blocks); err != nil {
		return nil, ErrNotBlocks
	}
	return blocks, nil
}

// BlocksText joins the text blocks of content (Blocks's shapes).
func BlocksText(raw json.RawMessage) (string, error) {
	blocks, err := Blocks(raw)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, bl := range blocks {
		if bl.Type == "text" {
			b.WriteString(bl.Text)
		}
	}
	return b.String(), nil
}

// Message is a whole answer (type "message"), and the message of a
// stream's message_start event (with no content and no stop reason yet).
type Message struct {
	ID           string         `json:"id"`
	Type         string         `json:"type"` // "message"
	Role         string         `json:"role"` // "assistant"
	Model        string         `json:"model"`
	Content      []ContentBlock `json:"content"`
	StopReason   *string        `json:"stop_reason"`
	StopSequence *string        `json:"stop_sequence"`
	Usage        AnthropicUsage `json:"usage"`
}

// ContentBlock is a block of an answer: text, or a tool_use with its
// input object.
type ContentBlock struct {
	Type  string           `json:"type"`
	Text  *string          `json:"text,omitempty"`
	ID    string           `json:"id,omitempty"`
	Name  string           `json:"name,omitempty"`
	Input *json.RawMessage `json:"input,omitempty"`
}

// TextBlock is a text ContentBlock.
func TextBlock(text string) ContentBlock { return ContentBlock{Type: "text", Text: &text} }

// ToolUseBlock is a tool_use ContentBlock.
func ToolUseBlock(id, name string, input json.RawMessage) ContentBlock {
	return ContentBlock{Type: "tool_use", ID: id, Name: name, Input: &input}
}

// AnthropicUsage counts an answer's tokens.
type AnthropicUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
}

// The events of a streamed answer, in order: message_start, (ping,)
// for each block content_block_start, content_block_delta…,
// content_block_stop; then message_delta and message_stop. Each is sent
// as an SSE event named by its Type.

// MessageStart opens a stream with the message's id, model and input
// usage.
type MessageStart struct {
	Type    string  `json:"type"` // "message_start"
	Message Message `json:"message"`
}

// Ping is a keep-alive event.
type Ping struct {
	Type string `json:"type"` // "ping"
}

// ContentBlockStart opens block Index.
type ContentBlockStart struct {
	Type         string       `json:"type"` // "content_block_start"
	Index        int          `json:"index"`
	ContentBlock ContentBlock `json:"content_block"`
}

// ContentBlockDelta adds to block Index: text (text_delta) or a piece of
// a tool's input JSON (input_json_delta).
type ContentBlockDelta struct {
	Type  string     `json:"type"` // "content_block_delta"
	Index int        `json:"index"`
	Delta BlockDelta `json:"delta"`
}

// BlockDelta is the piece a ContentBlockDelta adds.
type BlockDelta struct {
	Type        string `json:"type"` // "text_delta" or "input_json_delta"
	Text        string `json:"text,omitempty"`
	PartialJSON string `json:"partial_json,omitempty"`
}

// TextDelta is a ContentBlockDelta of text.
func TextDelta(index int, text string) ContentBlockDelta {
	return ContentBlockDelta{Type: "content_block_delta", Index: index, Delta: BlockDelta{Type: "text_delta", Text: text}}
}

// InputJSONDelta is a ContentBlockDelta of tool input.
func InputJSONDelta(index int, partial string) ContentBlockDelta {
	return ContentBlockDelta{Type: "content_block_delta", Index: index, Delta: BlockDelta{Type: "input_json_delta", PartialJSON: partial}}
}

// ContentBlockStop closes block Index.
type ContentBlockStop struct {
	Type  string `json:"type"` // "content_block_stop"
	Index int    `json:"index"`
}

// MessageDelta ends the message: why it stopped and the output usage.
type MessageDelta struct {
	Type  string            `json:"type"` // "message_delta"
	Delta MessageDeltaStop  `json:"delta"`
	Usage MessageDeltaUsage `json:"usage"`
}

// MessageDeltaStop is why the message stopped.
type MessageDeltaStop struct {
	StopReason   *string `json:"stop_reason"`
	StopSequence *string `json:"stop_sequence"`
}

// MessageDeltaUsage is the output usage of the whole message.
type MessageDeltaUsage struct {
	OutputTokens int64 `json:"output_tokens"`
}

// MessageStop closes the stream.
type MessageStop struct {
	Type string `json:"type"` // "message_stop"
}

// AnthropicError is Anthropic's error body (type "error"), also sent as
// an "error" stream event.
type AnthropicError struct {
	Type  string               `json:"type"` // "error"
	Error AnthropicErrorDetail `json:"error"`
}

// AnthropicErrorDetail says what went wrong; Type is e.g.
// "invalid_request_error", "not_found_error" or "overloaded_error".
type AnthropicErrorDetail struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// NewAnthropicError is the error body for message of type typ.
func NewAnthropicError(typ, message string) AnthropicError {
	return AnthropicError{Type: "error", Error: AnthropicErrorDetail{Type: typ, Message: message}}
}
