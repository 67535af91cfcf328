package fakellm

// The OpenAI chat-completions format (its types are llmwire's): request
// parsing, conversation checks the real API makes, and answers as
// chat.completion objects or as a text/event-stream of
// chat.completion.chunk objects ending in [DONE].

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"lap.dev/lap/control/gateway/llmwire"
)

// parseOpenAIChat turns a chat-completions body into a Request.
func parseOpenAIChat(body []byte) (Request, error) {
	var in llmwire.ChatRequest
	if err := json.Unmarshal(body, &in); err != nil {
		return Request{}, fmt.Errorf("parse request body: %w", err)
	}
	req := Request{
		Format: FormatOpenAIChat,
		Model:  in.Model,
		Stream: in.Stream,
	}
	req.IncludeUsage = in.IncludeUsage()
	for i, m := range in.Messages {
		text, err := llmwire.ContentText(m.Content)
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

func toOpenAIUsage(u Usage) *llmwire.ChatUsage {
	return llmwire.NewChatUsage(u.PromptTokens, u.CompletionTokens)
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
	msg := llmwire.ChatAnswerMessage{Role: "assistant"}
	if reply.Text != "" || len(reply.ToolCalls) == 0 {
		msg.Content = &reply.Text
	}
	for _, c := range reply.ToolCalls {
		msg.ToolCalls = append(msg.ToolCalls, llmwire.ChatToolCall{ID: c.ID, Type: "function",
			Function: llmwire.ChatFunctionCall{Name: c.Name, Arguments: c.Arguments}})
	}
	return llmwire.ChatCompletion{
		ID: completionID(req), Object: "chat.completion", Created: time.Now().Unix(), Model: req.Model,
		Choices: []llmwire.ChatChoice{{Message: msg, FinishReason: finishReason(reply)}},
		Usage:   toOpenAIUsage(usage(req, reply)),
	}
}

// streamOpenAIChat writes reply as server-sent chunks: the role, the text
// in pieces, each tool call (id and name first, then its arguments in
// pieces), the finish reason, the usage when asked for, and [DONE].
func (s *Server) streamOpenAIChat(w http.ResponseWriter, r *http.Request, req Request, reply Reply) {
	ctx := r.Context()
	events := startSSE(w)

	created := time.Now().Unix()
	send := func(choices []llmwire.ChatChunkChoice, u *llmwire.ChatUsage) error {
		chunk := llmwire.ChatChunk{ID: completionID(req), Object: "chat.completion.chunk", Created: created, Model: req.Model, Choices: choices, Usage: u}
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
	delta := func(d llmwire.ChatDelta) []llmwire.ChatChunkChoice { return []llmwire.ChatChunkChoice{{Delta: d}} }

	empty := ""
	if send(delta(llmwire.ChatDelta{Role: "assistant", Content: &empty}), nil) != nil {
		return
	}
	for _, piece := range split(reply.Text, reply.Chunks) {
		if send(delta(llmwire.ChatDelta{Content: &piece}), nil) != nil {
			return
		}
	}
	if reply.StreamError != "" {
		b, _ := json.Marshal(llmwire.NewChatError("server_error", "", reply.StreamError))
		_ = events.write("", b)
		return
	}
	if reply.Hang {
		s.hang(ctx)
		return
	}
	for i, c := range reply.ToolCalls {
		index := i
		head := llmwire.ChatToolCall{Index: &index, ID: c.ID, Type: "function", Function: llmwire.ChatFunctionCall{Name: c.Name}}
		if send(delta(llmwire.ChatDelta{ToolCalls: []llmwire.ChatToolCall{head}}), nil) != nil {
			return
		}
		for _, piece := range split(c.Arguments, reply.Chunks) {
			part := llmwire.ChatToolCall{Index: &index, Function: llmwire.ChatFunctionCall{Arguments: piece}}
			if send(delta(llmwire.ChatDelta{ToolCalls: []llmwire.ChatToolCall{part}}), nil) != nil {
				return
			}
		}
	}
	reason := finishReason(reply)
	if send([]llmwire.ChatChunkChoice{{Delta: llmwire.ChatDelta{}, FinishReason: &reason}}, nil) != nil {
		return
	}
	if req.IncludeUsage {
		if send([]llmwire.ChatChunkChoice{}, toOpenAIUsage(usage(req, reply))) != nil {
			return
		}
	}
	_ = events.write("", llmwire.ChatDone)
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
	writeJSON(w, status, llmwire.NewChatError(typ, "", message))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
