package control

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/gofiber/fiber/v2"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes/protocol"
	"lap.dev/lap/store"
)

// passHeaders are the request headers passed on to the harness; the
// master key is never among them (the harness gets its own token).
var passHeaders = []string{fiber.HeaderContentType, fiber.HeaderAccept, "Last-Event-ID"}

// passThrough is ALL /sessions/:id/opencode/*: the session's harness API
// for opencode-compatible clients (LAP's CLI chats through it). A turn
// sent to the session's own harness session (POST session/:sid/message
// or prompt_async) is a turn of lapd's like POST /message: logged,
// reserved (so the idle reaper leaves it alone), and resumed or recovered
// with its sandbox. Everything else is relayed as is, as it streams (so
// GET /event works too), once lapd has authenticated the caller and
// brought the sandbox up. A harness session id the session had before a
// resume or a new sandbox is routed to the current one, so a client that
// read it once keeps working.
func (s *Server) passThrough(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	rest := c.Params("*")
	hsID, op, own := harnessRoute(rest)
	own = own && ownsHarnessSession(sess, hsID)
	if own && c.Method() == fiber.MethodPost && (op == "message" || op == "prompt_async") {
		return s.passTurn(c, sess, hsID, op == "prompt_async")
	}
	// An abort of the session's own harness session ends lapd's turn the
	// way POST /abort does (also before the harness has the message);
	// with none running it goes to the harness, which may run a turn a
	// client started elsewhere.
	if own && c.Method() == fiber.MethodPost && op == "abort" && s.o.abortTurn(sess.ID, abortUser) {
		return c.JSON(true)
	}
	tgt, err := s.o.passTarget(ctx, sess)
	if err != nil {
		return err
	}
	// The path, with a harness session id of the session's own routed to
	// the current one.
	pathOn := func(tgt target) string {
		path := "/" + rest
		if own {
			path = "/session/" + tgt.sessionID + strings.TrimPrefix(rest, "session/"+hsID)
		}
		if q := string(c.Request().URI().QueryString()); q != "" {
			path += "?" + q
		}
		return path
	}
	// A plain request in flight is activity, like a turn; an event stream
	// is not (a watching client would keep the sandbox up for ever).
	if !strings.Contains(c.Get(fiber.HeaderAccept), "text/event-stream") && !(c.Method() == fiber.MethodGet && rest == "event") {
		defer s.o.passing(ctx, sess.ID)()
	}
	pctx, cancel := context.WithCancel(ctx)
	resp, err := s.passSend(pctx, c, tgt, pathOn(tgt))
	if err != nil && notSent(err) {
		// The harness is not running (crashed, or lapd restarted
		// without it): bring it back and send once more; it never saw
		// the request, so nothing runs twice.
		s.o.log.Info("pass-through: harness not answering; resuming", "session", sess.ID, "err", err)
		if tgt, err = s.o.passRecover(ctx, sess.ID); err == nil {
			resp, err = s.passSend(pctx, c, tgt, pathOn(tgt))
		}
	}
	if err != nil {
		cancel()
		if known(err) {
			return err
		}
		return harnessFailure("session %s: harness unreachable: %v", sess.ID, err)
	}
	return relay(c, resp, cancel, sess.ID)
}

// passSend sends c's request to path on tgt's harness.
func (s *Server) passSend(ctx context.Context, c *fiber.Ctx, tgt target, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, c.Method(), tgt.endpoint.URL+path, bytes.NewReader(c.Body()))
	if err != nil {
		return nil, badRequest("bad pass-through path %q: %v", path, err)
	}
	tgt.endpoint.Apply(req)
	for _, h := range passHeaders {
		if v := c.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	if tgt.token != "" {
		req.Header.Set("Authorization", "Bearer "+tgt.token)
	}
	return s.o.harness.Do(req)
}

