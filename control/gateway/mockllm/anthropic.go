package mockllm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// anRequest is the part of an Anthropic messages request the mock models
// read.
type anRequest struct {
	Model    string `json:"model"`
	Stream   bool   `json:"stream"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	Tools []struct {
		Name        string          `json:"name"`
		InputSchema json.RawMessage `json:"input_schema"`
	} `json:"tools"`
}

type anBlock struct {
	Type      string          `json:"type"`
	Text      string          `json:"text"`
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	ToolUseID string          `json:"tool_use_id"`
	Content   json.RawMessage `json:"content"`
}

// anBlocks returns an Anthropic message content as blocks: a plain string
// is one text block.
func anBlocks(content json.RawMessage) []anBlock {
	var s string
	if json.Unmarshal(content, &s) == nil {
		return []anBlock{{Type: "text", Text: s}}
	}
	var blocks []anBlock
	_ = json.Unmarshal(content, &blocks)
	return blocks
}

// anText joins the text of blocks (a tool result's content is a string or
// text blocks).
func anText(content json.RawMessage) string {
	var b strings.Builder
	for _, bl := range anBlocks(content) {
		if bl.Type == "text" {
			b.WriteString(bl.Text)
		}
	}
	return b.String()
}

func (r anRequest) conversation(size int) conversation {
	c := conversation{model: r.Model, messages: len(r.Messages), size: size}
	for _, t := range r.Tools {
		c.tools = append(c.tools, tool{name: t.Name, schema: t.InputSchema})
	}
	names := map[string]string{} // tool_use id → tool name
	for _, m := range r.Messages {
		blocks := anBlocks(m.Content)
		if m.Role == "assistant" {
			for _, b := range blocks {
				if b.Type == "tool_use" {
					names[b.ID] = b.Name
				}
			}
			continue
		}
		var text strings.Builder
		c.results = nil
		for _, b := range blocks {
			switch b.Type {
			case "text":
				text.WriteString(b.Text)
			case "tool_result":
				c.results = append(c.results, toolResult{name: names[b.ToolUseID], output: anText(b.Content)})
			}
		}
		if len(c.results) == 0 {
			c.lastUser = text.String()
		}
	}
	return c
}

func parseAnthropic(body []byte) (anRequest, *response) {
	var req anRequest
	if err := json.Unmarshal(body, &req); err != nil {
		r := anthropicError(http.StatusBadRequest, "invalid_request_error",
			"the request body is not a JSON messages request: "+err.Error())
		return req, &r
	}
	return req, nil
}

func answerAnthropic(body []byte) response {
	req, bad := parseAnthropic(body)
	if bad != nil {
		return *bad
	}
	c := req.conversation(len(body))
	rep, err := c.reply()
	var unknown errUnknownModel
	if errors.As(err, &unknown) {
		return anthropicError(http.StatusNotFound, "not_found_error", err.Error())
	}
	a := anAnswer{
		id:     "msg_mock_" + strconv.Itoa(c.messages),
		callID: "toolu_mock_" + strconv.Itoa(c.messages),
		model:  req.Model,
		reply:  rep,
		input:  tokens(c.size),
		output: rep.outputTokens(),
	}
	if req.Stream {
		return response{status: http.StatusOK, contentType: contentSSE, body: a.stream()}
	}
	return jsonResponse(http.StatusOK, a.message())
}

func countTokensAnthropic(body []byte) response {
	req, bad := parseAnthropic(body)
	if bad != nil {
		return *bad
	}
	if _, err := (conversation{model: req.Model}).reply(); err != nil {
		return anthropicError(http.StatusNotFound, "not_found_error", err.Error())
	}
	return jsonResponse(http.StatusOK, map[string]int64{"input_tokens": tokens(len(body))})
}

// anAnswer renders one reply in the Anthropic wire format.
type anAnswer struct {
	id, callID, model string
	reply             reply
	input, output     int64
}

type anUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
}

type anContent struct {
	Type  string           `json:"type"`
	Text  *string          `json:"text,omitempty"`
	ID    string           `json:"id,omitempty"`
	Name  string           `json:"name,omitempty"`
	Input *json.RawMessage `json:"input,omitempty"`
}

type anMessage struct {
	ID           string      `json:"id"`
	Type         string      `json:"type"`
	Role         string      `json:"role"`
	Model        string      `json:"model"`
	Content      []anContent `json:"content"`
	StopReason   *string     `json:"stop_reason"`
	StopSequence *string     `json:"stop_sequence"`
	Usage        anUsage     `json:"usage"`
}

func (a anAnswer) stopReason() *string {
	reason := "end_turn"
	if a.reply.call != nil {
		reason = "tool_use"
	}
	return &reason
}

func (a anAnswer) content() []anContent {
	out := []anContent{{Type: "text", Text: &a.reply.text}}
	if call := a.reply.call; call != nil {
		input := json.RawMessage(call.args)
		out = append(out, anContent{Type: "tool_use", ID: a.callID, Name: call.name, Input: &input})
	}
	return out
}

func (a anAnswer) message() anMessage {
	return anMessage{
		ID: a.id, Type: "message", Role: "assistant", Model: a.model,
		Content:    a.content(),
		StopReason: a.stopReason(),
		Usage:      anUsage{InputTokens: a.input, OutputTokens: a.output},
	}
}

// stream renders the reply as Anthropic's server-sent events:
// message_start (with the input usage), one content block per text and
// tool call with its deltas, message_delta (stop reason, output usage),
// message_stop.
func (a anAnswer) stream() []byte {
	var b bytes.Buffer
	event := func(name string, v any) {
		j, err := json.Marshal(v)
		if err != nil {
			panic(fmt.Sprintf("mockllm: marshal %T: %v", v, err))
		}
		fmt.Fprintf(&b, "event: %s\ndata: %s\n\n", name, j)
	}
	type obj = map[string]any
	start := a.message()
	start.Content = []anContent{}
	start.StopReason = nil
	start.Usage.OutputTokens = 1
	event("message_start", obj{"type": "message_start", "message": start})
	for i, c := range a.content() {
		switch c.Type {
		case "text":
			empty := ""
			event("content_block_start", obj{"type": "content_block_start", "index": i,
				"content_block": anContent{Type: "text", Text: &empty}})
			for _, piece := range chunks(*c.Text) {
				event("content_block_delta", obj{"type": "content_block_delta", "index": i,
					"delta": obj{"type": "text_delta", "text": piece}})
			}
		case "tool_use":
			none := json.RawMessage(`{}`)
			event("content_block_start", obj{"type": "content_block_start", "index": i,
				"content_block": anContent{Type: "tool_use", ID: c.ID, Name: c.Name, Input: &none}})
			event("content_block_delta", obj{"type": "content_block_delta", "index": i,
				"delta": obj{"type": "input_json_delta", "partial_json": string(*c.Input)}})
		}
		event("content_block_stop", obj{"type": "content_block_stop", "index": i})
	}
	event("message_delta", obj{"type": "message_delta",
		"delta": obj{"stop_reason": a.stopReason(), "stop_sequence": nil},
		"usage": obj{"output_tokens": a.output}})
	event("message_stop", obj{"type": "message_stop"})
	return b.Bytes()
}

func anthropicError(status int, typ, msg string) response {
	type detail struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	return jsonResponse(status, struct {
		Type  string `json:"type"`
		Error detail `json:"error"`
	}{"error", detail{typ, msg}})
}
