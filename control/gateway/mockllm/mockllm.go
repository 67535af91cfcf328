// Package mockllm is lap's offline demo LLM: models named mock/<name>,
// answered in-process with no upstream, in the OpenAI chat completions,
// OpenAI Responses and Anthropic messages wire formats, streamed and not. Answers are
// deterministic (the same request gets the same answer) and carry usage
// estimates, so the gateway's usage, cost and budget paths work offline.
//
//   - mock/echo answers with the text of the last user message.
//   - mock/tools calls a file-listing tool the request offers (the lap
//     harness's list_files, else a shell — bash/Bash, or Codex's
//     exec_command, shell_command or shell — with `ls`, else glob/Glob
//     with `*`, else list/LS), and once the tool result comes back,
//     answers with what the tool returned.
//
// The gateway reaches it as an http.RoundTripper (Transport), so mock
// answers go through exactly the same relay, usage and streaming code as
// upstream answers; Handler serves the same answers over real HTTP.
package mockllm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Prefix marks the models this package answers.
const Prefix = "mock/"

// The mock models.
const (
	Echo  = "mock/echo"
	Tools = "mock/tools"
)

// Models returns the names of every mock model, in a stable order.
func Models() []string { return []string{Echo, Tools} }

// IsMock reports whether model is to be answered by this package (it may
// still be an unknown mock model, which gets a 404 naming the known ones).
func IsMock(model string) bool { return strings.HasPrefix(model, Prefix) }

// Transport answers requests for mock models in-process, as if it were an
// upstream LLM API: POST …/v1/chat/completions, …/v1/responses,
// …/v1/messages and
// …/v1/messages/count_tokens, GET …/v1/models. Only the path's suffix
// matters, so any base URL works.
type Transport struct{}

var _ http.RoundTripper = Transport{}

// RoundTrip answers req. It fails only if req's body cannot be read; a bad
// request gets an error response in the request's wire format.
func (Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("read mock request: %w", err)
		}
		body = b
	}
	a := answer(req.Method, req.URL.Path, body)
	return &http.Response{
		Status:        strconv.Itoa(a.status) + " " + http.StatusText(a.status),
		StatusCode:    a.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {a.contentType}},
		Body:          io.NopCloser(bytes.NewReader(a.body)),
		ContentLength: int64(len(a.body)),
		Request:       req,
	}, nil
}

// Handler serves the mock models over HTTP, e.g. as a stand-in upstream
// in tests of programs that talk to an LLM API.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "read request: "+err.Error(), http.StatusBadRequest)
			return
		}
		a := answer(r.Method, r.URL.Path, body)
		w.Header().Set("Content-Type", a.contentType)
		w.WriteHeader(a.status)
		w.Write(a.body)
	})
}

// response is one whole mock answer.
type response struct {
	status      int
	contentType string
	body        []byte
}

const (
	contentJSON = "application/json"
	contentSSE  = "text/event-stream"
)

func answer(method, path string, body []byte) response {
	switch {
	case strings.HasSuffix(path, "/v1/chat/completions") && method == http.MethodPost:
		return answerOpenAI(body)
	case strings.HasSuffix(path, "/v1/responses") && method == http.MethodPost:
		return answerResponses(body)
	case strings.HasSuffix(path, "/v1/messages") && method == http.MethodPost:
		return answerAnthropic(body)
	case strings.HasSuffix(path, "/v1/messages/count_tokens") && method == http.MethodPost:
		return countTokensAnthropic(body)
	case strings.HasSuffix(path, "/v1/models") && method == http.MethodGet:
		return listModels()
	}
	return openAIError(http.StatusNotFound, "invalid_request_error", "not_found",
		fmt.Sprintf("the mock LLM does not serve %s %s", method, path))
}

func listModels() response {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list"}
	for _, m := range Models() {
		list.Data = append(list.Data, model{ID: m, Object: "model", OwnedBy: "lap"})
	}
	return jsonResponse(http.StatusOK, list)
}

func jsonResponse(status int, v any) response {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own plain structs are marshalled here.
		panic(fmt.Sprintf("mockllm: marshal %T: %v", v, err))
	}
	return response{status: status, contentType: contentJSON, body: b}
}

// conversation is what a mock model needs to know about a request,
// whichever wire format it came in.
type conversation struct {
	model string
	// lastUser is the text of the last user message.
	lastUser string
	// results are the tool results that end the conversation, if it ends
	// with them (the model's previous answer was a tool call).
	results []toolResult
	tools   []tool
	// messages counts the request's messages; it makes ids deterministic
	// and unique within one conversation.
	messages int
	// size is the request's size in bytes, for the input token estimate.
	size int
}

type tool struct {
	name   string
	schema json.RawMessage
}

type toolResult struct {
	name, output string
}

// reply is a mock model's answer, whichever wire format it goes out in.
type reply struct {
	text string
	call *toolCall
}

type toolCall struct {
	name string
	args string // JSON object
}

// errUnknownModel is answered with 404.
type errUnknownModel string

