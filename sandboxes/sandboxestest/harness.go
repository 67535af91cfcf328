package sandboxestest

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/sandboxes/protocol/sse"
)

// Harness is a scripted harness server: it speaks the harness protocol
// (ARCHITECTURE §5) and answers user messages from a small script instead
// of an LLM, so the control plane can be tested against real HTTP without
// a model. The reply to a message depends on its text:
//
//	/block        run until aborted (or the caller goes away)
//	/block <text> stream text first, then run until aborted
//	/slow <dur>   run for a duration (e.g. /slow 50ms), then echo
//	/fail         end with an LLM error (info.error.name "APIError")
//	/tool         call a tool (pending → running → completed), then answer
//	/tools        say a line, call bash (completed) and read (error), answer
//	/markdown     answer with a markdown list
//	/crash        die mid-turn: the connection drops, the sandbox is dead
//	/history      describe the history the session was seeded with
//	/env NAME     answer with the sandbox's environment variable NAME
//	anything else "echo: " + the text, streamed in two deltas
//
// Every turn emits the event sequence of the brief: message.updated
// (assistant, not completed) → message.part.updated … → message.updated
// (completed, tokens) → session.idle; or session.error → session.idle.
type Harness struct {
	token string
	env   map[string]string
	// crash is called by /crash to kill the sandbox around this harness.
	crash func()
	// heartbeat is the interval of server.heartbeat events.
	heartbeat time.Duration
	// echoOnly turns the script off: every message is echoed.
	echoOnly bool

	mu       sync.Mutex
	sessions map[string]*hsession
	subs     map[chan protocol.Event]struct{}
	mux      *http.ServeMux
}

type hsession struct {
	info     protocol.SessionInfo
	system   string
	history  []protocol.Message
	messages []protocol.Message
	busy     bool
	abort    chan struct{}
}

// NewHarness returns a scripted harness that requires token as bearer
// ("" disables auth) and answers /env from env.
func NewHarness(token string, env map[string]string) *Harness {
	h := &Harness{
		token:     token,
		env:       env,
		heartbeat: 10 * time.Second,
		sessions:  map[string]*hsession{},
		subs:      map[chan protocol.Event]struct{}{},
		mux:       http.NewServeMux(),
	}
	h.mux.HandleFunc("GET /{$}", h.identity)
	h.mux.HandleFunc("GET /session", h.auth(h.listSessions))
	h.mux.HandleFunc("POST /session", h.auth(h.createSession))
	h.mux.HandleFunc("GET /session/{id}", h.auth(h.getSession))
	h.mux.HandleFunc("DELETE /session/{id}", h.auth(h.deleteSession))
	h.mux.HandleFunc("GET /session/{id}/message", h.auth(h.listMessages))
	h.mux.HandleFunc("POST /session/{id}/message", h.auth(h.sendMessage))
	h.mux.HandleFunc("POST /session/{id}/prompt_async", h.auth(h.promptAsync))
	h.mux.HandleFunc("POST /session/{id}/abort", h.auth(h.abortSession))
	h.mux.HandleFunc("GET /event", h.auth(h.events))
	return h
}

// ServeHTTP implements http.Handler.
func (h *Harness) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Harness) auth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if h.token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(h.token)) != 1 {
				writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "unauthorized"})
				return
			}
		}
		next(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (h *Harness) identity(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, protocol.Identity{Harness: "sandboxestest", Version: "1", Ready: true, Workspace: "/workspace/repo"})
}

func (h *Harness) listSessions(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	out := make([]protocol.SessionInfo, 0, len(h.sessions))
	for _, s := range h.sessions {
		out = append(out, s.info)
	}
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (h *Harness) createSession(w http.ResponseWriter, r *http.Request) {
	var req protocol.CreateSessionRequest
	if r.ContentLength != 0 {
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
	}
	s := &hsession{
		info:    protocol.SessionInfo{ID: "ses_" + uuid.NewString()[:8], Title: req.Title},
		system:  req.System,
		history: req.History,
	}
	h.mu.Lock()
	h.sessions[s.info.ID] = s
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, s.info)
}

func (h *Harness) session(w http.ResponseWriter, r *http.Request) *hsession {
	h.mu.Lock()
	s := h.sessions[r.PathValue("id")]
	h.mu.Unlock()
	if s == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "session " + r.PathValue("id") + " not found"})
	}
	return s
}

func (h *Harness) getSession(w http.ResponseWriter, r *http.Request) {
	if s := h.session(w, r); s != nil {
		writeJSON(w, http.StatusOK, s.info)
	}
}

func (h *Harness) deleteSession(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	delete(h.sessions, r.PathValue("id"))
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, true)
}

