package fakellm

// The OpenAI Responses wire format (POST /v1/responses), which Codex
// speaks (it refuses wire_api = "chat"): request parsing into the neutral
// Request, and answers as a response object or as a text/event-stream of
// response.* events. Function tools and Codex's custom (freeform) tools are
// both offered as Tools; their calls come back as function_call items.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// FormatOpenAIResponses is the OpenAI Responses API.
const FormatOpenAIResponses Format = "openai-responses"

// responsesRequest is the part of a Responses request the fake reads.
type responsesRequest struct {
	Model        string            `json:"model"`
	Stream       bool              `json:"stream"`
	Instructions string            `json:"instructions"`
	Input        json.RawMessage   `json:"input"`
	Tools        []json.RawMessage `json:"tools"`
}

// responsesItem is one input item: a message, a call or a call's output.
type responsesItem struct {
	Type      string          `json:"type"`
	Role      string          `json:"role"`
	Content   json.RawMessage `json:"content"`
	CallID    string          `json:"call_id"`
	Name      string          `json:"name"`
	Arguments string          `json:"arguments"`
	Input     string          `json:"input"` // custom_tool_call
	Output    json.RawMessage `json:"output"`
}

// parseOpenAIResponses turns a Responses body into a Request: instructions
// and developer/system messages are system messages, function and custom
// tool calls join one assistant message, their outputs are tool messages.
func parseOpenAIResponses(body []byte) (Request, error) {
	var in responsesRequest
	if err := json.Unmarshal(body, &in); err != nil {
		return Request{}, fmt.Errorf("parse request body: %w", err)
	}
	req := Request{Format: FormatOpenAIResponses, Model: in.Model, Stream: in.Stream, IncludeUsage: true}
	if in.Instructions != "" {
		req.Messages = append(req.Messages, Message{Role: "system", Text: in.Instructions})
	}
	var items []responsesItem
	if len(in.Input) > 0 && in.Input[0] == '"' {
		var text string
		if err := json.Unmarshal(in.Input, &text); err != nil {
			return Request{}, fmt.Errorf("input: %w", err)
		}
		items = []responsesItem{{Type: "message", Role: "user", Content: in.Input}}
	} else if len(in.Input) > 0 {
		if err := json.Unmarshal(in.Input, &items); err != nil {
			return Request{}, fmt.Errorf("input: %w", err)
		}
	}
	for i, it := range items {
		switch it.Type {
		case "message", "":
			text, err := responsesText(it.Content)
			if err != nil {
				return Request{}, fmt.Errorf("input[%d].content: %w", i, err)
			}
			role := it.Role
			if role == "developer" {
				role = "system"
			}
			req.Messages = append(req.Messages, Message{Role: role, Text: text})
		case "function_call", "custom_tool_call":
			args := it.Arguments
			if it.Type == "custom_tool_call" {
				args = it.Input
			}
			call := ToolCall{ID: it.CallID, Name: it.Name, Arguments: args}
			if n := len(req.Messages); n > 0 && req.Messages[n-1].Role == "assistant" {
				req.Messages[n-1].ToolCalls = append(req.Messages[n-1].ToolCalls, call)
			} else {
				req.Messages = append(req.Messages, Message{Role: "assistant", ToolCalls: []ToolCall{call}})
			}
		case "function_call_output", "custom_tool_call_output":
			text, err := responsesText(it.Output)
			if err != nil {
				return Request{}, fmt.Errorf("input[%d].output: %w", i, err)
			}
			req.Messages = append(req.Messages, Message{Role: "tool", Text: text, ToolCallID: it.CallID})
		}
		// Other items (reasoning, web search…) carry nothing a script reads.
	}
	for _, raw := range in.Tools {
		var t struct {
			Type        string          `json:"type"`
			Name        string          `json:"name"`
			Description string          `json:"description"`
			Parameters  json.RawMessage `json:"parameters"`
		}
		if err := json.Unmarshal(raw, &t); err != nil {
			return Request{}, fmt.Errorf("tools: %w", err)
		}
		if t.Name != "" {
			req.Tools = append(req.Tools, Tool{Name: t.Name, Description: t.Description, Parameters: t.Parameters})
		}
	}
	return req, nil
}

// responsesText reads content that is a string, null or an array of parts
// (input_text, output_text…), joining the parts' text.
func responsesText(raw json.RawMessage) (string, error) {
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
		return "", fmt.Errorf("neither a string nor an array of parts")
	}
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(p.Text)
	}
	return b.String(), nil
}