func (e errUnknownModel) Error() string {
	return fmt.Sprintf("model %s does not exist; the mock models are %s", string(e), strings.Join(Models(), ", "))
}

func (c conversation) reply() (reply, error) {
	switch c.model {
	case Echo:
		if strings.TrimSpace(c.lastUser) == "" {
			return reply{text: "(mock/echo: the last user message has no text)"}, nil
		}
		return reply{text: c.lastUser}, nil
	case Tools:
		if len(c.results) > 0 {
			var b strings.Builder
			for i, r := range c.results {
				if i > 0 {
					b.WriteString("\n\n")
				}
				fmt.Fprintf(&b, "The %s tool returned:\n\n%s", r.name, r.output)
			}
			return reply{text: b.String()}, nil
		}
		if call, ok := listFilesCall(c.tools); ok {
			return reply{text: "I'll list the files with " + call.name + ".", call: &call}, nil
		}
		return reply{text: "mock/tools: this request offers no tool to list files (list_files, a shell, glob or list), " +
			"so I can only repeat your message: " + c.lastUser}, nil
	}
	return reply{}, errUnknownModel(c.model)
}

// listTools are the file-listing tools mock/tools looks for, best first
// (names compared case-insensitively): the lap harness's, then the shells
// of Claude Code and opencode (bash) and of Codex (exec_command,
// shell_command or shell, depending on its version and model), then the
// other listing tools of Claude Code and opencode.
var listTools = []string{"list_files", "bash", "exec_command", "shell_command", "shell", "glob", "list", "ls"}

// listFilesCall picks the best offered file-listing tool and the arguments
// to call it with.
func listFilesCall(offered []tool) (toolCall, bool) {
	best := -1
	var pick tool
	for _, t := range offered {
		i := slices.Index(listTools, strings.ToLower(t.name))
		if i >= 0 && (best < 0 || i < best) {
			best, pick = i, t
		}
	}
	if best < 0 {
		return toolCall{}, false
	}
	args, err := json.Marshal(argsFor(pick))
	if err != nil {
		panic(fmt.Sprintf("mockllm: marshal tool arguments: %v", err))
	}
	return toolCall{name: pick.name, args: string(args)}, true
}

// argValues are the arguments a file listing needs, by parameter name.
var argValues = map[string]any{
	"command":     "ls",
	"cmd":         "ls", // Codex's exec_command
	"description": "List the files in the working directory",
	"pattern":     "*",
	"glob":        "*",
	"path":        ".",
	"dir":         ".",
	"directory":   ".",
	"root":        ".",
	"cwd":         ".",
}

// argsFor fills t's required parameters (and a description, which some
// shells' tools want) from its JSON schema: known names get the values of a
// file listing, others the zero value of their type. A tool whose schema
// names no parameters is called with what its name suggests.
func argsFor(t tool) map[string]any {
	var schema struct {
		Properties map[string]struct {
			Type any `json:"type"`
		} `json:"properties"`
		Required []string `json:"required"`
	}
	_ = json.Unmarshal(t.schema, &schema) // a tool with an odd schema still gets called
	args := map[string]any{}
	if len(schema.Properties) == 0 {
		switch strings.ToLower(t.name) {
		case "bash", "shell_command":
			args["command"] = argValues["command"]
		case "exec_command":
			args["cmd"] = argValues["cmd"]
		case "shell":
			args["command"] = []any{argValues["command"]}
		case "glob":
			args["pattern"] = argValues["pattern"]
		case "list", "ls":
			args["path"] = argValues["path"]
		}
		return args
	}
	for name, p := range schema.Properties {
		if !slices.Contains(schema.Required, name) && name != "description" {
			continue
		}
		typ, _ := p.Type.(string)
		if v, ok := argValues[strings.ToLower(name)]; ok {
			if typ == "array" {
				// Codex's shell takes its command as argv.
				v = []any{v}
			}
			args[name] = v
			continue
		}
		switch typ {
		case "boolean":
			args[name] = false
		case "integer", "number":
			args[name] = 0
		case "array":
			args[name] = []any{}
		case "object":
			args[name] = map[string]any{}
		default:
			args[name] = ""
		}
	}
	return args
}

// tokens estimates a token count from a byte count (about four bytes a
// token for English and code), at least 1.
func tokens(n int) int64 { return max(1, int64(n+3)/4) }

func (r reply) outputTokens() int64 {
	n := len(r.text)
	if r.call != nil {
		n += len(r.call.name) + len(r.call.args)
	}
	return tokens(n)
}

// chunks splits text into deltas of a few words, so a streamed mock answer
// arrives in pieces like a real one. Deterministic; never splits a rune.
func chunks(text string) []string {
	const size = 24
	var out []string
	start := 0
	for i, r := range text {
		if (r == ' ' || r == '\n') && i+1-start >= size {
			out = append(out, text[start:i+1])
			start = i + 1
		}
	}
	if start < len(text) {
		out = append(out, text[start:])
	}
	return out
}
