package control

import (
	"bufio"
	"context"
	"time"

	"github.com/gofiber/fiber/v2"

	"lap.dev/lap/control/api"
)

// pingInterval is how often idle SSE streams get a keep-alive comment;
// a failed write is also how a gone client is noticed.
const pingInterval = 15 * time.Second

func setSSEHeaders(c *fiber.Ctx) {
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set(fiber.HeaderConnection, "keep-alive")
	c.Set("X-Accel-Buffering", "no")
}

// streamMessage is POST /sessions/:id/message_stream: the turn as SSE —
// ready, harness_event…, then done (the logged assistant message) or
// error. A client that goes away aborts the turn; its outcome is still
// logged.
func (s *Server) streamMessage(c *fiber.Ctx) error {
	// Validation, the 409 for a busy session and the pending user message
	// happen before the stream starts, so they answer as plain JSON.
	t, err := s.startTurnFromRequest(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(c.UserContext())
	out := make(chan sseEvent, 1024)
	t.sink = func(ev sseEvent) {
		ev = typedFrame(ev)
		if ev.name == api.EventHarness {
			select {
			case out <- ev:
			default: // a client this far behind loses deltas, not the turn
			}
			return
		}
		out <- ev
	}
	go func() {
		defer close(out)
		msg, err := t.run(ctx)
		if err != nil {
			_, detail := classify(err)
			out <- typedFrame(newEvent(api.EventError, detail))
			return
		}
		out <- typedFrame(newEvent(api.EventDone, msg))
	}()
	setSSEHeaders(c)
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel()
		tick := time.NewTicker(s.pingInterval)
		defer tick.Stop()
		gone := false
		for {
			var err error
			select {
			case ev, ok := <-out:
				if !ok {
					return
				}
				if !gone {
					err = writeSSE(w, ev)
				}
			case <-tick.C:
				if !gone {
					err = writePing(w)
				}
			}
			if err != nil && !gone {
				// Keep draining until the turn has recorded its end.
				gone = true
				t.abort(abortClientGone)
			}
		}
	})
	return nil
}

// typedFrame gives a message_stream event its name as "type" in its data,
// as the LiteLLM Agent Platform's frames have (api.HarnessFrame): a
// harness event is wrapped, any other (a JSON object) gains the field.
func typedFrame(ev sseEvent) sseEvent {
	if ev.name == api.EventHarness {
		data := make([]byte, 0, len(ev.data)+40)
		data = append(data, `{"type":"`+api.EventHarness+`","event":`...)
		data = append(data, ev.data...)
		ev.data = append(data, '}')
		return ev
	}
	if len(ev.data) < 2 || ev.data[0] != '{' {
		return ev
	}
	data := make([]byte, 0, len(ev.data)+len(ev.name)+12)
	data = append(data, `{"type":"`...)
	data = append(data, ev.name...)
	data = append(data, '"')
	if rest := ev.data[1:]; rest[0] != '}' {
		data = append(data, ',')
	}
	ev.data = append(data, ev.data[1:]...)
	return ev
}

// sessionEvents is GET /sessions/:id/events: the session's live bus —
// its current state first, then status and phase changes, messages and
// harness events — until the client leaves, the session ends or lapd
// stops.
func (s *Server) sessionEvents(c *fiber.Ctx) error {
	ctx := c.UserContext()
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		return err
	}
	sub := s.o.bus.subscribe(sess.ID)
	first := newEvent(api.EventSession, s.o.apiSession(ctx, sess, ""))
	setSSEHeaders(c)
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer s.o.bus.unsubscribe(sess.ID, sub)
		if writeSSE(w, first) != nil || sess.Status == api.SessionDead {
			return
		}
		tick := time.NewTicker(s.pingInterval)
		defer tick.Stop()
		for {
			select {
			case ev, ok := <-sub.ch:
				if !ok || writeSSE(w, ev) != nil || ev.last {
					return
				}
			case <-tick.C:
				if writePing(w) != nil {
					return
				}
			}
		}
	})
	return nil
}
