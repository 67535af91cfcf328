// Package clitest holds test helpers for the lap CLI: a fake lapd REST API
// (Server) that speaks the contracts of ARCHITECTURE §4 and control/api, and
// a pseudo-terminal harness (Term, ChatSuite) that runs the built `lap`
// binary against any lapd, fake or real.
package clitest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/sandboxes/protocol/sse"
)

// Step is one piece of a scripted assistant turn: a chunk of text (sent as
// a delta) or a tool call (sent pending → running → completed|error).
type Step struct {
	Text string
	Tool *ToolCall
}

// ToolCall is a scripted tool call.
type ToolCall struct {
	Tool   string
	Title  string
	Input  map[string]any
	Output string
	Error  string // non-empty: the call ends in state "error"
}

// Turn is how the fake answers one user message.
type Turn struct {
	Steps []Step
	// BlockUntilAbort makes the turn wait after its steps until POST abort
	// (then it ends with info.error.name "Aborted").
	BlockUntilAbort bool
	// Error ends the turn with info.error (an LLM failure, say).
	Error  *protocol.MessageError
	Tokens protocol.Tokens
	Cost   float64
}

// ReplyFunc scripts the assistant: history is the session's log before the
// new user message.
type ReplyFunc func(history []api.Message, text string) Turn

// EchoReply is the default script. "abort me" blocks until aborted, "fail"
// ends in an API error, "use a tool" makes one tool call, "markdown"
// answers with a list; anything else is echoed with the turn number, so a
// test can tell that a resumed session continues the same conversation.
func EchoReply(history []api.Message, text string) Turn {
	n := 1
	for _, m := range history {
		if m.Info.Role == protocol.RoleUser {
			n++
		}
	}
	t := Turn{Tokens: protocol.Tokens{Input: int64(100*n + len(text)), Output: 42}, Cost: 0.0012 * float64(n)}
	switch {
	case strings.Contains(text, "abort me"):
		t.Steps = []Step{{Text: "Working on it"}}
		t.BlockUntilAbort = true
	case strings.Contains(text, "fail"):
		t.Steps = []Step{{Text: "Let me try."}}
		t.Error = &protocol.MessageError{Name: "APIError", Message: "upstream model overloaded", Status: 529}
	case strings.Contains(text, "use a tool"):
		t.Steps = []Step{
			{Text: "Let me look.\n"},
			{Tool: &ToolCall{Tool: "bash", Input: map[string]any{"command": "ls"}, Output: "README.md\n"}},
			{Tool: &ToolCall{Tool: "read", Input: map[string]any{"file_path": "missing.txt"}, Error: "no such file"}},
			{Text: "There is a README.md."},
		}
	case strings.Contains(text, "markdown"):
		t.Steps = []Step{{Text: "Three points:\n\n"}, {Text: "- **one**\n- two\n"}, {Text: "- three\n"}}
	default:
		t.Steps = []Step{{Text: "You said: "}, {Text: text + "."}, {Text: fmt.Sprintf(" This is turn %d.", n)}}
	}
	return t
}

// Server is a fake lapd REST API on loopback.
type Server struct {
	URL string
	Key string

	// Warm makes new sessions ready at once (a warm-pool claim); otherwise
	// they go through Phases when a client watches them.
	Warm   bool
	Phases []string
	// FailWith makes new sessions fail with this reason instead of
	// becoming ready.
	FailWith string
	Reply    ReplyFunc

	srv *httptest.Server

	mu        sync.Mutex
	agents    []*api.Agent
	sessions  []*session
	harnesses []api.Harness
	requests  []string

	nextSessionIDs []string
}

type session struct {
	s       api.Session
	msgs    []api.Message
	log     []api.LogEntry
	subs    map[chan sseMsg]bool
	changed chan struct{} // closed and replaced on every status change
	started bool          // provisioning has begun
	abort   chan struct{} // non-nil while a turn runs
}

type sseMsg struct {
	name string
	data any
}

// DefaultPhases are what a cold session goes through in the fake.
var DefaultPhases = []string{"provisioning sandbox", "cloning repo", "starting harness"}

