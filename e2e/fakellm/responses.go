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

	"lap.dev/lap/control/gateway/llmwire"
)

// FormatOpenAIResponses is the OpenAI Responses API.
const FormatOpenAIResponses Format = "openai-responses"

// parseOpenAIResponses turns a Responses body into a Request: instructions
// and developer/system messages are system messages, function and custom
// tool calls join one assistant message, their outputs are tool messages.
func parseOpenAIResponses(body []byte) (Request, error) {
	var in llmwire.ResponsesRequest
	if err := json.Unmarshal(body, &in); err != nil {
		return Request{}, fmt.Errorf("parse request body: %w", err)
	}
	req := Request{Format: FormatOpenAIResponses, Model: in.Model, Stream: in.Stream, IncludeUsage: true}
	if in.Instructions != "" {
		req.Messages = append(req.Messages, Message{Role: "system", Text: in.Instructions})
	}
	items, err := in.Items()
	if err != nil {
		return Request{}, err
	}
	for i, it := range items {
		switch it.Type {
		case "message", "":
			text, err := llmwire.ResponsesText(it.Content)
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
			text, err := llmwire.ResponsesText(it.Output)
			if err != nil {
				return Request{}, fmt.Errorf("input[%d].output: %w", i, err)
			}
			req.Messages = append(req.Messages, Message{Role: "tool", Text: text, ToolCallID: it.CallID})
		}
		// Other items (reasoning, web search…) carry nothing a script reads.
	}
	for _, t := range in.Tools {
		if t.Name != "" {
			req.Tools = append(req.Tools, Tool{Name: t.Name, Description: t.Description, Parameters: t.Parameters})
		}
	}
	return req, nil
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

func messageID(req Request) string { return fmt.Sprintf("msg_fake%d", req.Seq) }

// responsesOutput is the reply's output items: its text as one message,
// then each tool call as a function_call.
func responsesOutput(req Request, reply Reply) []llmwire.ResponsesOutputItem {
	out := []llmwire.ResponsesOutputItem{}
	if reply.Text != "" {
		out = append(out, llmwire.NewResponsesMessage(messageID(req), reply.Text))
	}
	for _, c := range reply.ToolCalls {
		out = append(out, responsesCall(c))
	}
	return out
}

func responsesCall(c ToolCall) llmwire.ResponsesOutputItem {
	return llmwire.NewResponsesFunctionCall("fc_"+c.ID, c.ID, c.Name, c.Arguments)
}

// responsesBody is the response object, status completed.
func responsesBody(req Request, reply Reply) *llmwire.Response {
	u := usage(req, reply)
	return &llmwire.Response{
		ID: responseID(req), Object: "response", Status: "completed", Model: req.Model,
		Output: responsesOutput(req, reply),
		Usage:  llmwire.NewResponsesUsage(u.PromptTokens, u.CompletionTokens),
	}
}

func responsesObject(req Request, reply Reply) any { return responsesBody(req, reply) }

// streamOpenAIResponses streams the reply as the API does: created, then
// per output item added → deltas → done, then completed with the usage.
func (s *Server) streamOpenAIResponses(w http.ResponseWriter, r *http.Request, req Request, reply Reply) {
	ctx := r.Context()
	events := startSSE(w)
	seq := 0
	send := func(ev llmwire.ResponsesEvent) error {
		ev.SequenceNumber = seq
		seq++
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		if err := events.write(ev.Type, b); err != nil {
			return err
		}
		return s.pause(ctx, reply.ChunkDelay)
	}
	created := &llmwire.Response{ID: responseID(req), Object: "response", Status: "in_progress", Model: req.Model,
		Output: []llmwire.ResponsesOutputItem{}}
	if send(llmwire.ResponsesEvent{Type: "response.created", Response: created}) != nil {
		return
	}
	index := 0
	if reply.Text != "" || reply.Hang || reply.StreamError != "" {
		msg := llmwire.NewResponsesMessage(messageID(req), "")
		msg.Status, msg.Content = "in_progress", nil
		if send(llmwire.ResponsesEvent{Type: "response.output_item.added", OutputIndex: llmwire.Index(index), Item: &msg}) != nil {
			return
		}
		for _, piece := range split(reply.Text, reply.Chunks) {
			if send(llmwire.ResponsesEvent{Type: "response.output_text.delta", OutputIndex: llmwire.Index(index),
				ContentIndex: llmwire.Index(0), ItemID: msg.ID, Delta: piece}) != nil {
				return
			}
		}
		if reply.StreamError != "" {
			_ = send(llmwire.ResponsesEvent{Type: "response.failed", Response: &llmwire.Response{
				ID: responseID(req), Object: "response", Status: "failed", Model: req.Model, Output: []llmwire.ResponsesOutputItem{},
				Error: &llmwire.ResponsesError{Code: "server_error", Message: reply.StreamError}}})
			return
		}
		if reply.Hang {
			s.hang(ctx)
			return
		}
		done := llmwire.NewResponsesMessage(messageID(req), reply.Text)
		if send(llmwire.ResponsesEvent{Type: "response.output_item.done", OutputIndex: llmwire.Index(index), Item: &done}) != nil {
			return
		}
		index++
	}
	for _, c := range reply.ToolCalls {
		item := responsesCall(c)
		empty := ""
		item.Arguments, item.Status = &empty, "in_progress"
		if send(llmwire.ResponsesEvent{Type: "response.output_item.added", OutputIndex: llmwire.Index(index), Item: &item}) != nil {
			return
		}
		for _, piece := range split(c.Arguments, reply.Chunks) {
			if send(llmwire.ResponsesEvent{Type: "response.function_call_arguments.delta", OutputIndex: llmwire.Index(index),
				ItemID: item.ID, Delta: piece}) != nil {
				return
			}
		}
		done := responsesCall(c)
		if send(llmwire.ResponsesEvent{Type: "response.output_item.done", OutputIndex: llmwire.Index(index), Item: &done}) != nil {
			return
		}
		index++
	}
	_ = send(llmwire.ResponsesEvent{Type: "response.completed", Response: responsesBody(req, reply)})
}
