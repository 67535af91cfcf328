package mockllm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"lap.dev/lap/control/gateway/llmwire"
)

// anBlocks returns an Anthropic message content as blocks (content of
// another shape has none).
func anBlocks(content json.RawMessage) []llmwire.Block {
	blocks, _ := llmwire.Blocks(content)
	return blocks
}

// anText joins the text of blocks (a tool result's content is a string or
// text blocks).
func anText(content json.RawMessage) string {
	text, _ := llmwire.BlocksText(content)
	return text
}

func anConversation(r llmwire.MessagesRequest, size int) conversation {
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

func parseAnthropic(body []byte) (llmwire.MessagesRequest, *response) {
	var req llmwire.MessagesRequest
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
	c := anConversation(req, len(body))
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

func (a anAnswer) stopReason() *string {
	reason := "end_turn"
	if a.reply.call != nil {
		reason = "tool_use"
	}
	return &reason
}

func (a anAnswer) content() []llmwire.ContentBlock {
	out := []llmwire.ContentBlock{llmwire.TextBlock(a.reply.text)}
	if call := a.reply.call; call != nil {
		out = append(out, llmwire.ToolUseBlock(a.callID, call.name, json.RawMessage(call.args)))
	}
	return out
}

func (a anAnswer) message() llmwire.Message {
	return llmwire.Message{
		ID: a.id, Type: "message", Role: "assistant", Model: a.model,
		Content:    a.content(),
		StopReason: a.stopReason(),
		Usage:      llmwire.AnthropicUsage{InputTokens: a.input, OutputTokens: a.output},
	}
}

// stream renders the reply as Anthropic's server-sent events:
// message_start (with the input usage), one content block per text and
// tool call with its deltas, message_delta (stop reason, output usage),
// message_stop.
func (a anAnswer) stream() []byte {
	var b bytes.Buffer
	event := func(name string, v any) {
		if err := llmwire.WriteEvent(&b, name, v); err != nil {
			panic(fmt.Sprintf("mockllm: %v", err))
		}
	}
	start := a.message()
	start.Content = []llmwire.ContentBlock{}
	start.StopReason = nil
	start.Usage.OutputTokens = 1
	event("message_start", llmwire.MessageStart{Type: "message_start", Message: start})
	for i, c := range a.content() {
		switch c.Type {
		case "text":
			event("content_block_start", llmwire.ContentBlockStart{Type: "content_block_start", Index: i, ContentBlock: llmwire.TextBlock("")})
			for _, piece := range chunks(*c.Text) {
				event("content_block_delta", llmwire.TextDelta(i, piece))
			}
		case "tool_use":
			event("content_block_start", llmwire.ContentBlockStart{Type: "content_block_start", Index: i,
				ContentBlock: llmwire.ToolUseBlock(c.ID, c.Name, json.RawMessage(`{}`))})
			event("content_block_delta", llmwire.InputJSONDelta(i, string(*c.Input)))
		}
		event("content_block_stop", llmwire.ContentBlockStop{Type: "content_block_stop", Index: i})
	}
	event("message_delta", llmwire.MessageDelta{Type: "message_delta",
		Delta: llmwire.MessageDeltaStop{StopReason: a.stopReason()},
		Usage: llmwire.MessageDeltaUsage{OutputTokens: a.output}})
	event("message_stop", llmwire.MessageStop{Type: "message_stop"})
	return b.Bytes()
}

func anthropicError(status int, typ, msg string) response {
	return jsonResponse(status, llmwire.NewAnthropicError(typ, msg))
}
