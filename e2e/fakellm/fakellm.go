// Package fakellm is a scripted stand-in for an LLM API, for tests anywhere
// in lap. It is a real HTTP server on loopback that speaks the wire formats of
// the OpenAI chat-completions API (POST /v1/chat/completions) and the
// Anthropic Messages API (POST /v1/messages), streamed and not, with tool
// calls and usage, answers each request from a per-test script, and records
// every request (headers, raw body and a parsed, format-neutral view) for
// assertions.
//
// A script is a queue of Replies consumed one per request (Enqueue), a
// Responder function consulted when the queue is empty (Respond), or both.
// A Reply says what the "model" does: answer with text, call tools, fail
// with an HTTP status, or hang until the client gives up.
//
// The package is split by wire format: this file holds everything neutral
// (Server, Reply, Request, Message, the script); openai.go parses OpenAI
// chat-completions requests into a Request and writes a Reply in that
// format, anthropic.go does the same for the Messages API. Another format
// is added as one more file with a wire (a parser to Request and a writer of
// Reply) served from routes, reusing the script and the recording unchanged.
package fakellm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"lap.dev/lap/control/gateway/llmwire"
)

// Format names the wire format a request arrived in.
type Format string

// Wire formats the fake speaks.
const (
	FormatOpenAIChat        Format = "openai-chat"
	FormatAnthropicMessages Format = "anthropic-messages"
)

// Reply is what the fake model does with one request.
type Reply struct {
	// Text is the assistant's answer (may be empty when calling tools).
	Text string
	// ToolCalls are tool calls the model makes, after its text.
	ToolCalls []ToolCall

	// Status, when ≥ 400, makes the request fail with this HTTP status and
	// Error as the message (default: the status text). Nothing else of
	// the reply is used.
	Status int
	Error  string
	// Header is added to the response, e.g. {"Retry-After": "1"}.
	Header map[string]string

	// Hang makes the fake block until the client cancels the request (or
	// the server is closed), after streaming Text when the request is
	// streamed. Use it to test aborts and timeouts.
	Hang bool
	// StreamError, when set on a streamed request, is sent as an error
	// event after Text, the way OpenAI reports a failure mid-stream.
	StreamError string

	// Chunks is how many pieces Text and each tool call's arguments are
	// split into when streamed (default 3).
	Chunks int
	// ChunkDelay is waited between streamed chunks (default none).
	ChunkDelay time.Duration
	// Usage overrides the token counts (default: words in and out).
	Usage *Usage
	// FinishReason overrides "stop" / "tool_calls".
	FinishReason string
}

// ToolCall is one call of a tool by the model.
type ToolCall struct {
	// ID is the call id; Reply leaves it empty to get "call_<n>".
	ID   string `json:"id"`
	Name string `json:"name"`
	// Arguments is the JSON text of the arguments, as on the wire. It is
	// not checked, so a test can send malformed arguments.
	Arguments string `json:"arguments"`
}

// Usage counts tokens of one completion.
type Usage struct {
	PromptTokens     int64
	CompletionTokens int64
}

// Text returns a reply answering with s.
func Text(s string) Reply { return Reply{Text: s} }

// Call returns a tool call of name with args marshalled to JSON. A string
// or json.RawMessage args is used verbatim.
func Call(name string, args any) ToolCall {
	var raw string
	switch a := args.(type) {
	case string:
		raw = a
	case json.RawMessage:
		raw = string(a)
	case nil:
		raw = "{}"
	default:
		b, err := json.Marshal(a)
		if err != nil {
			panic(fmt.Sprintf("fakellm: marshal arguments of %s: %v", name, err))
		}
		raw = string(b)
	}
	return ToolCall{Name: name, Arguments: raw}
}

// CallTool returns a reply that calls one tool.
func CallTool(name string, args any) Reply {
	return Reply{ToolCalls: []ToolCall{Call(name, args)}}
}

// CallTools returns a reply that calls several tools at once.
func CallTools(calls ...ToolCall) Reply { return Reply{ToolCalls: calls} }

// Fail returns a reply that fails with the HTTP status and message.
func Fail(status int, message string) Reply { return Reply{Status: status, Error: message} }

// Hang returns a reply that never answers until the request is cancelled.
func Hang() Reply { return Reply{Hang: true} }

// Responder answers a request that the queue does not. It is called with
// the parsed request and may inspect the conversation to decide; calls for
// concurrent requests may overlap.
type Responder func(Request) Reply

// Request is one recorded request.
type Request struct {
	// Seq is the request's position, 1-based, over the server's life.
	Seq    int
	Format Format
	Method string
	Path   string
	Header http.Header
	// Body is the raw request body.
	Body []byte

	Model  string
	Stream bool
	// IncludeUsage is stream_options.include_usage.
	IncludeUsage bool
	// Messages is the conversation, system messages included, in order.
	Messages []Message
	// Tools are the tools offered to the model.
	Tools []Tool
}