// harnessRoute splits a harness API path "session/<sid>[/<op>…]" into
// the harness session id and the operation; ok is false for other paths.
func harnessRoute(rest string) (hsID, op string, ok bool) {
	after, found := strings.CutPrefix(rest, "session/")
	if !found {
		return "", "", false
	}
	hsID, op, _ = strings.Cut(after, "/")
	return hsID, op, hsID != ""
}

// ownsHarnessSession says whether hsID is (or was) the harness session
// lapd opened for sess, rather than one a client opened for itself.
func ownsHarnessSession(sess store.Session, hsID string) bool {
	return hsID == sess.HarnessSessionID || slices.Contains(sess.PriorHarnessSessionIDs, hsID)
}

// passTurn runs a turn sent through the pass-through to the session's
// harness session hsID as lapd's own: the body is the harness's
// {parts, model?}; message answers the harness's {info, parts} when the
// turn ends, prompt_async 204 at once while the turn goes on (its
// outcome is in the log, its events on /event). The answer names hsID,
// the session the client addressed.
func (s *Server) passTurn(c *fiber.Ctx, sess store.Session, hsID string, async bool) error {
	ctx := c.UserContext()
	var req protocol.SendMessageRequest
	if err := decodeBody(c, &req, true); err != nil {
		return err
	}
	parts, err := messageParts(api.SendMessageRequest{Parts: req.Parts})
	if err != nil {
		return err
	}
	model := ""
	if m := req.Model; m != nil && m.ModelID != "" {
		model = m.ModelID
		if m.ProviderID != "" {
			model = m.ProviderID + "/" + m.ModelID
		}
		var p problems
		validateModel(&p, model)
		if err := p.err(); err != nil {
			return err
		}
	}
	t, err := s.o.beginTurn(ctx, sess, parts, model)
	if err != nil {
		return err
	}
	if async {
		// The caller does not wait: the turn is bounded by the turn
		// timeout, aborts and lapd's shutdown, not by the request.
		go func() { _, _ = t.run(context.WithoutCancel(ctx)) }()
		return c.SendStatus(http.StatusNoContent)
	}
	msg, err := t.run(ctx)
	if err != nil {
		return err
	}
	msg.Info.SessionID = hsID
	for i := range msg.Parts {
		msg.Parts[i].SessionID = hsID
	}
	return c.JSON(msg)
}

// passing counts a pass-through request in flight on session id until the
// returned func is called; the idle reaper leaves such a session alone.
func (o *orchestrator) passing(ctx context.Context, id string) (done func()) {
	o.mu.Lock()
	if o.inFlight == nil {
		o.inFlight = map[string]int{}
	}
	o.inFlight[id]++
	o.mu.Unlock()
	return func() {
		o.mu.Lock()
		if o.inFlight[id]--; o.inFlight[id] <= 0 {
			delete(o.inFlight, id)
		}
		o.mu.Unlock()
		o.touch(context.WithoutCancel(ctx), id)
	}
}

// relay answers c with the harness's response resp: a plain answer in
// one piece, an event stream as it comes, until the client leaves.
// cancel ends the harness request once the relay is done.
func relay(c *fiber.Ctx, resp *http.Response, cancel context.CancelFunc, sessionID string) error {
	c.Status(resp.StatusCode)
	for _, h := range []string{fiber.HeaderContentType, fiber.HeaderCacheControl} {
		if v := resp.Header.Get(h); v != "" {
			c.Set(h, v)
		}
	}
	if !strings.HasPrefix(resp.Header.Get(fiber.HeaderContentType), "text/event-stream") {
		defer cancel()
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return harnessFailure("session %s: reading the harness answer: %v", sessionID, err)
		}
		return c.Send(body)
	}
	c.Set("X-Accel-Buffering", "no")
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel()
		defer resp.Body.Close()
		buf := make([]byte, 32<<10)
		for {
			n, rerr := resp.Body.Read(buf)
			if n > 0 {
				if _, err := w.Write(buf[:n]); err != nil {
					return
				}
				if err := w.Flush(); err != nil {
					return // the client left: cancel the harness request
				}
			}
			if rerr != nil {
				return
			}
		}
	})
	return nil
}
