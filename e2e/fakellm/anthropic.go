package fakellm

// The Anthropic Messages format (POST /v1/messages; its types are
// llmwire's): request parsing,
// the conversation checks the real API makes, and answers as a message
// object or as the real event stream — message_start, ping, per content
// block content_block_start / content_block_delta (text_delta or
// input_json_delta) / content_block_stop, message_delta with the stop
// reason and usage, message_stop.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"lap.dev/lap/control/gateway/llmwire"
)

// parseAnthropicMessages turns a Messages body into a Request. The system
// prompt becomes a leading system message; a user message's tool_result
// blocks become tool messages (before its text, as the API orders them)
// and an assistant's tool_use blocks its ToolCalls.
func parseAnthropicMessages(body []byte) (Request, error) {
	var in llmwire.MessagesRequest
	if err := json.Unmarshal(body, &in); err != nil {
		return Request{}, fmt.Errorf("parse request body: %w", err)
	}
	req := Request{Format: FormatAnthropicMessages, Model: in.Model, Stream: in.Stream}
	if in.Model == "" {
		return Request{}, fmt.Errorf("model: field required")
	}
	if in.MaxTokens <= 0 {
		return Request{}, fmt.Errorf("max_tokens: field required")
	}
	system, err := llmwire.BlocksText(in.System)
	if err != nil {
		return Request{}, fmt.Errorf("system: %w", err)
	}
	if system != "" {
		req.Messages = append(req.Messages, Message{Role: "system", Text: system})
	}
	for i, m := range in.Messages {
		blocks, err := llmwire.Blocks(m.Content)
		if err != nil {
			return Request{}, fmt.Errorf("messages.%d.content: %w", i, err)
		}
		switch m.Role {
		case "user":
			var text strings.Builder
			for _, b := range blocks {
				switch b.Type {
				case "tool_result":
					out, err := llmwire.BlocksText(b.Content)
					if err != nil {
						return Request{}, fmt.Errorf("messages.%d.content: tool_result: %w", i, err)
					}
					req.Messages = append(req.Messages, Message{Role: "tool", Text: out, ToolCallID: b.ToolUseID})
				case "text":
					text.WriteString(b.Text)
				}
			}
			if text.Len() > 0 || !hasBlock(blocks, "tool_result") {
				req.Messages = append(req.Messages, Message{Role: "user", Text: text.String()})
			}
		case "assistant":
			msg := Message{Role: "assistant"}
			var text strings.Builder
			for _, b := range blocks {
				switch b.Type {
				case "text":
					text.WriteString(b.Text)
				case "tool_use":
					args := string(b.Input)
					if args == "" {
						args = "{}"
					}
					msg.ToolCalls = append(msg.ToolCalls, ToolCall{ID: b.ID, Name: b.Name, Arguments: args})
				}
			}
			msg.Text = text.String()
			req.Messages = append(req.Messages, msg)
		default:
			return Request{}, fmt.Errorf("messages.%d.role: Input should be 'user' or 'assistant'", i)
		}
	}
	for _, t := range in.Tools {
		req.Tools = append(req.Tools, Tool{Name: t.Name, Description: t.Description, Parameters: t.InputSchema})
	}
	return req, nil
}

func hasBlock(blocks []llmwire.Block, typ string) bool {
	for _, b := range blocks {
		if b.Type == typ {
			return true
		}
	}
	return false
}

// checkAnthropicConversation rejects what the real API rejects with 400:
// an empty conversation, one that does not start with a user message, a
// tool_use not answered by a tool_result in the message right after it,
// and a tool_result answering no tool_use of the message before.
func checkAnthropicConversation(msgs []Message) error {
	pending := map[string]bool{}
	seen := false
	for _, m := range msgs {
		if m.Role == "system" {
			continue
		}
		if !seen && m.Role != "user" && m.Role != "tool" {
			return fmt.Errorf("messages: first message must use the \"user\" role")
		}
		seen = true
		switch m.Role {
		case "tool":
			if !pending[m.ToolCallID] {
				return fmt.Errorf("messages: unexpected `tool_use_id` found in `tool_result` blocks: %s. Each `tool_result` block must have a corresponding `tool_use` block in the previous message", m.ToolCallID)
			}
			delete(pending, m.ToolCallID)
		case "user", "assistant":
			if len(pending) > 0 {
				return fmt.Errorf("messages: `tool_use` ids were found without `tool_result` blocks immediately after: %s", strings.Join(keys(pending), ", "))
			}
			for _, c := range m.ToolCalls {
				pending[c.ID] = true
			}
		}
	}
	if !seen {
		return fmt.Errorf("messages: at least one message is required")
	}
	return nil
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// anthropicMessages serves POST /v1/messages.
var anthropicMessages = wire{
	format: FormatAnthropicMessages,
	parse:  parseAnthropicMessages,
	check:  checkAnthropicConversation,
	fail:   writeAnthropicError,
	whole:  anthropicMessage,
	stream: (*Server).streamAnthropicMessages,
}

// serveAnthropicCountTokens answers POST /v1/messages/count_tokens.
func (s *Server) serveAnthropicCountTokens(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeAnthropicError(w, http.StatusBadRequest, "read body: "+err.Error(), nil)
		return
	}
	// count_tokens takes no max_tokens; parse with a stand-in.
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(body, &probe); err != nil {
		writeAnthropicError(w, http.StatusBadRequest, "parse request body: "+err.Error(), nil)
		return
	}
	probe["max_tokens"] = json.RawMessage("1")
	patched, _ := json.Marshal(probe)
	req, err := parseAnthropicMessages(patched)
	if err != nil {
		writeAnthropicError(w, http.StatusBadRequest, err.Error(), nil)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"input_tokens": usage(req, Reply{}).PromptTokens})
}

