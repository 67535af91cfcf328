package control

import (
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
	sess, err := s.o.openSession(ctx, a, req)
	if err != nil {
		return err
	}
	return c.Status(http.StatusCreated).JSON(lapSession(c, s.o.apiSession(ctx, sess, a.Name)))
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
		out = append(out, lapSession(c, s.o.apiSession(ctx, sess, name)))
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
		if sess, err = s.o.awaitReady(ctx, sess, timeout); err != nil {
			return err
		}
	}
	return c.JSON(lapSession(c, s.o.apiSession(ctx, sess, "")))
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
	return c.JSON(fiber.Map{"aborted": s.o.abortTurn(sess.ID, abortUser)})
}

func (s *Server) restartSession(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	if sess, err = s.o.restartSession(ctx, sess.ID); err != nil {
		return err
	}
	return c.Status(http.StatusAccepted).JSON(lapSession(c, s.o.apiSession(ctx, sess, "")))
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
	d, err := s.o.diagnose(ctx, sess)
	if err != nil {
		return err
	}
	return c.JSON(d)
}