func (h *Harness) listMessages(w http.ResponseWriter, r *http.Request) {
	s := h.session(w, r)
	if s == nil {
		return
	}
	h.mu.Lock()
	out := append([]protocol.Message{}, s.messages...)
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (h *Harness) abortSession(w http.ResponseWriter, r *http.Request) {
	s := h.session(w, r)
	if s == nil {
		return
	}
	h.mu.Lock()
	aborted := s.busy
	if s.busy {
		select {
		case <-s.abort:
		default:
			close(s.abort)
		}
	}
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, aborted)
}

// begin marks s busy for one turn, or reports a turn already running.
func (h *Harness) begin(s *hsession) (abort chan struct{}, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.busy {
		return nil, false
	}
	s.busy = true
	s.abort = make(chan struct{})
	return s.abort, true
}

func (h *Harness) sendMessage(w http.ResponseWriter, r *http.Request) {
	s := h.session(w, r)
	if s == nil {
		return
	}
	var req protocol.SendMessageRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	abort, ok := h.begin(s)
	if !ok {
		writeJSON(w, http.StatusConflict, map[string]string{"error": "session is busy"})
		return
	}
	if !h.echoOnly && strings.TrimSpace(req.Text()) == "/crash" {
		if h.crash != nil {
			h.crash()
		}
		panic(http.ErrAbortHandler) // drop the connection without a reply
	}
	writeJSON(w, http.StatusOK, h.turn(r.Context(), s, req, abort))
}

func (h *Harness) promptAsync(w http.ResponseWriter, r *http.Request) {
	s := h.session(w, r)
	if s == nil {
		return
	}
	var req protocol.SendMessageRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	abort, ok := h.begin(s)
	if !ok {
		writeJSON(w, http.StatusConflict, map[string]string{"error": "session is busy"})
		return
	}
	go h.turn(context.Background(), s, req, abort)
	w.WriteHeader(http.StatusNoContent)
}

