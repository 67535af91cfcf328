package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"

	"lap.dev/lap/control/api"
	"lap.dev/lap/store"
)

// maxWait bounds GET /sessions/:id?wait=ready.
const maxWait = 10 * time.Minute

var sessionStatuses = []string{api.SessionCreating, api.SessionReady, api.SessionIdle, api.SessionFailed, api.SessionDead}

// resolveSession finds the session a path names by id or short id.
func (o *orchestrator) resolveSession(ctx context.Context, ref string) (store.Session, error) {
	sess, err := o.store.ResolveSession(ctx, ref)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return sess, notFound("session %s not found", ref)
	case errors.Is(err, store.ErrConflict):
		return sess, ambiguous(err, ref, "session")
	}
	return sess, err
}

func (s *Server) createSession(c *fiber.Ctx) error {
	ctx := c.UserContext()
	a, err := s.o.resolveAgent(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	var req api.CreateSessionRequest
	if err := decodeBody(c, &req, false); err != nil {
		return err
	}
	var p problems
	validateTitle(&p, req.Title)
	validateBudget(&p, req.MaxBudgetUSD)
	if err := p.err(); err != nil {
		return err
	}
	if s.o.draining.Load() {
		return unavailable("lapd is shutting down; retry shortly")
	}
	sess, err := s.o.openSession(ctx, a, req)
	if err != nil {
		return err
	}
	return c.Status(http.StatusCreated).JSON(s.o.apiSession(ctx, sess, a.Name))
}

func (s *Server) listSessions(c *fiber.Ctx) error {
	ctx := c.UserContext()
	page, err := pageParams(c)
	if err != nil {
		return err
	}
	f := store.SessionFilter{Page: page, Status: c.Query("status")}
	if f.Status != "" && !slices.Contains(sessionStatuses, f.Status) {
		return badRequest("status %q must be one of %v", f.Status, sessionStatuses)
	}
	if ref := c.Query("agent_id"); ref != "" {
		a, err := s.o.resolveAgent(ctx, ref)
		if err != nil {
			return err
		}
		f.AgentID = a.ID
	}
	list, next, err := s.store.ListSessions(ctx, f)
	if err != nil {
		return err
	}
	names := map[string]string{}
	out := make([]api.Session, 0, len(list))
	for _, sess := range list {
		name, ok := names[sess.AgentID]
		if !ok {
			if a, err := s.store.GetAgent(ctx, sess.AgentID); err == nil {
				name = a.Name
			}
			names[sess.AgentID] = name
		}
		out = append(out, s.o.apiSession(ctx, sess, name))
	}
	return c.JSON(api.List[api.Session]{Data: out, NextCursor: next})
}

func (s *Server) getSession(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	if wait := c.Query("wait"); wait != "" {
		if wait != "ready" {
			return badRequest("wait=%q: only wait=ready is supported", wait)
		}
		timeout := time.Minute
		if v := c.Query("timeout"); v != "" {
			if timeout, err = time.ParseDuration(v); err != nil || timeout <= 0 || timeout > maxWait {
				return badRequest("timeout=%q must be a duration up to %s, e.g. 60s", v, maxWait)
			}
		}
		if sess.Status == api.SessionCreating {
			wctx, cancel := context.WithTimeout(ctx, timeout)
			got, err := s.o.waitReady(wctx, sess.ID)
			cancel()
			switch {
			case err == nil, got.ID != "" && (got.Status == api.SessionFailed || got.Status == api.SessionDead):
				sess = got
			case errors.Is(err, context.DeadlineExceeded):
				// Still creating: answer with what it is now.
				if sess, err = s.store.GetSession(ctx, sess.ID); err != nil {
					return err
				}
			default:
				return err
			}
		}
	}
	return c.JSON(s.o.apiSession(ctx, sess, ""))
}

func (s *Server) deleteSession(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	if err := s.o.endSession(ctx, sess.ID); err != nil {
		return err
	}
	return c.SendStatus(http.StatusNoContent)
}

func (s *Server) sendMessage(c *fiber.Ctx) error {
	ctx := c.UserContext()
	t, err := s.startTurnFromRequest(c)
	if err != nil {
		return err
	}
	msg, err := t.run(ctx)
	if err != nil {
		return err
	}
	return c.JSON(msg)
}

// startTurnFromRequest validates a send-message request and begins the
// turn (its user message logged as pending).
func (s *Server) startTurnFromRequest(c *fiber.Ctx) (*turn, error) {
	ctx := c.UserContext()
	var req api.SendMessageRequest
	if err := decodeBody(c, &req, true); err != nil {
		return nil, err
	}
	parts, err := messageParts(req)
	if err != nil {
		return nil, err
	}
	if req.Model != "" {
		var p problems
		validateModel(&p, req.Model)
		if err := p.err(); err != nil {
			return nil, err
		}
	}
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return nil, err
	}
	return s.o.beginTurn(ctx, sess, parts, req.Model)
}

