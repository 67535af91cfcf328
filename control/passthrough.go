package control

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"

	"github.com/gofiber/fiber/v2"
)

// passHeaders are the request headers passed on to the harness; the
// master key is never among them (the harness gets its own token).
var passHeaders = []string{fiber.HeaderContentType, fiber.HeaderAccept, "Last-Event-ID"}

// passThrough is ALL /sessions/:id/opencode/*: the session's harness API
// as is, for opencode-compatible clients. lapd authenticates the caller,
// brings the sandbox up if it is idle, and relays the answer as it
// streams (so GET /event works too).
func (s *Server) passThrough(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	tgt, err := s.o.passTarget(ctx, sess)
	if err != nil {
		return err
	}

	path := "/" + c.Params("*")
	if q := string(c.Request().URI().QueryString()); q != "" {
		path += "?" + q
	}
	pctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(pctx, c.Method(), tgt.endpoint.URL+path, bytes.NewReader(c.Body()))
	if err != nil {
		cancel()
		return badRequest("bad pass-through path %q: %v", path, err)
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
	resp, err := s.o.harness.hc.Do(req)
	if err != nil {
		cancel()
		return harnessFailure("session %s: harness unreachable: %v", sess.ID, err)
	}
	return relay(c, resp, cancel, sess.ID)
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