// turn runs one scripted turn and returns the assistant message.
func (h *Harness) turn(ctx context.Context, s *hsession, req protocol.SendMessageRequest, abort chan struct{}) protocol.Message {
	sid := s.info.ID
	now := time.Now().UnixMilli()
	userID := req.MessageID
	if userID == "" {
		userID = "msg_" + uuid.NewString()
	}
	user := protocol.Message{
		Info:  protocol.MessageInfo{ID: userID, SessionID: sid, Role: protocol.RoleUser, Time: protocol.MessageTime{Created: now, Completed: now}},
		Parts: []protocol.Part{{Type: protocol.PartText, Text: req.Text()}},
	}
	info := protocol.MessageInfo{ID: "msg_" + uuid.NewString(), SessionID: sid, Role: protocol.RoleAssistant, Time: protocol.MessageTime{Created: now}, ModelID: "scripted"}
	started := info
	h.emit(protocol.EventMessageUpdated, protocol.EventProperties{SessionID: sid, Info: &started})

	text := strings.TrimSpace(req.Text())
	var parts []protocol.Part
	var reply string
	var failure *protocol.MessageError
	wait := func(d time.Duration) bool {
		var timer <-chan time.Time
		if d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-abort:
			return false
		case <-ctx.Done():
			return false
		case <-timer:
			return true
		}
	}
	cmd, arg, _ := strings.Cut(text, " ")
	if h.echoOnly {
		cmd = ""
	}
	switch cmd {
	case "/block":
		if arg != "" {
			p := protocol.Part{ID: "prt_" + uuid.NewString()[:8], SessionID: sid, MessageID: info.ID, Type: protocol.PartText, Text: arg}
			h.emit(protocol.EventPartUpdated, protocol.EventProperties{SessionID: sid, Part: &p, Delta: arg})
		}
		wait(0)
		failure = &protocol.MessageError{Name: "Aborted", Message: "the turn was aborted"}
	case "/slow":
		d, err := time.ParseDuration(arg)
		if err != nil {
			d = 100 * time.Millisecond
		}
		if wait(d) {
			reply = "echo: " + text
		} else {
			failure = &protocol.MessageError{Name: "Aborted", Message: "the turn was aborted"}
		}
	case "/fail":
		failure = &protocol.MessageError{Name: "APIError", Message: "upstream LLM answered 500: scripted failure", Status: 500}
	case "/tool":
		call := protocol.Part{ID: "prt_" + uuid.NewString()[:8], SessionID: sid, MessageID: info.ID, Type: protocol.PartTool, Tool: "list_files", CallID: "call_1"}
		for _, st := range []string{protocol.ToolPending, protocol.ToolRunning, protocol.ToolCompleted} {
			call.State = &protocol.ToolState{Status: st, Input: json.RawMessage(`{"path":"."}`), Title: "list_files: ."}
			if st == protocol.ToolCompleted {
				call.State.Output = "README.md\ngo.mod"
			}
			p := call
			h.emit(protocol.EventPartUpdated, protocol.EventProperties{SessionID: sid, Part: &p})
		}
		parts = append(parts, call)
		reply = "I see README.md and go.mod."
	case "/tools":
		// What a coding agent's turn looks like in a client: text, a
		// tool that succeeds, one that fails, and the answer.
		intro := protocol.Part{ID: "prt_" + uuid.NewString()[:8], SessionID: sid, MessageID: info.ID, Type: protocol.PartText, Text: "Let me look.\n"}
		h.emit(protocol.EventPartUpdated, protocol.EventProperties{SessionID: sid, Part: &intro, Delta: intro.Text})
		parts = append(parts, intro)
		for i, c := range []struct{ tool, input, output, err string }{
			{"bash", `{"command":"ls"}`, "README.md\n", ""},
			{"read", `{"file_path":"missing.txt"}`, "", "no such file"},
		} {
			call := protocol.Part{ID: "prt_" + uuid.NewString()[:8], SessionID: sid, MessageID: info.ID, Type: protocol.PartTool, Tool: c.tool, CallID: fmt.Sprintf("call_%d", i+1)}
			for _, st := range []string{protocol.ToolPending, protocol.ToolRunning, protocol.ToolCompleted} {
				call.State = &protocol.ToolState{Status: st, Input: json.RawMessage(c.input)}
				if st == protocol.ToolCompleted {
					call.State.Output = c.output
					if c.err != "" {
						call.State.Status, call.State.Error = protocol.ToolError, c.err
					}
				}
				p := call
				h.emit(protocol.EventPartUpdated, protocol.EventProperties{SessionID: sid, Part: &p})
			}
			parts = append(parts, call)
		}
		reply = "There is a README.md."
	case "/markdown":
		reply = "Three points:\n\n- **one**\n- two\n- three\n"
	case "/history":
		last := ""
		if n := len(s.history); n > 0 {
			last = s.history[n-1].Text()
		}
		reply = fmt.Sprintf("history: %d messages; last: %s", len(s.history), last)
	case "/env":
		reply = h.env[arg]
	default:
		reply = "echo: " + text
	}

	if failure == nil {
		part := protocol.Part{ID: "prt_" + uuid.NewString()[:8], SessionID: sid, MessageID: info.ID, Type: protocol.PartText}
		half := len(reply) / 2
		for _, delta := range []string{reply[:half], reply[half:]} {
			part.Text += delta
			p := part
			h.emit(protocol.EventPartUpdated, protocol.EventProperties{SessionID: sid, Part: &p, Delta: delta})
		}
		parts = append(parts, part)
		info.Tokens = protocol.Tokens{Input: int64(len(text)), Output: int64(len(reply))}
	}
	info.Time.Completed = time.Now().UnixMilli()
	info.Error = failure
	if failure != nil {
		h.emit(protocol.EventSessionError, protocol.EventProperties{SessionID: sid, Error: failure})
	} else {
		completed := info
		h.emit(protocol.EventMessageUpdated, protocol.EventProperties{SessionID: sid, Info: &completed})
	}
	if parts == nil {
		parts = []protocol.Part{}
	}
	msg := protocol.Message{Info: info, Parts: parts}
	h.mu.Lock()
	s.messages = append(s.messages, user, msg)
	s.busy = false
	h.mu.Unlock()
	h.emit(protocol.EventSessionIdle, protocol.EventProperties{SessionID: sid})
	return msg
}

// emit sends an event to every subscriber of GET /event; a subscriber
// that does not keep up loses events rather than stalling turns.
func (h *Harness) emit(typ string, props protocol.EventProperties) {
	ev := protocol.Event{Type: typ, Properties: props}
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

func (h *Harness) events(w http.ResponseWriter, r *http.Request) {
	if _, ok := w.(http.Flusher); !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	ch := make(chan protocol.Event, 1024)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	sw := sse.NewWriter(w)
	send := func(ev protocol.Event) bool {
		b, _ := json.Marshal(ev)
		return sw.Event(sse.Event{Data: b}) == nil
	}
	if !send(protocol.Event{Type: protocol.EventServerConnected}) {
		return
	}
	tick := time.NewTicker(h.heartbeat)
	defer tick.Stop()
	for {
		select {
		case ev := <-ch:
			if !send(ev) {
				return
			}
		case <-tick.C:
			if !send(protocol.Event{Type: protocol.EventServerHeartbeat}) {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

// resetBusy clears turns that were running when the server went down: a
// restarted harness process starts with none.
func (h *Harness) resetBusy() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.sessions {
		s.busy = false
	}
}