func (s *Server) listMessages(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	var after int64
	if v := c.Query("cursor", c.Query("after")); v != "" {
		if after, err = strconv.ParseInt(v, 10, 64); err != nil || after < 0 {
			return badRequest("cursor %q must be a message seq", v)
		}
	}
	limit := 0
	if v := c.Query("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > store.MaxLimit {
			return badRequest("limit %q must be an integer from 1 to %d", v, store.MaxLimit)
		}
	}
	msgs, err := s.store.ListMessages(ctx, sess.ID, after, limit)
	if err != nil {
		return err
	}
	out := make([]api.Message, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, renderMessage(m))
	}
	next := ""
	if limit > 0 && len(msgs) == limit {
		next = strconv.FormatInt(msgs[len(msgs)-1].Seq, 10)
	}
	return c.JSON(api.List[api.Message]{Data: out, NextCursor: next})
}

func (s *Server) abortSession(c *fiber.Ctx) error {
	sess, err := s.o.resolveSession(c.UserContext(), c.Params("id"))
	if err != nil {
		return err
	}
	s.o.mu.Lock()
	t := s.o.active[sess.ID]
	s.o.mu.Unlock()
	if t != nil {
		t.abort(abortUser)
	}
	return c.JSON(fiber.Map{"aborted": t != nil})
}

func (s *Server) restartSession(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	release, err := s.o.reserve(sess.ID, nil)
	if err != nil {
		return err
	}
	defer release()
	if _, sess, err = s.o.mark(ctx, sess.ID, restarting()); err != nil {
		return err
	}
	s.o.goBackground(func(ctx context.Context) {
		s.o.provisionSession(ctx, sess.ID, phaseProvisioning)
	})
	return c.Status(http.StatusAccepted).JSON(s.o.apiSession(ctx, sess, ""))
}

// timeline merges the session's status/phase log with its messages.
func (o *orchestrator) timeline(ctx context.Context, id string) ([]api.LogEntry, error) {
	entries, err := o.store.ListLog(ctx, id, 0)
	if err != nil {
		return nil, err
	}
	out := make([]api.LogEntry, 0, len(entries))
	for _, e := range entries {
		out = append(out, api.LogEntry(e))
	}
	msgs, err := o.store.ListMessages(ctx, id, 0, 0)
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		line := fmt.Sprintf("%s message %d %s", m.Role, m.Seq, m.Status)
		if m.Error != nil {
			line += fmt.Sprintf(": %s: %s", m.Error.Name, m.Error.Message)
		}
		out = append(out, api.LogEntry{Time: m.UpdatedAt, Kind: "message", Message: line})
	}
	slices.SortStableFunc(out, func(a, b api.LogEntry) int { return a.Time.Compare(b.Time) })
	return out, nil
}

func (s *Server) sessionLog(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	tl, err := s.o.timeline(ctx, sess.ID)
	if err != nil {
		return err
	}
	return c.JSON(api.List[api.LogEntry]{Data: tl})
}

