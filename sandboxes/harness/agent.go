package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"lap.dev/lap/sandboxes/protocol"
)

// Causes of a cancelled turn, told apart in info.error.
var (
	errAborted  = errors.New("the turn was aborted")
	errShutdown = errors.New("the harness shut down during the turn")
)

// turn is one running agent turn of a session.
type turn struct {
	sess   *session
	ctx    context.Context
	cancel func()
	done   chan struct{} // closed once the turn has ended and been saved
	result protocol.Message

	model  string
	system string
	msgIdx int // the assistant message in sess.t.Messages
	tokens protocol.Tokens
}

// wait blocks until the turn ends and returns the assistant message.
func (t *turn) wait() protocol.Message {
	<-t.done
	return t.result
}

// newID returns a random UUID (v4) string, the form of every id in lap;
// it panics only if the system's random source fails, which uuid itself
// treats as fatal too.
func newID() string { return uuid.New().String() }

// startTurn records the user message and the (empty) assistant message
// and runs the agent loop in the background. It fails with 400 for an
// empty message or no model, 503 while the workspace is not ready, 409
// while the session runs another turn.
func (s *Server) startTurn(sess *session, req protocol.SendMessageRequest) (*turn, error) {
	text := req.Text()
	if strings.TrimSpace(text) == "" {
		return nil, errorf(http.StatusBadRequest, codeBadRequest, "message has no text")
	}
	model := s.model(req.Model)
	if model == "" {
		return nil, errorf(http.StatusBadRequest, codeBadRequest, "no model: the message names none and LAP_MODEL is not set")
	}
	if err := s.requireReady(); err != nil {
		return nil, err
	}

	s.shutdownMu.Lock()
	defer s.shutdownMu.Unlock()
	if s.closed {
		return nil, errorf(http.StatusServiceUnavailable, codeUnavailable, "harness is shutting down")
	}
	sess.mu.Lock()
	if sess.deleted {
		sess.mu.Unlock()
		return nil, errorf(http.StatusNotFound, codeNotFound, "session %s not found", sess.id)
	}
	if sess.turn != nil {
		sess.mu.Unlock()
		return nil, errorf(http.StatusConflict, codeConflict, "session %s is running a turn; wait for it or abort it", sess.id)
	}
	ctx, cancel := context.WithCancelCause(s.turnCtx)
	t := &turn{
		sess:   sess,
		ctx:    ctx,
		cancel: func() { cancel(errAborted) },
		done:   make(chan struct{}),
		model:  model,
		system: s.systemPrompt(sess.t.System, req.System),
	}
	now := time.Now().UnixMilli()
	userID := req.MessageID
	if userID == "" {
		userID = newID()
	}
	sess.t.Messages = append(sess.t.Messages, protocol.Message{
		Info:  protocol.MessageInfo{ID: userID, SessionID: sess.id, Role: protocol.RoleUser, Time: protocol.MessageTime{Created: now, Completed: now}},
		Parts: []protocol.Part{{ID: newID(), SessionID: sess.id, MessageID: userID, Type: protocol.PartText, Text: text}},
	}, protocol.Message{
		Info:  protocol.MessageInfo{ID: newID(), SessionID: sess.id, Role: protocol.RoleAssistant, Time: protocol.MessageTime{Created: now}, ModelID: model},
		Parts: []protocol.Part{},
	})
	sess.t.LLM = append(sess.t.LLM, llmMessage{Role: "user", Content: text})
	t.msgIdx = len(sess.t.Messages) - 1
	info := sess.t.Messages[t.msgIdx].Info
	sess.turn = t
	sess.mu.Unlock()
	s.turns.Add(1)

	s.saveInTurn(sess)
	s.emit(protocol.EventMessageUpdated, protocol.EventProperties{SessionID: sess.id, Info: &info})
	s.log.Info("turn started", "session", sess.id, "message", info.ID, "model", model)
	go s.runTurn(t)
	return t, nil
}

// model is the model a message asks for, else LAP_MODEL. opencode names
// models as {providerID, modelID}; they are joined as provider/model
// (the form LiteLLM routes on) unless modelID already has a provider.
func (s *Server) model(ref *protocol.ModelRef) string {
	if ref == nil || ref.ModelID == "" {
		return s.cfg.Model
	}
	if ref.ProviderID == "" || strings.Contains(ref.ModelID, "/") {
		return ref.ModelID
	}
	return ref.ProviderID + "/" + ref.ModelID
}

// systemPrompt is AGENT_PROMPT, a note on the workspace, and the
// session's and the message's system text.
func (s *Server) systemPrompt(sessSystem, msgSystem string) string {
	note := fmt.Sprintf("You are working in the directory %s.", s.repo)
	if s.cfg.RepoURL != "" {
		note = fmt.Sprintf("You are working in %s, a clone of %s", s.repo, redactURL(s.cfg.RepoURL))
		if s.cfg.Branch != "" {
			note += " at branch " + s.cfg.Branch
		}
		note += "."
	}
	note += " Tool paths are relative to it and must stay inside it. Use the tools to look at and change the code; answer when the task is done."
	var parts []string
	for _, p := range []string{s.cfg.AgentPrompt, note, sessSystem, msgSystem} {
		if strings.TrimSpace(p) != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "\n\n")
}

