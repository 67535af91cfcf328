package llmwire

import (
	"encoding/json"
	"errors"
	"strings"
)

// ChatRequest is the part of an OpenAI chat-completions request
// (POST /v1/chat/completions) that lap's stand-in models read.
type ChatRequest struct {
	Model         string             `json:"model"`
	Stream        bool               `json:"stream"`
	StreamOptions *ChatStreamOptions `json:"stream_options"`
	Messages      []ChatMessage      `json:"messages"`
	Tools         []ChatTool         `json:"tools"`
}

// ChatStreamOptions asks for a usage chunk at the end of a stream.
type ChatStreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// IncludeUsage reports whether the request asks for the usage chunk.
func (r ChatRequest) IncludeUsage() bool {
	return r.StreamOptions != nil && r.StreamOptions.IncludeUsage
}

// ChatMessage is one message of a request's conversation. Content is a
// string, null or an array of parts (ContentText reads it).
type ChatMessage struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"`
	ToolCallID string          `json:"tool_call_id"`
	ToolCalls  []ChatToolCall  `json:"tool_calls"`
}

// ChatTool is a tool offered to the model; only functions exist.
type ChatTool struct {
	Type     string `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description"`
		Parameters  json.RawMessage `json:"parameters"`
	} `json:"function"`
}

// ChatToolCall is a call of a function: in an assistant message, in an
// answer, or (with Index, in pieces) in a stream chunk.
type ChatToolCall struct {
	// Index is set in stream chunks only: which call a piece belongs to.
	Index    *int             `json:"index,omitempty"`
	ID       string           `json:"id,omitempty"`
	Type     string           `json:"type,omitempty"`
	Function ChatFunctionCall `json:"function"`
}

// ChatFunctionCall names the function and carries its arguments, a JSON
// object encoded as a string.
type ChatFunctionCall struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

// ErrNotContent is ContentText's error for content of another shape.
var ErrNotContent = errors.New("neither a string nor an array of parts")

// ContentText reads message content that is a string, null or an array
// of parts, joining the text parts.
func ContentText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", ErrNotContent
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String(), nil
}

// ChatCompletion is a whole answer (object "chat.completion").
type ChatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"` // "chat.completion"
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []ChatChoice `json:"choices"`
	Usage   *ChatUsage   `json:"usage,omitempty"`
}

// ChatChoice is one choice of a whole answer.
type ChatChoice struct {
	Index        int               `json:"index"`
	Message      ChatAnswerMessage `json:"message"`
	Logprobs     *struct{}         `json:"logprobs"` // always null here
	FinishReason string            `json:"finish_reason"`
}

// ChatAnswerMessage is the assistant message of a whole answer; Content
// is null when the model only calls tools.
type ChatAnswerMessage struct {
	Role      string         `json:"role"`
	Content   *string        `json:"content"`
	Refusal   *string        `json:"refusal"`
	ToolCalls []ChatToolCall `json:"tool_calls,omitempty"`
}

// ChatChunk is one piece of a streamed answer (object
// "chat.completion.chunk"). Usage is set on the last chunk only, when the
// request asked for it (that chunk has no choices).
type ChatChunk struct {
	ID      string            `json:"id"`
	Object  string            `json:"object"` // "chat.completion.chunk"
	Created int64             `json:"created"`
	Model   string            `json:"model"`
	Choices []ChatChunkChoice `json:"choices"`
	Usage   *ChatUsage        `json:"usage,omitempty"`
}

// ChatChunkChoice is the change a chunk brings to a choice.
type ChatChunkChoice struct {
	Index        int       `json:"index"`
	Delta        ChatDelta `json:"delta"`
	Logprobs     *struct{} `json:"logprobs"` // always null here
	FinishReason *string   `json:"finish_reason"`
}

// ChatDelta is the new part of the assistant message: the role first,
// then pieces of text or of tool calls.
type ChatDelta struct {
	Role      string         `json:"role,omitempty"`
	Content   *string        `json:"content,omitempty"`
	ToolCalls []ChatToolCall `json:"tool_calls,omitempty"`
}

// ChatUsage counts an answer's tokens.
type ChatUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// NewChatUsage fills TotalTokens.
func NewChatUsage(prompt, completion int64) *ChatUsage {
	return &ChatUsage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
}

// ChatError is OpenAI's error body, also sent as a stream event when a
// stream fails midway.
type ChatError struct {
	Error ChatErrorDetail `json:"error"`
}

// ChatErrorDetail says what went wrong; Type is e.g.
// "invalid_request_error", Code e.g. "model_not_found" (or null).
type ChatErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// NewChatError is the error body for message, of type typ, with code
// ("" for null).
func NewChatError(typ, code, message string) ChatError {
	e := ChatError{Error: ChatErrorDetail{Message: message, Type: typ}}
	if code != "" {
		e.Error.Code = &code
	}
	return e
}

// ChatDone is the data of the event that ends an OpenAI stream.
var ChatDone = []byte("[DONE]")