// NewServer starts a fake API with key "test-master-key-0123456789" and
// the harnesses lap, claude-agent-sdk and opencode (chat) and tty-only (no
// chat). It is closed when the test ends.
func NewServer(t testing.TB) *Server {
	f := &Server{
		Key:    "test-master-key-0123456789",
		Phases: DefaultPhases,
		Reply:  EchoReply,
		harnesses: []api.Harness{
			{ID: "lap", Description: "lap's own Go harness", Chat: true},
			{ID: "claude-agent-sdk", Description: "the Claude Agent SDK behind the harness protocol", Chat: true},
			{ID: "opencode", Description: "opencode serve", Chat: true},
			{ID: "tty-only", Description: "a terminal program without a chat API", Chat: false},
		},
	}
	f.srv = httptest.NewServer(f.routes())
	f.URL = f.srv.URL
	t.Cleanup(f.Close)
	return f
}

// Close stops the server; running streams end.
func (f *Server) Close() {
	f.mu.Lock()
	for _, s := range f.sessions {
		for ch := range s.subs {
			close(ch)
			delete(s.subs, ch)
		}
	}
	f.mu.Unlock()
	f.srv.CloseClientConnections()
	f.srv.Close()
}

// Requests returns "METHOD /path" of every request so far (path below the
// API base), in order.
func (f *Server) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

// AddAgent creates an agent directly, as POST /agents would.
func (f *Server) AddAgent(req api.CreateAgentRequest) api.Agent {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, _ := f.createAgentLocked(req)
	return *a
}

// Session returns a session and its log as the fake holds them.
func (f *Server) Session(id string) (api.Session, []api.Message, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, _ := f.findSessionLocked(id)
	if s == nil {
		return api.Session{}, nil, false
	}
	return s.s, slices.Clone(s.msgs), true
}

// now is truncated to milliseconds like the timestamps of a JSON store.
func now() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

// newID returns a random id, as lapd's are (UUIDv4).
func newID() string { return uuid.New().String() }

// NextSessionIDs makes the fake give the next sessions it creates these
// ids, e.g. to make two sessions share a short id.
func (f *Server) NextSessionIDs(ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextSessionIDs = append(f.nextSessionIDs, ids...)
}

func (f *Server) newSessionIDLocked() string {
	if len(f.nextSessionIDs) > 0 {
		id := f.nextSessionIDs[0]
		f.nextSessionIDs = f.nextSessionIDs[1:]
		return id
	}
	return newID()
}

