package gateway_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// Fuzz targets for the bodies the LLM gateway accepts from sandboxes, in
// every dialect, for upstream models (relayed to a fake upstream) and
// mock models (answered by lapd itself): whatever a sandbox sends, the
// gateway answers with a status below 500 and never panics. `make test`
// runs each for a bounded time; plain `go test` runs the seeds.

func fuzzGateway(f *testing.F, path string, seeds []string) {
	up := newFakeUpstream(f, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/messages") {
			jsonAnswer(200, anthropicAnswer)(w, r)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/responses") {
			jsonAnswer(200, responsesAnswer)(w, r)
			return
		}
		jsonAnswer(200, openAIAnswer)(w, r)
	})
	e := newEnv(f, up.URL)
	for _, s := range append(seeds,
		``, `{}`, `null`, `[]`, `{"model": 1}`, `{"model": "mock/"}`, `{"model": "mock/nope", "messages": []}`,
		`{"model": "mock/echo", "messages": [{"role": "user", "content": [{"type": "image"}]}]}`,
		`{"model": "mock/tools", "messages": [{"role": "tool", "content": null}], "tools": [{}]}`,
		`{"model": "mock/tools", "stream": "yes", "messages": "hi"}`,
		`{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": {"include_usage": true}}`,
		`{"model": "mock/echo", "messages": [{"role": "user", "content": "\ud800"}]`,
		"\xff{}",
		"{\"model\": \"m\xd4ck/\", \"stream\": true, \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
	) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := http.NewRequest(http.MethodPost, e.URL+path, strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+e.token)
		req.Header.Set("x-api-key", e.token)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("POST %s %q: %v", path, body, err)
		}
		out, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("POST %s %q: read answer: %v", path, body, err)
		}
		if resp.StatusCode >= 500 {
			t.Fatalf("POST %s %q = %d %s, want a status below 500", path, body, resp.StatusCode, out)
		}
	})
}

// FuzzOpenAIChat: POST /llm/v1/chat/completions.
func FuzzOpenAIChat(f *testing.F) {
	fuzzGateway(f, "/v1/chat/completions", []string{
		`{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}`,
		`{"model": "mock/tools", "messages": [{"role": "user", "content": "list"}], "tools": [{"type": "function", "function": {"name": "list_files", "parameters": {}}}]}`,
		`{"model": "mock/echo", "stream": true, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}`,
	})
}

// FuzzAnthropicMessages: POST /llm/v1/messages.
func FuzzAnthropicMessages(f *testing.F) {
	fuzzGateway(f, "/v1/messages", []string{
		`{"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}`,
		`{"model": "mock/tools", "max_tokens": 10, "stream": true, "tools": [{"name": "Bash", "input_schema": {}}], "messages": [{"role": "user", "content": [{"type": "text", "text": "list"}]}]}`,
		`{"model": "mock/echo", "system": [{"type": "text", "text": "s"}], "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": [{"type": "text", "text": "out"}]}]}]}`,
	})
}

// FuzzOpenAIResponses: POST /llm/v1/responses.
func FuzzOpenAIResponses(f *testing.F) {
	fuzzGateway(f, "/v1/responses", []string{
		`{"model": "gpt-5", "input": "hi", "max_output_tokens": 100}`,
		`{"model": "mock/tools", "stream": true, "input": [{"role": "user", "content": "list"}], "tools": [{"type": "function", "name": "exec_command", "parameters": {"type": "object", "required": ["cmd"], "properties": {"cmd": {"type": "array"}}}}]}`,
		`{"model": "mock/tools", "input": [{"type": "function_call", "call_id": "c", "name": "shell", "arguments": "{}"}, {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "a"}]}], "tools": [{"type": "web_search"}]}`,
		`{"model": "mock/echo", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}], "background": true}`,
	})
}