func anthropicStopReason(reply Reply) string {
	switch {
	case reply.FinishReason != "":
		return reply.FinishReason
	case len(reply.ToolCalls) > 0:
		return "tool_use"
	default:
		return "end_turn"
	}
}

func anthropicMessageID(req Request) string { return fmt.Sprintf("msg_fake%d", req.Seq) }

// toolInput is a call's arguments as the object a tool_use block holds;
// arguments that are not a JSON object become {} (the stream sends them
// verbatim, so malformed input is still testable there).
func toolInput(c ToolCall) json.RawMessage {
	var obj map[string]json.RawMessage
	if json.Unmarshal([]byte(c.Arguments), &obj) != nil || obj == nil {
		return json.RawMessage("{}")
	}
	return json.RawMessage(c.Arguments)
}

func anthropicUsage(u Usage) llmwire.AnthropicUsage {
	return llmwire.AnthropicUsage{InputTokens: u.PromptTokens, OutputTokens: u.CompletionTokens}
}

// anthropicMessage is a whole message object for reply.
func anthropicMessage(req Request, reply Reply) any {
	content := []llmwire.ContentBlock{}
	if reply.Text != "" {
		content = append(content, llmwire.TextBlock(reply.Text))
	}
	for _, c := range reply.ToolCalls {
		content = append(content, llmwire.ToolUseBlock(c.ID, c.Name, toolInput(c)))
	}
	reason := anthropicStopReason(reply)
	return llmwire.Message{
		ID: anthropicMessageID(req), Type: "message", Role: "assistant", Model: req.Model,
		Content: content, StopReason: &reason, Usage: anthropicUsage(usage(req, reply)),
	}
}

// streamAnthropicMessages writes reply as the Messages event stream.
func (s *Server) streamAnthropicMessages(w http.ResponseWriter, r *http.Request, req Request, reply Reply) {
	ctx := r.Context()
	events := startSSE(w)

	u := usage(req, reply)
	send := func(event string, data any) error {
		b, err := json.Marshal(data)
		if err != nil {
			return err
		}
		if err := events.write(event, b); err != nil {
			return err
		}
		return s.pause(ctx, reply.ChunkDelay)
	}

	startUsage := anthropicUsage(u)
	startUsage.OutputTokens = 1
	start := llmwire.Message{ID: anthropicMessageID(req), Type: "message", Role: "assistant", Model: req.Model,
		Content: []llmwire.ContentBlock{}, Usage: startUsage}
	if send("message_start", llmwire.MessageStart{Type: "message_start", Message: start}) != nil {
		return
	}
	if send("ping", llmwire.Ping{Type: "ping"}) != nil {
		return
	}
	index := 0
	if reply.Text != "" || reply.Hang || reply.StreamError != "" {
		if send("content_block_start", llmwire.ContentBlockStart{Type: "content_block_start", Index: index, ContentBlock: llmwire.TextBlock("")}) != nil {
			return
		}
		for _, piece := range split(reply.Text, reply.Chunks) {
			if send("content_block_delta", llmwire.TextDelta(index, piece)) != nil {
				return
			}
		}
		if reply.StreamError != "" {
			// How the API reports a failure after the stream began.
			_ = send("error", llmwire.NewAnthropicError("overloaded_error", reply.StreamError))
			return
		}
		if reply.Hang {
			s.hang(ctx)
			return
		}
		if send("content_block_stop", llmwire.ContentBlockStop{Type: "content_block_stop", Index: index}) != nil {
			return
		}
		index++
	}
	for _, c := range reply.ToolCalls {
		block := llmwire.ToolUseBlock(c.ID, c.Name, json.RawMessage(`{}`))
		if send("content_block_start", llmwire.ContentBlockStart{Type: "content_block_start", Index: index, ContentBlock: block}) != nil {
			return
		}
		for _, piece := range split(c.Arguments, reply.Chunks) {
			if send("content_block_delta", llmwire.InputJSONDelta(index, piece)) != nil {
				return
			}
		}
		if send("content_block_stop", llmwire.ContentBlockStop{Type: "content_block_stop", Index: index}) != nil {
			return
		}
		index++
	}
	reason := anthropicStopReason(reply)
	delta := llmwire.MessageDelta{Type: "message_delta", Delta: llmwire.MessageDeltaStop{StopReason: &reason},
		Usage: llmwire.MessageDeltaUsage{OutputTokens: u.CompletionTokens}}
	if send("message_delta", delta) != nil {
		return
	}
	_ = send("message_stop", llmwire.MessageStop{Type: "message_stop"})
}

// writeAnthropicError answers with the API's error object.
func writeAnthropicError(w http.ResponseWriter, status int, message string, header map[string]string) {
	if message == "" {
		message = http.StatusText(status)
	}
	typ := "api_error"
	switch status {
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		typ = "invalid_request_error"
	case http.StatusUnauthorized:
		typ = "authentication_error"
	case http.StatusForbidden:
		typ = "permission_error"
	case http.StatusNotFound:
		typ = "not_found_error"
	case http.StatusRequestEntityTooLarge:
		typ = "request_too_large"
	case http.StatusTooManyRequests:
		typ = "rate_limit_error"
	case 529:
		typ = "overloaded_error"
	}
	for k, v := range header {
		w.Header().Set(k, v)
	}
	writeJSON(w, status, llmwire.NewAnthropicError(typ, message))
}