var openAIResponses = wire{
	format: FormatOpenAIResponses,
	parse:  parseOpenAIResponses,
	check:  func([]Message) error { return nil },
	fail:   writeOpenAIError,
	whole:  responsesObject,
	stream: (*Server).streamOpenAIResponses,
}

func responseID(req Request) string { return fmt.Sprintf("resp_fake%d", req.Seq) }

// responsesOutput is the reply's output items: its text as one message,
// then each tool call as a function_call.
func responsesOutput(req Request, reply Reply) []map[string]any {
	var out []map[string]any
	if reply.Text != "" {
		out = append(out, responsesMessage(req, reply.Text))
	}
	for _, c := range reply.ToolCalls {
		out = append(out, responsesCall(c))
	}
	return out
}

func responsesMessage(req Request, text string) map[string]any {
	return map[string]any{
		"type": "message", "id": fmt.Sprintf("msg_fake%d", req.Seq), "status": "completed", "role": "assistant",
		"content": []any{map[string]any{"type": "output_text", "text": text, "annotations": []any{}}},
	}
}

func responsesCall(c ToolCall) map[string]any {
	return map[string]any{"type": "function_call", "id": "fc_" + c.ID, "call_id": c.ID, "name": c.Name, "arguments": c.Arguments, "status": "completed"}
}

// responsesBody is the response object, status completed.
func responsesBody(req Request, reply Reply) map[string]any {
	u := usage(req, reply)
	return map[string]any{
		"id": responseID(req), "object": "response", "status": "completed", "model": req.Model,
		"output": responsesOutput(req, reply),
		"usage": map[string]any{
			"input_tokens": u.PromptTokens, "output_tokens": u.CompletionTokens,
			"total_tokens":          u.PromptTokens + u.CompletionTokens,
			"input_tokens_details":  map[string]any{"cached_tokens": 0},
			"output_tokens_details": map[string]any{"reasoning_tokens": 0},
		},
	}
}

func responsesObject(req Request, reply Reply) any { return responsesBody(req, reply) }

// streamOpenAIResponses streams the reply as the API does: created, then
// per output item added → deltas → done, then completed with the usage.
func (s *Server) streamOpenAIResponses(w http.ResponseWriter, r *http.Request, req Request, reply Reply) {
	ctx := r.Context()
	events := startSSE(w)
	seq := 0
	send := func(event string, data map[string]any) error {
		data["type"] = event
		data["sequence_number"] = seq
		seq++
		b, err := json.Marshal(data)
		if err != nil {
			return err
		}
		if err := events.write(event, b); err != nil {
			return err
		}
		return s.pause(ctx, reply.ChunkDelay)
	}
	created := map[string]any{"id": responseID(req), "object": "response", "status": "in_progress", "model": req.Model, "output": []any{}}
	if send("response.created", map[string]any{"response": created}) != nil {
		return
	}
	index := 0
	if reply.Text != "" || reply.Hang || reply.StreamError != "" {
		msg := responsesMessage(req, "")
		msg["status"], msg["content"] = "in_progress", []any{}
		if send("response.output_item.added", map[string]any{"output_index": index, "item": msg}) != nil {
			return
		}
		for _, piece := range split(reply.Text, reply.Chunks) {
			if send("response.output_text.delta", map[string]any{"output_index": index, "content_index": 0, "item_id": msg["id"], "delta": piece}) != nil {
				return
			}
		}
		if reply.StreamError != "" {
			_ = send("response.failed", map[string]any{"response": map[string]any{"id": responseID(req), "status": "failed",
				"error": map[string]any{"code": "server_error", "message": reply.StreamError}}})
			return
		}
		if reply.Hang {
			s.hang(ctx)
			return
		}
		if send("response.output_item.done", map[string]any{"output_index": index, "item": responsesMessage(req, reply.Text)}) != nil {
			return
		}
		index++
	}
	for _, c := range reply.ToolCalls {
		item := responsesCall(c)
		item["arguments"], item["status"] = "", "in_progress"
		if send("response.output_item.added", map[string]any{"output_index": index, "item": item}) != nil {
			return
		}
		for _, piece := range split(c.Arguments, reply.Chunks) {
			if send("response.function_call_arguments.delta", map[string]any{"output_index": index, "item_id": item["id"], "delta": piece}) != nil {
				return
			}
		}
		if send("response.output_item.done", map[string]any{"output_index": index, "item": responsesCall(c)}) != nil {
			return
		}
		index++
	}
	_ = send("response.completed", map[string]any{"response": responsesBody(req, reply)})
}