func (s *Server) diagnose(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	d := api.Diagnosis{Session: s.o.apiSession(ctx, sess, "")}
	if a, err := s.store.GetAgent(ctx, sess.AgentID); err == nil {
		d.Agent = apiAgent(a)
	} else {
		d.Hints = append(d.Hints, "the session's agent no longer exists")
	}
	if d.Timeline, err = s.o.timeline(ctx, sess.ID); err != nil {
		return err
	}
	msgs, err := s.store.ListMessages(ctx, sess.ID, 0, 0)
	if err != nil {
		return err
	}
	d.Messages = make([]api.MessageStatus, 0, len(msgs))
	for _, m := range msgs {
		ms := api.MessageStatus{Seq: m.Seq, Role: m.Role, Status: m.Status}
		if rm := renderMessage(m); rm.Info.Error != nil {
			ms.Error = rm.Info.Error.Name + ": " + rm.Info.Error.Message
		}
		d.Messages = append(d.Messages, ms)
	}
	if sess.SandboxID != "" {
		s.o.diagnoseSandbox(ctx, &d, sess)
	}
	switch sess.Status {
	case api.SessionFailed:
		d.Hints = append(d.Hints, fmt.Sprintf("the session failed (%s); POST %s/sessions/%s/restart starts it on a new sandbox with its history", sess.FailureReason, api.BasePath, sess.ID))
	case api.SessionCreating:
		d.Hints = append(d.Hints, fmt.Sprintf("the session is being created (phase %q); it fails if not ready within SESSION_CREATING_TIMEOUT (%s)", sess.Phase, s.cfg.SessionCreatingTimeout))
	case api.SessionIdle:
		d.Hints = append(d.Hints, "the sandbox is scaled to zero; the next message resumes it")
	}
	s.o.mu.Lock()
	if s.o.active[sess.ID] != nil {
		d.Hints = append(d.Hints, "a turn is running now")
	}
	s.o.mu.Unlock()
	return c.JSON(d)
}

// diagnoseSandbox adds what the store, the backend and the harness say
// about the session's sandbox; each probe is bounded.
func (o *orchestrator) diagnoseSandbox(ctx context.Context, d *api.Diagnosis, sess store.Session) {
	sb, err := o.store.GetSandbox(ctx, sess.SandboxID)
	if err != nil {
		d.Hints = append(d.Hints, "the session's sandbox record is missing: "+err.Error())
		return
	}
	d.Sandbox = map[string]any{"id": sb.ID, "state": sb.State, "role": sb.Role, "generation": sb.Generation,
		"created_at": sb.CreatedAt, "updated_at": sb.UpdatedAt, "backend": o.backend.Name()}
	if sb.Error != "" {
		d.Sandbox["error"] = sb.Error
	}
	bsb, err := backendRecord(sb)
	if err != nil {
		d.Hints = append(d.Hints, err.Error())
		return
	}
	d.Sandbox["running"], d.Sandbox["endpoint"] = bsb.Running, bsb.Endpoint.URL
	probe, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if logs, err := o.backend.Logs(probe, bsb, 4096); err == nil {
		d.LogTail = logs
	} else {
		d.Sandbox["logs_error"] = err.Error()
	}
	if !bsb.Running {
		return
	}
	if id, err := o.harness.identity(probe, targetOf(sb, bsb, "")); err == nil {
		d.Harness = map[string]any{"reachable": true, "harness": id.Harness, "version": id.Version, "ready": id.Ready, "workspace": id.Workspace}
		if id.Error != "" {
			d.Harness["error"] = id.Error
			d.Hints = append(d.Hints, "the harness reports: "+id.Error)
		}
	} else {
		d.Harness = map[string]any{"reachable": false, "error": err.Error()}
		d.Hints = append(d.Hints, "the harness does not answer; the next message restarts it")
	}
}
