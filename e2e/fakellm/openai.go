package fakellm

// The OpenAI chat-completions wire format: request parsing, conversation
// checks the real API makes, and answers as chat.completion objects or as
// a text/event-stream of chat.completion.chunk objects ending in [DONE].

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// openAIRequest is the part of a chat-completions request the fake reads.
type openAIRequest struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Messages []struct {
		Role       string          `json:"role"`
		Content    json.RawMessage `json:"content"`
		ToolCallID string          `json:"tool_call_id"`
		ToolCalls  []struct {
			ID       string `json:"id"`
			Type     string `json:"type"`
			Function struct {
				Name      string `json:"name"`
				Arguments string `json:"arguments"`
			} `json:"function"`
		} `json:"tool_calls"`
	} `json:"messages"`
	Tools []struct {
		Type     string `json:"type"`
		Function struct {
			Name        string          `json:"name"`
			Description string          `json:"description"`
			Parameters  json.RawMessage `json:"parameters"`
		} `json:"function"`
	} `json:"tools"`
}

// parseOpenAIChat turns a chat-completions body into a Request.
func parseOpenAIChat(body []byte) (Request, error) {
	var in openAIRequest
	if err := json.Unmarshal(body, &in); err != nil {
		return Request{}, fmt.Errorf("parse request body: %w", err)
	}
	req := Request{
		Format: FormatOpenAIChat,
		Model:  in.Model,
		Stream: in.Stream,
	}
	if in.StreamOptions != nil {
		req.IncludeUsage = in.StreamOptions.IncludeUsage
	}
	for i, m := range in.Messages {
		text, err := openAIContentText(m.Content)
		if err != nil {
			return Request{}, fmt.Errorf("messages[%d].content: %w", i, err)
		}
		role := m.Role
		if role == "developer" {
			role = "system"
		}
		msg := Message{Role: role, Text: text, ToolCallID: m.ToolCallID}
		for _, c := range m.ToolCalls {
			msg.ToolCalls = append(msg.ToolCalls, ToolCall{ID: c.ID, Name: c.Function.Name, Arguments: c.Function.Arguments})
		}
		req.Messages = append(req.Messages, msg)
	}
	for _, t := range in.Tools {
		req.Tools = append(req.Tools, Tool{Name: t.Function.Name, Description: t.Function.Description, Parameters: t.Function.Parameters})
	}
	return req, nil
}

// openAIContentText reads content that is a string, null or an array of
// parts, joining the text parts.
func openAIContentText(raw json.RawMessage) (string, error) {
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
		return "", fmt.Errorf("neither a string nor an array of parts")
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String(), nil
}

// checkOpenAIConversation rejects what the real API rejects with 400: a
// tool result that answers no pending call, and a call left unanswered
// before the next user or assistant message. It catches harnesses that
// lose tool results, e.g. across a restart.
func checkOpenAIConversation(msgs []Message) error {
	if len(msgs) == 0 {
		return fmt.Errorf("messages must not be empty")
	}
	pending := map[string]bool{}
	for i, m := range msgs {
		switch m.Role {
		case "tool":
			if !pending[m.ToolCallID] {
				return fmt.Errorf("messages[%d]: tool message answers %q, which no preceding assistant message called", i, m.ToolCallID)
			}
			delete(pending, m.ToolCallID)
		case "system", "user", "assistant":
			if len(pending) > 0 {
				return fmt.Errorf("messages[%d]: an assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id' (%d unanswered)", i, len(pending))
			}
			for _, c := range m.ToolCalls {
				pending[c.ID] = true
			}
		default:
			return fmt.Errorf("messages[%d]: unknown role %q", i, m.Role)
		}
	}
	return nil
}

// openAIChat serves POST /v1/chat/completions.
var openAIChat = wire{
	format: FormatOpenAIChat,
	parse:  parseOpenAIChat,
	check:  checkOpenAIConversation,
	fail:   writeOpenAIError,
	whole:  openAICompletion,
	stream: (*Server).streamOpenAIChat,
}

// openAIChoiceMessage is the assistant message of a non-streamed answer.
type openAIChoiceMessage struct {
	Role      string           `json:"role"`
	Content   *string          `json:"content"`
	Refusal   *string          `json:"refusal"`
	ToolCalls []openAIToolCall `json:"tool_calls,omitempty"`
}