func (s *Server) saveOrLog(sess *session) { s.saveOrLogAs(sess, true) }

// saveInTurn saves the transcript in the middle of a turn, without fsync
// (see saveAs): a turn used to fsync its transcript and directory at its
// start and after every step, three times for a one-step turn.
func (s *Server) saveInTurn(sess *session) { s.saveOrLogAs(sess, false) }

func (s *Server) saveOrLogAs(sess *session, durable bool) {
	if err := s.saveAs(sess, durable); err != nil {
		s.log.Error("persist session", "session", sess.id, "err", err)
	}
}

// runTurn runs the agent loop and records how the turn ended.
func (s *Server) runTurn(t *turn) {
	defer s.turns.Done()
	merr := s.loop(t)
	if merr == nil && t.ctx.Err() != nil {
		merr = cancelError(t.ctx)
	}
	s.finishTurn(t, merr)
}

// cancelError is info.error for a cancelled turn.
func cancelError(ctx context.Context) *protocol.MessageError {
	return &protocol.MessageError{Name: "Aborted", Message: context.Cause(ctx).Error()}
}

// loop calls the model, runs the tools it asks for and repeats until the
// model answers without tools, the step limit is reached, the turn is
// cancelled or the model fails. The transcript is saved after every step
// and every tool call.
func (s *Server) loop(t *turn) *protocol.MessageError {
	ctx, sess := t.ctx, t.sess
	specs := s.tools.specs()
	for step := 1; step <= s.cfg.MaxSteps; step++ {
		if ctx.Err() != nil {
			return cancelError(ctx)
		}
		sess.mu.Lock()
		params := chatParams(t.model, t.system, sess.t.LLM, specs)
		sess.mu.Unlock()

		textIdx := -1
		var text strings.Builder
		toolIdx := map[int]int{} // stream index → part index
		res, err := s.llm.step(ctx, params, streamHooks{
			text: func(delta string) {
				text.WriteString(delta)
				textIdx = s.appendText(t, textIdx, delta)
			},
			toolCall: func(index int, id, name string) {
				toolIdx[index] = s.addToolPart(t, id, name)
			},
		})
		if err != nil {
			s.failStep(t, text.String(), toolIdx, ctx)
			if ctx.Err() != nil {
				return cancelError(ctx)
			}
			var se *stepError
			if errors.As(err, &se) {
				s.log.Warn("LLM call failed", "session", sess.id, "status", se.status, "err", se.message)
				return se.messageError()
			}
			return &protocol.MessageError{Name: "APIError", Message: err.Error()}
		}

		sess.mu.Lock()
		t.tokens.Input += res.input
		t.tokens.Output += res.output
		sess.t.Messages[t.msgIdx].Info.Tokens = t.tokens
		sess.t.LLM = append(sess.t.LLM, llmMessage{Role: "assistant", Content: res.text, ToolCalls: res.calls})
		sess.mu.Unlock()
		s.saveInTurn(sess)
		if len(res.calls) == 0 {
			return nil
		}

		for _, call := range res.calls {
			partIdx, ok := toolIdx[call.index]
			if !ok {
				partIdx = s.addToolPart(t, call.ID, call.Name)
			}
			var r toolResult
			if ctx.Err() != nil {
				r = toolResult{err: errors.New("not run: " + context.Cause(ctx).Error())}
			} else {
				s.setToolState(t, partIdx, protocol.ToolState{Status: protocol.ToolRunning, Input: toolInput(call.Arguments), Title: toolTitle(call.Name, call.Arguments)})
				r = s.tools.run(ctx, call.Name, call.Arguments)
			}
			st := protocol.ToolState{Status: protocol.ToolCompleted, Input: toolInput(call.Arguments), Output: r.output, Title: toolTitle(call.Name, call.Arguments)}
			if r.err != nil {
				st.Status, st.Error = protocol.ToolError, r.err.Error()
			}
			s.setToolState(t, partIdx, st)
			sess.mu.Lock()
			sess.t.LLM = append(sess.t.LLM, llmMessage{Role: "tool", ToolCallID: call.ID, Content: r.forModel()})
			sess.mu.Unlock()
			s.saveInTurn(sess)
		}
	}
	return &protocol.MessageError{Name: "HarnessError", Message: fmt.Sprintf(
		"stopped after %d steps, the limit of one turn; send another message to let the agent continue", s.cfg.MaxSteps)}
}