func (f *Server) routes() http.Handler {
	mux := http.NewServeMux()
	b := api.BasePath
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	mux.HandleFunc("POST "+b+"/agents", f.createAgent)
	mux.HandleFunc("GET "+b+"/agents", f.listAgents)
	mux.HandleFunc("GET "+b+"/agents/{id}", f.getAgent)
	mux.HandleFunc("PATCH "+b+"/agents/{id}", f.updateAgent)
	mux.HandleFunc("DELETE "+b+"/agents/{id}", f.deleteAgent)
	mux.HandleFunc("POST "+b+"/agents/{id}/session", f.createSession)
	mux.HandleFunc("GET "+b+"/harnesses", f.listHarnesses)
	mux.HandleFunc("GET "+b+"/sessions", f.listSessions)
	mux.HandleFunc("GET "+b+"/sessions/{id}", f.getSession)
	mux.HandleFunc("DELETE "+b+"/sessions/{id}", f.deleteSession)
	mux.HandleFunc("GET "+b+"/sessions/{id}/events", f.events)
	mux.HandleFunc("POST "+b+"/sessions/{id}/message_stream", f.messageStream)
	mux.HandleFunc("POST "+b+"/sessions/{id}/abort", f.abort)
	mux.HandleFunc("GET "+b+"/sessions/{id}/messages", f.messages)
	mux.HandleFunc("GET "+b+"/sessions/{id}/log", f.sessionLog)
	mux.HandleFunc("GET "+b+"/sessions/{id}/diagnose", f.diagnose)
	mux.HandleFunc(b+"/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no route "+r.Method+" "+r.URL.Path)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, b) {
			f.mu.Lock()
			f.requests = append(f.requests, r.Method+" "+strings.TrimPrefix(r.URL.Path, b))
			f.mu.Unlock()
			if r.Header.Get("Authorization") != "Bearer "+f.Key {
				writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "missing or wrong master key")
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "bad JSON body: "+err.Error())
		return false
	}
	return true
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$`)

func (f *Server) createAgentLocked(req api.CreateAgentRequest) (*api.Agent, error) {
	if !dnsLabel.MatchString(req.Name) {
		return nil, fmt.Errorf("name %q: want a DNS-1123 label of 1-40 characters", req.Name)
	}
	if f.findAgentLocked(req.Name) != nil {
		return nil, errConflict
	}
	if req.HarnessID == "" {
		req.HarnessID = "lap"
	}
	if !slices.ContainsFunc(f.harnesses, func(h api.Harness) bool { return h.ID == req.HarnessID }) {
		return nil, fmt.Errorf("unknown harness_id %q", req.HarnessID)
	}
	if req.Model == "" {
		req.Model = "mock/tools"
	}
	if req.Branch == "" {
		req.Branch = "main"
	}
	names := []string{}
	for k := range req.EnvVars {
		names = append(names, k)
	}
	slices.Sort(names)
	t := now()
	a := &api.Agent{
		ID: newID(), Name: req.Name, HarnessID: req.HarnessID, Model: req.Model, Prompt: req.Prompt,
		RepoURL: req.RepoURL, Branch: req.Branch, EnvVars: names, WarmPoolSize: req.WarmPoolSize,
		MaxBudgetUSD: req.MaxBudgetUSD, Generation: 1, CreatedAt: t, UpdatedAt: t,
	}
	f.agents = append(f.agents, a)
	return a, nil
}

var errConflict = fmt.Errorf("conflict")

func (f *Server) createAgent(w http.ResponseWriter, r *http.Request) {
	var req api.CreateAgentRequest
	if !decode(w, r, &req) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a, err := f.createAgentLocked(req)
	switch {
	case err == errConflict:
		writeError(w, http.StatusConflict, api.CodeConflict, fmt.Sprintf("agent %s already exists", req.Name))
	case err != nil:
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
	default:
		writeJSON(w, http.StatusCreated, a)
	}
}

func (f *Server) findAgentLocked(idOrName string) *api.Agent {
	for _, a := range f.agents {
		if a.ID == idOrName || a.Name == idOrName {
			return a
		}
	}
	return nil
}

// page cuts a listing by ?limit and ?cursor (an offset), so clients are
// exercised on more than one page.
func page[T any](w http.ResponseWriter, r *http.Request, items []T) {
	limit := 2
	if l, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && l > 0 {
		limit = l
	}
	off, _ := strconv.Atoi(r.URL.Query().Get("cursor"))
	off = min(max(off, 0), len(items))
	end := min(off+limit, len(items))
	out := api.List[T]{Data: slices.Clone(items[off:end])}
	if out.Data == nil {
		out.Data = []T{}
	}
	if end < len(items) {
		out.NextCursor = strconv.Itoa(end)
	}
	writeJSON(w, http.StatusOK, out)
}

func (f *Server) listAgents(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	var out []api.Agent
	for _, a := range f.agents {
		if s := r.URL.Query().Get("search"); s == "" || strings.Contains(a.Name, s) {
			out = append(out, *a)
		}
	}
	f.mu.Unlock()
	page(w, r, out)
}

func (f *Server) getAgent(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.findAgentLocked(r.PathValue("id"))
	if a == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("agent %s not found", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (f *Server) updateAgent(w http.ResponseWriter, r *http.Request) {
	var req api.UpdateAgentRequest
	if !decode(w, r, &req) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.findAgentLocked(r.PathValue("id"))
	if a == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("agent %s not found", r.PathValue("id")))
		return
	}
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	set(&a.Name, req.Name)
	set(&a.HarnessID, req.HarnessID)
	set(&a.Model, req.Model)
	set(&a.Prompt, req.Prompt)
	set(&a.RepoURL, req.RepoURL)
	set(&a.Branch, req.Branch)
	if req.EnvVars != nil {
		a.EnvVars = []string{}
		for k := range *req.EnvVars {
			a.EnvVars = append(a.EnvVars, k)
		}
		slices.Sort(a.EnvVars)
	}
	if req.WarmPoolSize != nil {
		a.WarmPoolSize = req.WarmPoolSize
	}
	if req.MaxBudgetUSD != nil {
		a.MaxBudgetUSD = req.MaxBudgetUSD
	}
	a.Generation++
	a.UpdatedAt = now()
	writeJSON(w, http.StatusOK, a)
}

func (f *Server) deleteAgent(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.findAgentLocked(r.PathValue("id"))
	if a == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("agent %s not found", r.PathValue("id")))
		return
	}
	for _, s := range f.sessions {
		if s.s.AgentID == a.ID {
			f.setStatusLocked(s, api.SessionDead, "")
		}
	}
	f.agents = slices.DeleteFunc(f.agents, func(x *api.Agent) bool { return x == a })
	w.WriteHeader(http.StatusNoContent)
}

func (f *Server) listHarnesses(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.List[api.Harness]{Data: f.harnesses})
}

func (f *Server) createSession(w http.ResponseWriter, r *http.Request) {
	var req api.CreateSessionRequest
	if r.ContentLength != 0 && !decode(w, r, &req) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.findAgentLocked(r.PathValue("id"))
	if a == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("agent %s not found", r.PathValue("id")))
		return
	}
	t := now()
	s := &session{
		s: api.Session{
			ID: f.newSessionIDLocked(), AgentID: a.ID, AgentName: a.Name, Title: req.Title, Status: api.SessionCreating,
			Phase: "queued", CreatedAt: t, LastActiveAt: t, IdleTimeoutMS: 15 * 60 * 1000,
		},
		subs:    map[chan sseMsg]bool{},
		changed: make(chan struct{}),
	}
	s.log = append(s.log, api.LogEntry{Time: t, Kind: "status", Message: "creating (queued)"})
	if f.Warm {
		s.started = true
		s.s.SandboxID = newID()
		f.setStatusLocked(s, api.SessionReady, "claimed warm sandbox")
	}
	f.sessions = append(f.sessions, s)
	writeJSON(w, http.StatusCreated, s.s)
}

// setStatusLocked changes status and phase, logs it and tells watchers.
func (f *Server) setStatusLocked(s *session, status, phase string) {
	s.s.Status, s.s.Phase = status, phase
	s.log = append(s.log, api.LogEntry{Time: now(), Kind: "status", Message: strings.TrimSpace(status + " " + phase)})
	close(s.changed)
	s.changed = make(chan struct{})
	f.publishLocked(s, sseMsg{api.EventSession, s.s})
}

func (f *Server) publishLocked(s *session, m sseMsg) {
	for ch := range s.subs {
		select {
		case ch <- m:
		default: // a stuck subscriber loses events rather than blocking the fake
		}
	}
}

// provisionLocked starts the cold path of a session once: the phases, then
// ready (or failed). It runs in its own goroutine like a real backend.
func (f *Server) provisionLocked(s *session) {
	if s.started || s.s.Status != api.SessionCreating {
		return
	}
	s.started = true
	go func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, p := range f.Phases {
			f.setStatusLocked(s, api.SessionCreating, p)
		}
		if f.FailWith != "" {
			s.s.FailureReason = f.FailWith
			f.setStatusLocked(s, api.SessionFailed, "")
			return
		}
		s.s.SandboxID = newID()
		f.setStatusLocked(s, api.SessionReady, "ready")
	}()
}

// findSessionLocked finds a session by id or, as lapd does, by a prefix
// of 8 hex digits or more (dashes optional); matches lists every session
// the prefix names when it names more than one.
func (f *Server) findSessionLocked(ref string) (s *session, matches []string) {
	hex := strings.ToLower(strings.ReplaceAll(ref, "-", ""))
	for _, x := range f.sessions {
		switch {
		case x.s.ID == ref:
			return x, nil
		case len(hex) >= 8 && strings.HasPrefix(strings.ReplaceAll(x.s.ID, "-", ""), hex):
			s = x
			matches = append(matches, x.s.ID)
		}
	}
	if len(matches) > 1 {
		slices.Sort(matches)
		return nil, matches
	}
	return s, nil
}

func (f *Server) sessionOr404(w http.ResponseWriter, r *http.Request) *session {
	s, matches := f.findSessionLocked(r.PathValue("id"))
	switch {
	case len(matches) > 1:
		writeError(w, http.StatusConflict, api.CodeConflict, fmt.Sprintf("%s is the start of %d session ids: %s; give more of the id",
			r.PathValue("id"), len(matches), strings.Join(matches, ", ")))
	case s == nil:
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("session %s not found", r.PathValue("id")))
	}
	return s
}

func (f *Server) listSessions(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f.mu.Lock()
	var out []api.Session
	for _, s := range f.sessions {
		if (q.Get("agent_id") == "" || s.s.AgentID == q.Get("agent_id")) && (q.Get("status") == "" || s.s.Status == q.Get("status")) {
			out = append(out, s.s)
		}
	}
	f.mu.Unlock()
	page(w, r, out)
}

// getSession answers GET /sessions/:id, long-polling with ?wait=ready.
// A plain GET by a client that watches the events starts provisioning, so
// the watcher sees every phase in order (a real backend starts at once).
func (f *Server) getSession(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	s := f.sessionOr404(w, r)
	if s == nil {
		f.mu.Unlock()
		return
	}
	if r.URL.Query().Get("wait") != "ready" {
		cur := s.s
		if len(s.subs) > 0 {
			f.provisionLocked(s)
		}
		f.mu.Unlock()
		writeJSON(w, http.StatusOK, cur)
		return
	}
	timeout, err := time.ParseDuration(r.URL.Query().Get("timeout"))
	if err != nil || timeout <= 0 {
		timeout = 60 * time.Second
	}
	f.provisionLocked(s)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for s.s.Status == api.SessionCreating {
		changed := s.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			f.mu.Lock()
			cur := s.s
			f.mu.Unlock()
			writeJSON(w, http.StatusOK, cur)
			return
		case <-r.Context().Done():
			return
		}
		f.mu.Lock()
	}
	cur := s.s
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, cur)
}

func (f *Server) deleteSession(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessionOr404(w, r)
	if s == nil {
		return
	}
	if s.s.Status != api.SessionDead {
		f.setStatusLocked(s, api.SessionDead, "")
	}
	w.WriteHeader(http.StatusNoContent)
}

// sseWriter writes server-sent events: `event: <name>` and `data: <json>`.
type sseWriter struct {
	w *sse.Writer
}

func startSSE(w http.ResponseWriter) *sseWriter {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	sw := &sseWriter{w: sse.NewWriter(w)}
	sw.comment("ping")
	return sw
}

func (sw *sseWriter) comment(c string) { _ = sw.w.Comment(c) }

func (sw *sseWriter) send(name string, v any) {
	b, _ := json.Marshal(v)
	_ = sw.w.Event(sse.Event{Type: name, Data: b})
}

func (f *Server) events(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	s := f.sessionOr404(w, r)
	if s == nil {
		f.mu.Unlock()
		return
	}
	ch := make(chan sseMsg, 256)
	s.subs[ch] = true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		if s.subs[ch] {
			delete(s.subs, ch)
		}
		f.mu.Unlock()
	}()
	sw := startSSE(w)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				return
			}
			sw.send(m.name, m.data)
		case <-r.Context().Done():
			return
		}
	}
}

func (f *Server) abort(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessionOr404(w, r)
	if s == nil {
		return
	}
	if s.abort != nil {
		close(s.abort)
		s.abort = nil
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *Server) messageStream(w http.ResponseWriter, r *http.Request) {
	var req api.SendMessageRequest
	if !decode(w, r, &req) {
		return
	}
	text := req.Text
	for _, p := range req.Parts {
		text += p.Text
	}
	if strings.TrimSpace(text) == "" {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "empty message: give text or parts")
		return
	}
	f.mu.Lock()
	s := f.sessionOr404(w, r)
	if s == nil {
		f.mu.Unlock()
		return
	}
	switch {
	case s.s.Status == api.SessionDead || s.s.Status == api.SessionFailed:
		f.mu.Unlock()
		writeError(w, http.StatusConflict, api.CodeConflict, fmt.Sprintf("session %s is %s", s.s.ID[:8], s.s.Status))
		return
	case s.abort != nil:
		f.mu.Unlock()
		writeError(w, http.StatusConflict, api.CodeConflict, fmt.Sprintf("session %s is running a turn", s.s.ID[:8]))
		return
	}
	abort := make(chan struct{})
	s.abort = abort
	history := slices.Clone(s.msgs)
	turn := f.Reply(history, text)
	t := now()
	user := api.Message{
		Info:  protocol.MessageInfo{ID: "msg_" + newID(), SessionID: s.s.ID, Role: protocol.RoleUser, Time: protocol.MessageTime{Created: t.UnixMilli()}, Seq: int64(len(s.msgs) + 1), Status: protocol.StatusPending},
		Parts: []protocol.Part{{Type: protocol.PartText, Text: text}},
	}
	s.msgs = append(s.msgs, user)
	f.publishLocked(s, sseMsg{api.EventMessage, user})
	wasIdle := s.s.Status != api.SessionReady
	f.provisionLocked(s)
	f.mu.Unlock()

	sw := startSSE(w)
	// Wait for the sandbox, as lapd does for a creating or idle session.
	f.mu.Lock()
	if wasIdle && s.s.Status == api.SessionIdle {
		f.setStatusLocked(s, api.SessionCreating, "resuming")
		f.setStatusLocked(s, api.SessionReady, "ready")
	}
	for s.s.Status == api.SessionCreating {
		changed := s.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
		f.mu.Lock()
	}
	ready := s.s
	f.mu.Unlock()
	if ready.Status != api.SessionReady {
		sw.send(api.EventError, api.ErrorDetail{Code: api.CodeUnavailable, Message: "session " + ready.ID[:8] + " is " + ready.Status})
		f.endTurn(s, user, nil)
		return
	}
	sw.send(api.EventReady, ready)

	harness := func(ev protocol.Event) {
		ev.Properties.SessionID = "ses_harness"
		sw.send(api.EventHarness, ev)
		f.mu.Lock()
		f.publishLocked(s, sseMsg{api.EventHarness, ev})
		f.mu.Unlock()
	}
	userPart := user.Parts[0]
	userPart.ID, userPart.MessageID = "prt_user", user.Info.ID
	harness(protocol.Event{Type: protocol.EventMessageUpdated, Properties: protocol.EventProperties{Info: &user.Info}})
	harness(protocol.Event{Type: protocol.EventPartUpdated, Properties: protocol.EventProperties{Part: &userPart}})

	info := protocol.MessageInfo{ID: "msg_" + newID(), SessionID: ready.ID, Role: protocol.RoleAssistant, Time: protocol.MessageTime{Created: now().UnixMilli()}, ModelID: "mock/tools"}
	harness(protocol.Event{Type: protocol.EventMessageUpdated, Properties: protocol.EventProperties{Info: &info}})
	var parts []protocol.Part
	textIdx := -1
	for i, st := range turn.Steps {
		switch {
		case st.Tool != nil:
			textIdx = -1
			in, _ := json.Marshal(st.Tool.Input)
			p := protocol.Part{ID: fmt.Sprintf("prt_%d", i), MessageID: info.ID, Type: protocol.PartTool, Tool: st.Tool.Tool, CallID: fmt.Sprintf("call_%d", i),
				State: &protocol.ToolState{Status: protocol.ToolPending, Input: in, Title: st.Tool.Title}}
			for _, status := range []string{protocol.ToolPending, protocol.ToolRunning} {
				p.State.Status = status
				cp := p
				cs := *p.State
				cp.State = &cs
				harness(protocol.Event{Type: protocol.EventPartUpdated, Properties: protocol.EventProperties{Part: &cp}})
			}
			if st.Tool.Error != "" {
				p.State.Status, p.State.Error = protocol.ToolError, st.Tool.Error
			} else {
				p.State.Status, p.State.Output = protocol.ToolCompleted, st.Tool.Output
			}
			harness(protocol.Event{Type: protocol.EventPartUpdated, Properties: protocol.EventProperties{Part: &p}})
			parts = append(parts, p)
		default:
			if textIdx < 0 {
				parts = append(parts, protocol.Part{ID: fmt.Sprintf("prt_%d", i), MessageID: info.ID, Type: protocol.PartText})
				textIdx = len(parts) - 1
			}
			parts[textIdx].Text += st.Text
			p := parts[textIdx]
			harness(protocol.Event{Type: protocol.EventPartUpdated, Properties: protocol.EventProperties{Part: &p, Delta: st.Text}})
		}
	}
	if turn.BlockUntilAbort {
		select {
		case <-abort:
			turn.Error = &protocol.MessageError{Name: "Aborted", Message: "the turn was aborted"}
		case <-r.Context().Done():
			f.endTurn(s, user, nil)
			return
		}
	}
	info.Time.Completed = now().UnixMilli()
	info.Tokens, info.Cost, info.Error = turn.Tokens, turn.Cost, turn.Error
	harness(protocol.Event{Type: protocol.EventMessageUpdated, Properties: protocol.EventProperties{Info: &info}})
	if turn.Error != nil {
		harness(protocol.Event{Type: protocol.EventSessionError, Properties: protocol.EventProperties{Error: turn.Error}})
	}
	harness(protocol.Event{Type: protocol.EventSessionIdle})
	if parts == nil {
		parts = []protocol.Part{}
	}
	final := f.endTurn(s, user, &api.Message{Info: info, Parts: parts})
	sw.send(api.EventDone, final)
}

// endTurn completes the log: the user message completed (or failed when the
// turn produced nothing) and the assistant message appended.
func (f *Server) endTurn(s *session, user api.Message, reply *api.Message) api.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.abort = nil
	for i := range s.msgs {
		if s.msgs[i].Info.ID == user.Info.ID {
			if reply == nil {
				s.msgs[i].Info.Status = protocol.StatusFailed
			} else {
				s.msgs[i].Info.Status = protocol.StatusCompleted
			}
		}
	}
	s.s.LastActiveAt = now()
	if reply == nil {
		return api.Message{}
	}
	reply.Info.Seq = int64(len(s.msgs) + 1)
	reply.Info.Status = protocol.StatusCompleted
	if reply.Info.Error != nil {
		reply.Info.Status = protocol.StatusFailed
	}
	s.msgs = append(s.msgs, *reply)
	s.s.Usage.InputTokens += reply.Info.Tokens.Input
	s.s.Usage.OutputTokens += reply.Info.Tokens.Output
	s.s.Usage.CostUSD += reply.Info.Cost
	s.s.Usage.Requests++
	s.log = append(s.log, api.LogEntry{Time: now(), Kind: "message", Message: fmt.Sprintf("turn %d %s", reply.Info.Seq/2, reply.Info.Status)})
	f.publishLocked(s, sseMsg{api.EventMessage, *reply})
	return *reply
}

// Suspend marks a session idle, as the idle reaper would.
func (f *Server) Suspend(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, _ := f.findSessionLocked(id); s != nil {
		f.setStatusLocked(s, api.SessionIdle, "suspended")
	}
}

func (f *Server) messages(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessionOr404(w, r)
	if s == nil {
		return
	}
	out := slices.Clone(s.msgs)
	if out == nil {
		out = []api.Message{}
	}
	writeJSON(w, http.StatusOK, api.List[api.Message]{Data: out})
}

func (f *Server) sessionLog(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessionOr404(w, r)
	if s == nil {
		return
	}
	writeJSON(w, http.StatusOK, api.List[api.LogEntry]{Data: slices.Clone(s.log)})
}

func (f *Server) diagnose(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessionOr404(w, r)
	if s == nil {
		return
	}
	d := api.Diagnosis{Session: s.s, Timeline: slices.Clone(s.log), Messages: []api.MessageStatus{}}
	if a := f.findAgentLocked(s.s.AgentID); a != nil {
		d.Agent = *a
	}
	for _, m := range s.msgs {
		ms := api.MessageStatus{Seq: m.Info.Seq, Role: m.Info.Role, Status: m.Info.Status}
		if m.Info.Error != nil {
			ms.Error = m.Info.Error.Name + ": " + m.Info.Error.Message
		}
		d.Messages = append(d.Messages, ms)
	}
	if s.s.Status == api.SessionFailed {
		d.Hints = []string{"the sandbox did not start: " + s.s.FailureReason}
	}
	writeJSON(w, http.StatusOK, d)
}
