package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"lap.dev/lap/sandboxes/protocol"
)

// transcriptVersion is the version of the session file format.
const transcriptVersion = 1

// transcript is a session as persisted in <Workspace>/.lap/sessions/<id>.json:
// the messages the protocol shows and, beside them, the conversation as
// the model sees it, so a restarted harness continues it exactly.
type transcript struct {
	Version  int                `json:"version"`
	ID       string             `json:"id"`
	Title    string             `json:"title,omitempty"`
	System   string             `json:"system,omitempty"`
	Created  int64              `json:"created"`
	Messages []protocol.Message `json:"messages"`
	LLM      []llmMessage       `json:"llm"`
}

// llmMessage is one message of the model's conversation (system prompt
// excluded: it is rebuilt for every call).
type llmMessage struct {
	Role       string        `json:"role"` // user, assistant, tool
	Content    string        `json:"content,omitempty"`
	ToolCalls  []llmToolCall `json:"tool_calls,omitempty"`
	ToolCallID string        `json:"tool_call_id,omitempty"`
}

// llmToolCall is a tool call the model made.
type llmToolCall struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
	// index is the call's position in the streamed answer.
	index int
}

// session is one conversation. mu guards t and the turn fields; saveMu
// orders writes of the transcript file so an older snapshot never
// replaces a newer one.
type session struct {
	id   string
	path string

	mu      sync.Mutex
	t       transcript
	turn    *turn // the running turn, nil when idle
	deleted bool

	saveMu sync.Mutex
}

func (sess *session) info() protocol.SessionInfo {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return protocol.SessionInfo{ID: sess.t.ID, Title: sess.t.Title}
}

// messages returns a copy of the session's messages, safe to encode while
// a turn goes on.
func (sess *session) messages() []protocol.Message {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	out := make([]protocol.Message, len(sess.t.Messages))
	for i, m := range sess.t.Messages {
		out[i] = copyMessage(m)
	}
	return out
}

// copyMessage copies m's parts so later updates of m do not show through.
// Tool states are never changed in place, so sharing them is safe.
func copyMessage(m protocol.Message) protocol.Message {
	m.Parts = append([]protocol.Part(nil), m.Parts...)
	if m.Info.Error != nil {
		e := *m.Info.Error
		m.Info.Error = &e
	}
	return m
}

// abort cancels the running turn and waits until it has recorded its end
// (or ctx ends). It reports whether a turn was running.
func (sess *session) abort(ctx context.Context) bool {
	sess.mu.Lock()
	t := sess.turn
	sess.mu.Unlock()
	if t == nil {
		return false
	}
	t.cancel()
	select {
	case <-t.done:
	case <-ctx.Done():
	}
	return true
}

// newSession creates a session, seeded with req.History, and persists it.
func (s *Server) newSession(req protocol.CreateSessionRequest) (*session, error) {
	id, err := uuid.NewRandom()
	if err != nil {
		return nil, fmt.Errorf("new session id: %w", err)
	}
	t := transcript{
		Version: transcriptVersion,
		ID:      id.String(),
		Title:   req.Title,
		System:  req.System,
		Created: time.Now().UnixMilli(),
	}
	for i, m := range req.History {
		if m.Info.Role != protocol.RoleUser && m.Info.Role != protocol.RoleAssistant {
			return nil, errorf(http.StatusBadRequest, codeBadRequest, "history[%d]: role %q, want user or assistant", i, m.Info.Role)
		}
		m = copyMessage(m)
		m.Info.SessionID = t.ID
		if m.Info.ID == "" {
			mid, err := uuid.NewRandom()
			if err != nil {
				return nil, fmt.Errorf("new message id: %w", err)
			}
			m.Info.ID = mid.String()
		}
		t.Messages = append(t.Messages, m)
		// Only text is replayed to the model: tool calls of another
		// sandbox cannot be answered faithfully here.
		if text := m.Text(); text != "" {
			t.LLM = append(t.LLM, llmMessage{Role: m.Info.Role, Content: text})
		}
	}
	sess := &session{id: t.ID, path: filepath.Join(s.sessDir, t.ID+".json"), t: t}
	if err := s.save(sess); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.sessions[sess.id] = sess
	s.mu.Unlock()
	s.log.Info("session created", "session", sess.id, "history", len(req.History))
	return sess, nil
}

// removeSession aborts the session's turn and deletes it and its file.
func (s *Server) removeSession(ctx context.Context, sess *session) error {
	sess.abort(ctx)
	sess.saveMu.Lock()
	defer sess.saveMu.Unlock()
	sess.mu.Lock()
	sess.deleted = true
	sess.mu.Unlock()
	s.mu.Lock()
	delete(s.sessions, sess.id)
	s.mu.Unlock()
	if err := os.Remove(sess.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete session %s: %w", sess.id, err)
	}
	s.log.Info("session deleted", "session", sess.id)
	return nil
}