// Message is one message of a conversation, whatever the wire format.
type Message struct {
	// Role is "system", "user", "assistant" or "tool" (a tool result).
	Role string
	// Text is the text content, parts joined.
	Text string
	// ToolCalls are the calls an assistant message made.
	ToolCalls []ToolCall
	// ToolCallID is the call a tool message answers.
	ToolCallID string
}

// Tool is a tool offered to the model.
type Tool struct {
	Name        string
	Description string
	// Parameters is the JSON schema of the arguments.
	Parameters json.RawMessage
}

// Last returns the last message of the conversation.
func (r Request) Last() Message {
	if len(r.Messages) == 0 {
		return Message{}
	}
	return r.Messages[len(r.Messages)-1]
}

// LastUserText returns the text of the last user message.
func (r Request) LastUserText() string {
	for _, m := range slices.Backward(r.Messages) {
		if m.Role == "user" {
			return m.Text
		}
	}
	return ""
}

// SystemText returns the system messages joined by newlines.
func (r Request) SystemText() string {
	var s []string
	for _, m := range r.Messages {
		if m.Role == "system" {
			s = append(s, m.Text)
		}
	}
	return strings.Join(s, "\n")
}

// ToolResult returns the result the conversation holds for the call id.
func (r Request) ToolResult(callID string) (string, bool) {
	for _, m := range r.Messages {
		if m.Role == "tool" && m.ToolCallID == callID {
			return m.Text, true
		}
	}
	return "", false
}

// Contains reports whether any message's text contains s.
func (r Request) Contains(s string) bool {
	return slices.ContainsFunc(r.Messages, func(m Message) bool { return strings.Contains(m.Text, s) })
}

// ToolNames returns the names of the offered tools.
func (r Request) ToolNames() []string {
	names := make([]string, len(r.Tools))
	for i, t := range r.Tools {
		names[i] = t.Name
	}
	return names
}

// Server is the fake LLM API. Its methods are safe for concurrent use.
type Server struct {
	mux *http.ServeMux

	mu        sync.Mutex
	queue     []Reply
	responder Responder
	requests  []Request
	calls     int // tool calls handed out, for ids
	changed   chan struct{}

	done     chan struct{}
	doneOnce sync.Once
	srv      *http.Server
	url      string
}

// New returns a fake with an empty script. It is an http.Handler; Start
// (or the package-level Start) serves it on loopback.
func New() *Server {
	s := &Server{
		mux:     http.NewServeMux(),
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.routes()
	return s
}

// routes registers every wire format's endpoints. Paths are matched by
// suffix as well, so the fake works under any base path (e.g. /llm/v1).
func (s *Server) routes() {
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/chat/completions"):
			s.serve(w, r, openAIChat)
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/responses"):
			s.serve(w, r, openAIResponses) // responses.go
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/messages/count_tokens"):
			s.serveAnthropicCountTokens(w, r)
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/messages"):
			s.serve(w, r, anthropicMessages)
		case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/models"):
			s.serveOpenAIModels(w, r)
		default:
			writeOpenAIError(w, http.StatusNotFound, fmt.Sprintf("fakellm: no route for %s %s", r.Method, r.URL.Path), nil)
		}
	})
}

// Start returns a fake serving on 127.0.0.1 that is closed when tb ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s := New()
	if err := s.Start(); err != nil {
		tb.Fatalf("start fake LLM: %v", err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Start serves the fake on a free port of 127.0.0.1.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.url = "http://" + ln.Addr().String()
	go func() { _ = s.srv.Serve(ln) }()
	return nil
}

// URL is the fake's root URL, e.g. http://127.0.0.1:41234. Clients that
// want the OpenAI base URL append /v1.
func (s *Server) URL() string { return s.url }

// Close stops the server and releases every hanging request.
func (s *Server) Close() {
	s.doneOnce.Do(func() { close(s.done) })
	if s.srv != nil {
		_ = s.srv.Close()
	}
}

// ServeHTTP serves the fake's API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Enqueue appends replies to the script's queue; each request takes the
// first one left.
func (s *Server) Enqueue(replies ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queue = append(s.queue, replies...)
}

// Respond sets the function that answers requests once the queue is
// empty. With neither, a request fails with 500 and a message saying the
// script ran out.
func (s *Server) Respond(fn Responder) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.responder = fn
}

// Pending returns how many queued replies are still unused.
func (s *Server) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// Requests returns every request received so far, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// WaitForRequests waits until at least n requests have arrived and returns
// them all, or returns ctx's error.
func (s *Server) WaitForRequests(ctx context.Context, n int) ([]Request, error) {
	for {
		s.mu.Lock()
		if len(s.requests) >= n {
			reqs := slices.Clone(s.requests)
			s.mu.Unlock()
			return reqs, nil
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return s.Requests(), fmt.Errorf("wait for %d LLM requests: %w", n, ctx.Err())
		}
	}
}

