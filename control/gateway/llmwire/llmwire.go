// Package llmwire declares the LLM wire formats lap's stand-in models
// speak — OpenAI chat completions, the OpenAI Responses API and Anthropic
// messages: the request fields they read, the whole answers, the stream
// chunks and events, the error bodies, and their server-sent-event
// encodings. The gateway's
// offline mock models (control/gateway/mockllm) and the scripted fake LLM
// of the end-to-end tests (e2e/fakellm) both build on it, so the formats
// are written down once, where control may import them.
//
// The official SDKs (github.com/openai/openai-go,
// github.com/anthropics/anthropic-sdk-go) are clients: their request
// types are union-typed parameter builders and their response types
// marshal every optional field, so they do not serve a server that reads
// requests and writes answers. Their tests decode what this package
// encodes with the SDKs' own types instead, which is what a harness does.
package llmwire

import (
	"encoding/json"
	"fmt"
	"io"

	"lap.dev/lap/sandboxes/protocol/sse"
)

// WriteEvent writes one server-sent event: "event: <name>" when name is
// not empty, then v as JSON on one data line, then the blank line that
// ends the event.
func WriteEvent(w io.Writer, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("marshal %T: %w", v, err)
	}
	return WriteRawEvent(w, name, b)
}

// WriteRawEvent is WriteEvent with data already encoded, e.g. OpenAI's
// closing "[DONE]"; it is encoded by lap's one SSE writer.
func WriteRawEvent(w io.Writer, name string, data []byte) error {
	buf, err := sse.AppendEvent(make([]byte, 0, len(name)+len(data)+16), sse.Event{Type: name, Data: data})
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}
