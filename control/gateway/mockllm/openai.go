package mockllm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// oaRequest is the part of an OpenAI chat completions request the mock
// models read.
type oaRequest struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Messages []struct {
		Role      string          `json:"role"`
		Content   json.RawMessage `json:"content"`
		ToolCalls []struct {
			ID       string `json:"id"`
			Function struct {
				Name string `json:"name"`
			} `json:"function"`
		} `json:"tool_calls"`
		ToolCallID string `json:"tool_call_id"`
	} `json:"messages"`
	Tools []struct {
		Type     string `json:"type"`
		Function struct {
			Name       string          `json:"name"`
			Parameters json.RawMessage `json:"parameters"`
		} `json:"function"`
	} `json:"tools"`
}

// oaText returns the text of an OpenAI message content: a string or an
// array of parts, of which the text parts count.
func oaText(content json.RawMessage) string {
	var s string
	if json.Unmarshal(content, &s) == nil {
		return s
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	_ = json.Unmarshal(content, &parts)
	var b bytes.Buffer
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String()
}

func (r oaRequest) conversation(size int) conversation {
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
	var req oaRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return openAIError(http.StatusBadRequest, "invalid_request_error", "invalid_json",
			"the request body is not a JSON chat completions request: "+err.Error())
	}
	c := req.conversation(len(body))
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
		usage:   oaUsage{PromptTokens: tokens(c.size), CompletionTokens: rep.outputTokens()},
	}
	o.usage.TotalTokens = o.usage.PromptTokens + o.usage.CompletionTokens
	if req.Stream {
		return response{status: http.StatusOK, contentType: contentSSE,
			body: o.stream(req.StreamOptions != nil && req.StreamOptions.IncludeUsage)}
	}
	return jsonResponse(http.StatusOK, o.completion())
}

// oaAnswer renders one reply in the OpenAI wire format.
type oaAnswer struct {
	id, callID, model string
	created           int64
	reply             reply
	usage             oaUsage
}

type oaUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

type oaFunction struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

type oaToolCall struct {
	Index    *int       `json:"index,omitempty"` // chunks only
	ID       string     `json:"id,omitempty"`
	Type     string     `json:"type,omitempty"`
	Function oaFunction `json:"function"`
}

type oaMessage struct {
	Role      string       `json:"role,omitempty"`
	Content   *string      `json:"content,omitempty"`
	Refusal   *string      `json:"refusal,omitempty"`
	ToolCalls []oaToolCall `json:"tool_calls,omitempty"`
}

type oaChoice struct {
	Index        int        `json:"index"`
	Message      *oaMessage `json:"message,omitempty"`
	Delta        *oaMessage `json:"delta,omitempty"`
	Logprobs     *struct{}  `json:"logprobs"`
	FinishReason *string    `json:"finish_reason"`
}

type oaCompletion struct {
	ID      string     `json:"id"`
	Object  string     `json:"object"`
	Created int64      `json:"created"`
	Model   string     `json:"model"`
	Choices []oaChoice `json:"choices"`
	Usage   *oaUsage   `json:"usage,omitempty"`
}

func (o oaAnswer) finishReason() *string {
	reason := "stop"
	if o.reply.call != nil {
		reason = "tool_calls"
	}
	return &reason
}

func (o oaAnswer) completion() oaCompletion {
	msg := &oaMessage{Role: "assistant", Content: &o.reply.text}
	if call := o.reply.call; call != nil {
		msg.ToolCalls = []oaToolCall{{ID: o.callID, Type: "function",
			Function: oaFunction{Name: call.name, Arguments: call.args}}}
	}
	return oaCompletion{
		ID: o.id, Object: "chat.completion", Created: o.created, Model: o.model,
		Choices: []oaChoice{{Message: msg, FinishReason: o.finishReason()}},
		Usage:   &o.usage,
	}
}

// stream renders the reply as chat.completion.chunk events: the role, the
// text in pieces, the tool call (name, then arguments), the finish reason,
// the usage-only chunk if asked for, and [DONE].
func (o oaAnswer) stream(includeUsage bool) []byte {
	var b bytes.Buffer
	chunk := func(delta *oaMessage, finish *string) {
		c := oaCompletion{ID: o.id, Object: "chat.completion.chunk", Created: o.created, Model: o.model,
			Choices: []oaChoice{{Delta: delta, FinishReason: finish}}}
		writeData(&b, c)
	}
	empty := ""
	chunk(&oaMessage{Role: "assistant", Content: &empty}, nil)
	for _, piece := range chunks(o.reply.text) {
		chunk(&oaMessage{Content: &piece}, nil)
	}
	if call := o.reply.call; call != nil {
		zero := 0
		chunk(&oaMessage{ToolCalls: []oaToolCall{{Index: &zero, ID: o.callID, Type: "function",
			Function: oaFunction{Name: call.name}}}}, nil)
		chunk(&oaMessage{ToolCalls: []oaToolCall{{Index: &zero,
			Function: oaFunction{Arguments: call.args}}}}, nil)
	}
	chunk(&oaMessage{}, o.finishReason())
	if includeUsage {
		writeData(&b, oaCompletion{ID: o.id, Object: "chat.completion.chunk", Created: o.created, Model: o.model,
			Choices: []oaChoice{}, Usage: &o.usage})
	}
	b.WriteString("data: [DONE]\n\n")
	return b.Bytes()
}

func writeData(b *bytes.Buffer, v any) {
	j, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("mockllm: marshal %T: %v", v, err))
	}
	b.WriteString("data: ")
	b.Write(j)
	b.WriteString("\n\n")
}

func openAIError(status int, typ, code, msg string) response {
	type detail struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	}
	return jsonResponse(status, struct {
		Error detail `json:"error"`
	}{detail{Message: msg, Type: typ, Code: code}})
}
