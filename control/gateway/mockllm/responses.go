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

// respConversation reads a Responses request: function tools are offered
// tools (Codex's freeform tools, such as apply_patch, are not: they take
// no JSON arguments), function_call_output items that end the input are
// the results.
func respConversation(r llmwire.ResponsesRequest, items []llmwire.ResponsesItem, size int) conversation {
	c := conversation{model: r.Model, messages: len(items), size: size}
	for _, t := range r.Tools {
		if t.Type == "function" && t.Name != "" {
			c.tools = append(c.tools, tool{name: t.Name, schema: t.Parameters})
		}
	}
	names := map[string]string{} // call id → tool name
	for _, it := range items {
		switch it.Type {
		case "message", "":
			if it.Role == "user" {
				c.lastUser, _ = llmwire.ResponsesText(it.Content)
				c.results = nil
			} else if it.Role == "assistant" {
				c.results = nil
			}
		case "function_call", "custom_tool_call":
			names[it.CallID] = it.Name
			c.results = nil
		case "function_call_output", "custom_tool_call_output":
			out, _ := llmwire.ResponsesText(it.Output)
			c.results = append(c.results, toolResult{name: names[it.CallID], output: out})
		}
	}
	return c
}

func answerResponses(body []byte) response {
	var req llmwire.ResponsesRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return openAIError(http.StatusBadRequest, "invalid_request_error", "invalid_json",
			"the request body is not a JSON Responses API request: "+err.Error())
	}
	items, err := req.Items()
	if err != nil {
		return openAIError(http.StatusBadRequest, "invalid_request_error", "invalid_input",
			"the request's input is neither a string nor a list of items: "+err.Error())
	}
	c := respConversation(req, items, len(body))
	rep, err := c.reply()
	var unknown errUnknownModel
	if errors.As(err, &unknown) {
		return openAIError(http.StatusNotFound, "invalid_request_error", "model_not_found", err.Error())
	}
	n := strconv.Itoa(c.messages)
	r := respAnswer{
		id:      "resp_mock_" + n,
		msgID:   "msg_mock_" + n,
		callID:  "call_mock_" + n,
		model:   req.Model,
		created: time.Now().Unix(),
		reply:   rep,
		usage:   llmwire.NewResponsesUsage(tokens(c.size), rep.outputTokens()),
	}
	if req.Stream {
		return response{status: http.StatusOK, contentType: contentSSE, body: r.stream()}
	}
	return jsonResponse(http.StatusOK, r.response("completed", true))
}

// respAnswer renders one reply in the Responses wire format.
type respAnswer struct {
	id, msgID, callID, model string
	created                  int64
	reply                    reply
	usage                    *llmwire.ResponsesUsage
}

func (r respAnswer) message() llmwire.ResponsesOutputItem {
	return llmwire.NewResponsesMessage(r.msgID, r.reply.text)
}

func (r respAnswer) call() llmwire.ResponsesOutputItem {
	return llmwire.NewResponsesFunctionCall("fc_"+r.callID[len("call_"):], r.callID, r.reply.call.name, r.reply.call.args)
}

// response is the response object; done adds the output and the usage.
func (r respAnswer) response(status string, done bool) *llmwire.Response {
	resp := &llmwire.Response{ID: r.id, Object: "response", CreatedAt: r.created, Status: status, Model: r.model,
		Output: []llmwire.ResponsesOutputItem{}}
	if done {
		resp.Output = append(resp.Output, r.message())
		if r.reply.call != nil {
			resp.Output = append(resp.Output, r.call())
		}
		resp.Usage = r.usage
	}
	return resp
}

// stream renders the reply as response.* events: created; the message
// (added, its text in pieces, done); the function call if any (added,
// its arguments, done); completed with the usage.
func (r respAnswer) stream() []byte {
	var b bytes.Buffer
	s := llmwire.NewResponsesStream(&b)
	send := func(ev llmwire.ResponsesEvent) {
		if err := s.Send(ev); err != nil {
			panic(fmt.Sprintf("mockllm: %v", err))
		}
	}
	send(llmwire.ResponsesEvent{Type: "response.created", Response: r.response("in_progress", false)})
	msg := r.message()
	msg.Status, msg.Content = "in_progress", nil
	send(llmwire.ResponsesEvent{Type: "response.output_item.added", OutputIndex: llmwire.Index(0), Item: &msg})
	for _, piece := range chunks(r.reply.text) {
		send(llmwire.ResponsesEvent{Type: "response.output_text.delta", OutputIndex: llmwire.Index(0),
			ContentIndex: llmwire.Index(0), ItemID: r.msgID, Delta: piece})
	}
	done := r.message()
	send(llmwire.ResponsesEvent{Type: "response.output_item.done", OutputIndex: llmwire.Index(0), Item: &done})
	if r.reply.call != nil {
		call := r.call()
		empty := ""
		call.Status, call.Arguments = "in_progress", &empty
		send(llmwire.ResponsesEvent{Type: "response.output_item.added", OutputIndex: llmwire.Index(1), Item: &call})
		send(llmwire.ResponsesEvent{Type: "response.function_call_arguments.delta", OutputIndex: llmwire.Index(1),
			ItemID: call.ID, Delta: r.reply.call.args})
		done := r.call()
		send(llmwire.ResponsesEvent{Type: "response.output_item.done", OutputIndex: llmwire.Index(1), Item: &done})
	}
	send(llmwire.ResponsesEvent{Type: "response.completed", Response: r.response("completed", true)})
	return b.Bytes()
}