// save writes the session's transcript atomically: a temporary file in the
// same directory, synced, then renamed over the old one, so a crash leaves
// either the previous or the new transcript, never a torn one.
func (s *Server) save(sess *session) error { return s.saveAs(sess, true) }

// saveAs writes the session's transcript, fsynced (with its directory)
// when durable. Saves within a turn need not be: the process dying mid-
// turn keeps what was written (the page cache survives it), and a
// machine crash mid-turn fails the turn whatever the file holds — the
// control plane records it failed and the transcript is repaired at
// load. The save that ends a turn is durable.
func (s *Server) saveAs(sess *session, durable bool) error {
	sess.saveMu.Lock()
	defer sess.saveMu.Unlock()
	sess.mu.Lock()
	if sess.deleted {
		sess.mu.Unlock()
		return nil
	}
	b, err := json.Marshal(&sess.t)
	sess.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode session %s: %w", sess.id, err)
	}
	if err := writeFileAtomic(sess.path, b, durable); err != nil {
		return fmt.Errorf("save session %s: %w", sess.id, err)
	}
	return nil
}

func writeFileAtomic(path string, b []byte, durable bool) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if !durable {
		return nil
	}
	// Make the rename itself durable.
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// loadSessions reads every persisted session. A transcript that ends in
// the middle of a turn (the harness was killed) is repaired: the turn is
// recorded as failed and tool calls left without a result get one, so the
// conversation stays valid for the model. Unreadable files are logged and
// left alone.
func (s *Server) loadSessions() error {
	entries, err := os.ReadDir(s.sessDir)
	if err != nil {
		return fmt.Errorf("read sessions: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(s.sessDir, name)
		if strings.HasSuffix(name, ".tmp") {
			// A write cut short by a crash; the rename never happened.
			_ = os.Remove(path)
			continue
		}
		if !strings.HasSuffix(name, ".json") || e.IsDir() {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read session %s: %w", name, err)
		}
		var t transcript
		if err := json.Unmarshal(b, &t); err != nil || t.ID == "" || t.ID+".json" != name {
			s.log.Error("skipping unreadable session file", "file", path, "err", err)
			continue
		}
		sess := &session{id: t.ID, path: path, t: t}
		if repairTranscript(&sess.t, time.Now().UnixMilli()) {
			if err := s.save(sess); err != nil {
				return err
			}
			s.log.Warn("session's last turn was cut short by a restart", "session", t.ID)
		}
		s.sessions[t.ID] = sess
	}
	if len(s.sessions) > 0 {
		s.log.Info("sessions loaded", "count", len(s.sessions))
	}
	return nil
}

// interruptedMessage is what the model and the user are told about a turn
// the harness did not finish.
const interruptedMessage = "the harness stopped before this turn finished"

// repairTranscript closes a turn left open by a crash and reports whether
// it changed anything.
func repairTranscript(t *transcript, now int64) bool {
	changed := false
	for i := range t.Messages {
		m := &t.Messages[i]
		if m.Info.Role != protocol.RoleAssistant || m.Info.Time.Completed != 0 {
			continue
		}
		m.Info.Time.Completed = now
		if m.Info.Error == nil {
			m.Info.Error = &protocol.MessageError{Name: "HarnessError", Message: interruptedMessage}
		}
		for j, p := range m.Parts {
			if p.Type == protocol.PartTool && p.State != nil &&
				(p.State.Status == protocol.ToolPending || p.State.Status == protocol.ToolRunning) {
				st := *p.State
				st.Status, st.Error = protocol.ToolError, interruptedMessage
				m.Parts[j].State = &st
			}
		}
		changed = true
	}
	// Every tool call needs a result before the next message.
	var fixed []llmMessage
	var open []llmToolCall
	answered := map[string]bool{}
	closeOpen := func() {
		for _, c := range open {
			if !answered[c.ID] {
				fixed = append(fixed, llmMessage{Role: "tool", ToolCallID: c.ID, Content: "Error: " + interruptedMessage})
				changed = true
			}
		}
		open, answered = nil, map[string]bool{}
	}
	for _, m := range t.LLM {
		if m.Role == "tool" {
			answered[m.ToolCallID] = true
			fixed = append(fixed, m)
			continue
		}
		closeOpen()
		fixed = append(fixed, m)
		open = m.ToolCalls
	}
	closeOpen()
	t.LLM = fixed
	return changed
}