// failStep records a step the model did not finish: the text streamed so
// far stays, in the message and for the model; announced tool calls were
// never run and are marked so.
func (s *Server) failStep(t *turn, text string, toolIdx map[int]int, ctx context.Context) {
	why := "the model call failed before the call was complete"
	if ctx.Err() != nil {
		why = context.Cause(ctx).Error()
	}
	for _, idx := range toolIdx {
		t.sess.mu.Lock()
		st := *t.sess.t.Messages[t.msgIdx].Parts[idx].State
		t.sess.mu.Unlock()
		st.Status, st.Error = protocol.ToolError, why
		s.setToolState(t, idx, st)
	}
	if text != "" {
		t.sess.mu.Lock()
		t.sess.t.LLM = append(t.sess.t.LLM, llmMessage{Role: "assistant", Content: text})
		t.sess.mu.Unlock()
	}
	s.saveInTurn(t.sess)
}

// appendText adds delta to the step's text part (creating it at idx -1)
// and publishes it; it returns the part's index.
func (s *Server) appendText(t *turn, idx int, delta string) int {
	sess := t.sess
	sess.mu.Lock()
	msg := &sess.t.Messages[t.msgIdx]
	if idx < 0 {
		msg.Parts = append(msg.Parts, protocol.Part{ID: newID(), SessionID: sess.id, MessageID: msg.Info.ID, Type: protocol.PartText})
		idx = len(msg.Parts) - 1
	}
	msg.Parts[idx].Text += delta
	part := msg.Parts[idx]
	sess.mu.Unlock()
	s.emit(protocol.EventPartUpdated, protocol.EventProperties{SessionID: sess.id, Part: &part, Delta: delta})
	return idx
}

// addToolPart adds a pending tool part and publishes it.
func (s *Server) addToolPart(t *turn, callID, name string) int {
	sess := t.sess
	sess.mu.Lock()
	msg := &sess.t.Messages[t.msgIdx]
	msg.Parts = append(msg.Parts, protocol.Part{
		ID: newID(), SessionID: sess.id, MessageID: msg.Info.ID, Type: protocol.PartTool,
		Tool: name, CallID: callID, State: &protocol.ToolState{Status: protocol.ToolPending},
	})
	idx := len(msg.Parts) - 1
	part := msg.Parts[idx]
	sess.mu.Unlock()
	s.emit(protocol.EventPartUpdated, protocol.EventProperties{SessionID: sess.id, Part: &part})
	return idx
}

// setToolState replaces a tool part's state (states are never changed in
// place, so copies handed out stay valid) and publishes it.
func (s *Server) setToolState(t *turn, idx int, st protocol.ToolState) {
	sess := t.sess
	sess.mu.Lock()
	p := &sess.t.Messages[t.msgIdx].Parts[idx]
	p.State = &st
	part := *p
	sess.mu.Unlock()
	s.emit(protocol.EventPartUpdated, protocol.EventProperties{SessionID: sess.id, Part: &part})
}

// finishTurn completes the assistant message, saves the transcript, frees
// the session for the next turn and publishes the end of the turn.
func (s *Server) finishTurn(t *turn, merr *protocol.MessageError) {
	sess := t.sess
	sess.mu.Lock()
	msg := &sess.t.Messages[t.msgIdx]
	msg.Info.Time.Completed = time.Now().UnixMilli()
	msg.Info.Tokens = t.tokens
	msg.Info.Error = merr
	t.result = copyMessage(*msg)
	info := t.result.Info
	sess.turn = nil
	sess.mu.Unlock()
	s.saveOrLog(sess)

	s.emit(protocol.EventMessageUpdated, protocol.EventProperties{SessionID: sess.id, Info: &info})
	if merr != nil {
		s.emit(protocol.EventSessionError, protocol.EventProperties{SessionID: sess.id, Error: merr})
	}
	s.emit(protocol.EventSessionIdle, protocol.EventProperties{SessionID: sess.id})
	close(t.done)
	attrs := []any{"session", sess.id, "message", info.ID, "tokens_in", info.Tokens.Input, "tokens_out", info.Tokens.Output,
		"took", time.Duration(info.Time.Completed-info.Time.Created) * time.Millisecond}
	if merr != nil {
		attrs = append(attrs, "error", merr.Name+": "+merr.Message)
	}
	s.log.Info("turn ended", attrs...)
}

// toolInput is a tool call's arguments as state.input: the JSON itself,
// or, when the model sent malformed JSON, that text as a JSON string.
func toolInput(args string) json.RawMessage {
	if strings.TrimSpace(args) == "" {
		return json.RawMessage("{}")
	}
	if json.Valid([]byte(args)) {
		return json.RawMessage(args)
	}
	b, _ := json.Marshal(args)
	return b
}

// toolTitle is a one-line summary of a tool call, e.g. "bash: ls -la".
func toolTitle(name, args string) string {
	var a map[string]any
	_ = json.Unmarshal([]byte(args), &a)
	var detail string
	switch name {
	case ToolBash:
		detail, _ = a["command"].(string)
	case ToolListFiles, ToolGrep:
		detail, _ = a["pattern"].(string)
	default:
		detail, _ = a["path"].(string)
	}
	detail = strings.Join(strings.Fields(detail), " ")
	if len(detail) > 120 {
		detail = truncateUTF8(detail, 120) + "…"
	}
	if detail == "" {
		return name
	}
	return name + ": " + detail
}