type openAIToolCall struct {
	Index    *int   `json:"index,omitempty"`
	ID       string `json:"id,omitempty"`
	Type     string `json:"type,omitempty"`
	Function struct {
		Name      string `json:"name,omitempty"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type openAIUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

func toOpenAIUsage(u Usage) *openAIUsage {
	return &openAIUsage{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens}
}

func finishReason(reply Reply) string {
	switch {
	case reply.FinishReason != "":
		return reply.FinishReason
	case len(reply.ToolCalls) > 0:
		return "tool_calls"
	default:
		return "stop"
	}
}

func completionID(req Request) string { return fmt.Sprintf("chatcmpl-fake%d", req.Seq) }

// openAICompletion is a whole chat.completion object for reply.
func openAICompletion(req Request, reply Reply) any {
	msg := openAIChoiceMessage{Role: "assistant"}
	if reply.Text != "" || len(reply.ToolCalls) == 0 {
		msg.Content = &reply.Text
	}
	for _, c := range reply.ToolCalls {
		tc := openAIToolCall{ID: c.ID, Type: "function"}
		tc.Function.Name, tc.Function.Arguments = c.Name, c.Arguments
		msg.ToolCalls = append(msg.ToolCalls, tc)
	}
	return map[string]any{
		"id":      completionID(req),
		"object":  "chat.completion",
		"created": time.Now().Unix(),
		"model":   req.Model,
		"choices": []any{map[string]any{
			"index":         0,
			"message":       msg,
			"logprobs":      nil,
			"finish_reason": finishReason(reply),
		}},
		"usage": toOpenAIUsage(usage(req, reply)),
	}
}

// openAIChunk is one chat.completion.chunk.
type openAIChunk struct {
	ID      string         `json:"id"`
	Object  string         `json:"object"`
	Created int64          `json:"created"`
	Model   string         `json:"model"`
	Choices []openAIChoice `json:"choices"`
	// Usage is null on every chunk but the last when usage is asked for,
	// and absent otherwise, as the real API does.
	Usage *openAIUsage `json:"usage,omitempty"`
}

type openAIChoice struct {
	Index        int         `json:"index"`
	Delta        openAIDelta `json:"delta"`
	FinishReason *string     `json:"finish_reason"`
}

type openAIDelta struct {
	Role      string           `json:"role,omitempty"`
	Content   *string          `json:"content,omitempty"`
	ToolCalls []openAIToolCall `json:"tool_calls,omitempty"`
}

// streamOpenAIChat writes reply as server-sent chunks: the role, the text
// in pieces, each tool call (id and name first, then its arguments in
// pieces), the finish reason, the usage when asked for, and [DONE].
func (s *Server) streamOpenAIChat(w http.ResponseWriter, r *http.Request, req Request, reply Reply) {
	ctx := r.Context()
	events := startSSE(w)

	created := time.Now().Unix()
	send := func(choices []openAIChoice, u *openAIUsage) error {
		chunk := openAIChunk{ID: completionID(req), Object: "chat.completion.chunk", Created: created, Model: req.Model, Choices: choices, Usage: u}
		b, err := json.Marshal(chunk)
		if err != nil {
			return err
		}
		if req.IncludeUsage && u == nil {
			// The real API sends "usage": null on every other chunk.
			b = append(b[:len(b)-1], []byte(`,"usage":null}`)...)
		}
		if err := events.write("", b); err != nil {
			return err
		}
		return s.pause(ctx, reply.ChunkDelay)
	}
	delta := func(d openAIDelta) []openAIChoice { return []openAIChoice{{Delta: d}} }

	empty := ""
	if send(delta(openAIDelta{Role: "assistant", Content: &empty}), nil) != nil {
		return
	}
	for _, piece := range split(reply.Text, reply.Chunks) {
		if send(delta(openAIDelta{Content: &piece}), nil) != nil {
			return
		}
	}
	if reply.StreamError != "" {
		b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": reply.StreamError, "type": "server_error", "param": nil, "code": nil}})
		_ = events.write("", b)
		return
	}
	if reply.Hang {
		s.hang(ctx)
		return
	}
	for i, c := range reply.ToolCalls {
		index := i
		head := openAIToolCall{Index: &index, ID: c.ID, Type: "function"}
		head.Function.Name = c.Name
		if send(delta(openAIDelta{ToolCalls: []openAIToolCall{head}}), nil) != nil {
			return
		}
		for _, piece := range split(c.Arguments, reply.Chunks) {
			part := openAIToolCall{Index: &index}
			part.Function.Arguments = piece
			if send(delta(openAIDelta{ToolCalls: []openAIToolCall{part}}), nil) != nil {
				return
			}
		}
	}
	reason := finishReason(reply)
	if send([]openAIChoice{{Delta: openAIDelta{}, FinishReason: &reason}}, nil) != nil {
		return
	}
	if req.IncludeUsage {
		if send([]openAIChoice{}, toOpenAIUsage(usage(req, reply))) != nil {
			return
		}
	}
	_ = events.write("", []byte("[DONE]"))
}

func (s *Server) serveOpenAIModels(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data":   []any{map[string]any{"id": "fake", "object": "model", "created": 0, "owned_by": "fakellm"}},
	})
}

// writeOpenAIError answers with the API's error object.
func writeOpenAIError(w http.ResponseWriter, status int, message string, header map[string]string) {
	if message == "" {
		message = http.StatusText(status)
	}
	typ := "api_error"
	switch {
	case status == http.StatusBadRequest || status == http.StatusNotFound || status == http.StatusUnprocessableEntity:
		typ = "invalid_request_error"
	case status == http.StatusUnauthorized:
		typ = "authentication_error"
	case status == http.StatusTooManyRequests:
		typ = "rate_limit_error"
	case status >= 500:
		typ = "server_error"
	}
	for k, v := range header {
		w.Header().Set(k, v)
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": message, "type": typ, "param": nil, "code": nil}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