// record stores req, gives it its Seq and, when valid, picks its reply
// from the script. An invalid request uses up no reply.
func (s *Server) record(req Request, valid bool) (Request, Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	req.Seq = len(s.requests) + 1
	s.requests = append(s.requests, req)
	close(s.changed)
	s.changed = make(chan struct{})

	var reply Reply
	switch {
	case !valid:
		return req, reply
	case len(s.queue) > 0:
		reply = s.queue[0]
		s.queue = s.queue[1:]
	case s.responder != nil:
		// Outside the lock, so a responder may use the server (e.g.
		// look at earlier requests).
		responder := s.responder
		s.mu.Unlock()
		reply = responder(req)
		s.mu.Lock()
	default:
		reply = Fail(http.StatusInternalServerError,
			fmt.Sprintf("fakellm: no scripted reply for request %d (queue empty, no responder)", req.Seq))
	}
	reply.ToolCalls = slices.Clone(reply.ToolCalls)
	for i := range reply.ToolCalls {
		if reply.ToolCalls[i].ID == "" {
			s.calls++
			reply.ToolCalls[i].ID = fmt.Sprintf("call_%d", s.calls)
		}
	}
	return req, reply
}

// wire is what one wire format plugs into serve: how a request is parsed
// and checked, how an error is reported, and how a reply is written whole
// or streamed.
type wire struct {
	format Format
	parse  func(body []byte) (Request, error)
	check  func([]Message) error
	fail   func(w http.ResponseWriter, status int, message string, header map[string]string)
	whole  func(Request, Reply) any
	stream func(*Server, http.ResponseWriter, *http.Request, Request, Reply)
}

// serve answers one completion request in format f. The flow (read,
// parse, check, record, then fail, stream, hang or answer) is the same
// for every format; only the wire's pieces differ.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, f wire) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		f.fail(w, http.StatusBadRequest, "read body: "+err.Error(), nil)
		return
	}
	req, bad := f.parse(body)
	if bad == nil {
		bad = f.check(req.Messages)
	}
	req.Format, req.Method, req.Path, req.Header, req.Body = f.format, r.Method, r.URL.Path, r.Header.Clone(), body
	req, reply := s.record(req, bad == nil)
	if bad != nil {
		f.fail(w, http.StatusBadRequest, bad.Error(), nil)
		return
	}
	if reply.Status >= 400 {
		f.fail(w, reply.Status, reply.Error, reply.Header)
		return
	}
	for k, v := range reply.Header {
		w.Header().Set(k, v)
	}
	if req.Stream {
		f.stream(s, w, r, req, reply)
		return
	}
	if reply.Hang {
		s.hang(r.Context())
		return
	}
	writeJSON(w, http.StatusOK, f.whole(req, reply))
}

// sse is a response of server-sent events, which both formats stream.
type sse struct {
	w       http.ResponseWriter
	flusher http.Flusher
}

// startSSE answers 200 with an event stream.
func startSSE(w http.ResponseWriter) sse {
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	return sse{w: w, flusher: flusher}
}

// write sends one event, with an event: line when event is not empty,
// and flushes it so the client sees it at once.
func (e sse) write(event string, data []byte) error {
	if err := llmwire.WriteRawEvent(e.w, event, data); err != nil {
		return err
	}
	if e.flusher != nil {
		e.flusher.Flush()
	}
	return nil
}

// hang blocks until the request is cancelled or the server closes.
func (s *Server) hang(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-s.done:
	}
}

// pause waits d between chunks, or less if the request ends.
func (s *Server) pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return errors.New("fakellm closed")
	}
}

// usage returns the reply's token counts: its override, or words counted.
func usage(req Request, reply Reply) Usage {
	if reply.Usage != nil {
		return *reply.Usage
	}
	var in, out int64
	for _, m := range req.Messages {
		in += int64(len(strings.Fields(m.Text)))
		for _, c := range m.ToolCalls {
			in += int64(len(strings.Fields(c.Arguments)))
		}
	}
	out = int64(len(strings.Fields(reply.Text)))
	for _, c := range reply.ToolCalls {
		out += 1 + int64(len(strings.Fields(c.Arguments)))
	}
	return Usage{PromptTokens: in + 1, CompletionTokens: out + 1}
}

// split cuts s into at most n pieces of about equal length, on rune
// boundaries. An empty s gives no pieces.
func split(s string, n int) []string {
	if s == "" {
		return nil
	}
	if n <= 0 {
		n = 3
	}
	runes := []rune(s)
	n = min(n, len(runes))
	pieces := make([]string, 0, n)
	for i := range n {
		pieces = append(pieces, string(runes[i*len(runes)/n:(i+1)*len(runes)/n]))
	}
	return pieces
}
