package mockllm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"lap.dev/lap/control/gateway/llmwire"
)

// oaText is the text of an OpenAI message content (text parts only;
// content of another shape counts as none).
func oaText(content json.RawMessage) string {
	text, _ := llmwire.ContentText(content)
	return text
}

func oaConversation(r llmwire.ChatRequest, size int) conversation {
	c := conversation{model: r.Model, messages: len(r.Messages), size: size}
	for _, t := range r.Tools {
		if t.Type == "function" || t.Type == "" {
			c.tools = append(c.tools, tool{name: t.Function.Name, schema: t.Function.Parameters})
		}
	}
	names := map[string]string{} // tool call id → tool name
	for _, m := range r.Messages {
		switch m.Role {
		case "user":
			c.lastUser = oaText(m.Content)
			c.results = nil
		case "assistant":
			c.results = nil
			for _, tc := range m.ToolCalls {
				names[tc.ID] = tc.Function.Name
			}
		case "tool":
			c.results = append(c.results, toolResult{name: names[m.ToolCallID], output: oaText(m.Content)})
		}
	}
	return c
}

func answerOpenAI(body []byte) response {
	var req llmwire.ChatRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return openAIError(http.StatusBadRequest, "invalid_request_error", "invalid_json",
			"the request body is not a JSON chat completions request: "+err.Error())
	}
	c := oaConversation(req, len(body))
	rep, err := c.reply()
	var unknown errUnknownModel
	if errors.As(err, &unknown) {
		return openAIError(http.StatusNotFound, "invalid_request_error", "model_not_found", err.Error())
	}
	o := oaAnswer{
		id:      "chatcmpl-mock-" + strconv.Itoa(c.messages),
		callID:  "call_mock_" + strconv.Itoa(c.messages),
		model:   req.Model,
		created: time.Now().Unix(),
		reply:   rep,
		usage:   llmwire.NewChatUsage(tokens(c.size), rep.outputTokens()),
	}
	if req.Stream {
		return response{status: http.StatusOK, contentType: contentSSE, body: o.stream(req.IncludeUsage())}
	}
	return jsonResponse(http.StatusOK, o.completion())
}

// oaAnswer renders one reply in the OpenAI wire format.
type oaAnswer struct {
	id, callID, model string
	created           int64
	reply             reply
	usage             *llmwire.ChatUsage
}

func (o oaAnswer) finishReason() *string {
	reason := "stop"
	if o.reply.call != nil {
		reason = "tool_calls"
	}
	return &reason
}

func (o oaAnswer) completion() llmwire.ChatCompletion {
	msg := llmwire.ChatAnswerMessage{Role: "assistant", Content: &o.reply.text}
	if call := o.reply.call; call != nil {
		msg.ToolCalls = []llmwire.ChatToolCall{{ID: o.callID, Type: "function",
			Function: llmwire.ChatFunctionCall{Name: call.name, Arguments: call.args}}}
	}
	return llmwire.ChatCompletion{
		ID: o.id, Object: "chat.completion", Created: o.created, Model: o.model,
		Choices: []llmwire.ChatChoice{{Message: msg, FinishReason: *o.finishReason()}},
		Usage:   o.usage,
	}
}

// stream renders the reply as chat.completion.chunk events: the role, the
// text in pieces, the tool call (name, then arguments), the finish reason,
// the usage-only chunk if asked for, and [DONE].
func (o oaAnswer) stream(includeUsage bool) []byte {
	var b bytes.Buffer
	send := func(c llmwire.ChatChunk) {
		c.ID, c.Object, c.Created, c.Model = o.id, "chat.completion.chunk", o.created, o.model
		if err := llmwire.WriteEvent(&b, "", c); err != nil {
			panic(fmt.Sprintf("mockllm: %v", err))
		}
	}
	chunk := func(delta llmwire.ChatDelta, finish *string) {
		send(llmwire.ChatChunk{Choices: []llmwire.ChatChunkChoice{{Delta: delta, FinishReason: finish}}})
	}
	empty := ""
	chunk(llmwire.ChatDelta{Role: "assistant", Content: &empty}, nil)
	for _, piece := range chunks(o.reply.text) {
		chunk(llmwire.ChatDelta{Content: &piece}, nil)
	}
	if call := o.reply.call; call != nil {
		zero := 0
		chunk(llmwire.ChatDelta{ToolCalls: []llmwire.ChatToolCall{{Index: &zero, ID: o.callID, Type: "function",
			Function: llmwire.ChatFunctionCall{Name: call.name}}}}, nil)
		chunk(llmwire.ChatDelta{ToolCalls: []llmwire.ChatToolCall{{Index: &zero,
			Function: llmwire.ChatFunctionCall{Arguments: call.args}}}}, nil)
	}
	chunk(llmwire.ChatDelta{}, o.finishReason())
	if includeUsage {
		send(llmwire.ChatChunk{Choices: []llmwire.ChatChunkChoice{}, Usage: o.usage})
	}
	_ = llmwire.WriteRawEvent(&b, "", llmwire.ChatDone)
	return b.Bytes()
}

func openAIError(status int, typ, code, msg string) response {
	return jsonResponse(status, llmwire.NewChatError(typ, code, msg))
}
