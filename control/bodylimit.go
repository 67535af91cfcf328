package control

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/gofiber/fiber/v2"

	"lap.dev/lap/control/api"
)

// Request bodies are streamed (fiber.Config.StreamRequestBody): fasthttp
// reads a request's headers and at most 8 KiB of its body before routing,
// and a handler reads the rest when it asks for the body. So a body is
// read only after its caller is authenticated (the master key by
// authExcept, a sandbox token by the gateway's handler), only up to its
// route's limit, and only while the bytes of all bodies being read stay
// under maxBodyBytesInFlight.
const (
	// maxBodyBytesInFlight bounds the request bytes lapd holds at once,
	// by Content-Length: enough for eight 32 MiB LLM requests, or 256
	// management requests.
	maxBodyBytesInFlight = 256 << 20
	// drainLimit is the largest unread body that is read and discarded
	// after an early answer (401, 413), so that a client still sending it
	// reads the answer; the connection of a larger one is closed instead.
	drainLimit = 8 << 20
)

// bodyLimiter enforces body limits per route and the bound on bytes in
// flight.
type bodyLimiter struct {
	// limits are the route groups' own limits; every other route has
	// maxBodyBytes.
	limits []prefixLimit

	mu       sync.Mutex
	max      int64 // maxBodyBytesInFlight; tests lower it
	inFlight int64
}

type prefixLimit struct {
	prefix string
	limit  int
}

func newBodyLimiter(groups []RouteGroup) *bodyLimiter {
	b := &bodyLimiter{max: maxBodyBytesInFlight}
	for _, g := range groups {
		if g.BodyLimit > 0 {
			b.limits = append(b.limits, prefixLimit{strings.TrimSuffix(g.Prefix, "/"), g.BodyLimit})
		}
	}
	return b
}

// limitFor is the body limit of path.
func (b *bodyLimiter) limitFor(path string) int {
	for _, l := range b.limits {
		if path == l.prefix || strings.HasPrefix(path, l.prefix+"/") {
			return l.limit
		}
	}
	return maxBodyBytes
}

func (b *bodyLimiter) acquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inFlight+n > b.max {
		return false
	}
	b.inFlight += n
	return true
}

func (b *bodyLimiter) release(n int64) {
	b.mu.Lock()
	b.inFlight -= n
	b.mu.Unlock()
}

// settle is the first of the two middlewares: it runs before
// authentication, so that a body left unread by an early answer (a 401
// from authExcept too) is dealt with (see finish).
func (b *bodyLimiter) settle(c *fiber.Ctx) error {
	err := c.Next()
	b.finish(c)
	return err
}

// limit is the second: it runs after the master-key check, and before
// the route groups that authenticate their own callers, which read the
// body only once they have.
func (b *bodyLimiter) limit(c *fiber.Ctx) error {
	h := &c.Request().Header
	if enc := strings.TrimSpace(string(h.Peek(fiber.HeaderContentEncoding))); enc != "" && !strings.EqualFold(enc, "identity") {
		// Fiber would inflate it in full, whatever its limit: a few KiB
		// can become gigabytes.
		return newAPIError(http.StatusUnsupportedMediaType, api.CodeUnsupportedMedia,
			"request bodies with Content-Encoding %q are not accepted; send them uncompressed", clipHeader(enc))
	}
	length := h.ContentLength() // -1: chunked; -2: no body
	if length == 0 || length == -2 {
		return c.Next()
	}
	limit := b.limitFor(c.Path())
	if length > limit {
		return tooLarge(limit)
	}
	weight := int64(length)
	if length < 0 {
		weight = int64(limit) // chunked: its length is known only once read
	}
	if !b.acquire(weight) {
		c.Set(fiber.HeaderRetryAfter, "1")
		return newAPIError(http.StatusServiceUnavailable, api.CodeUnavailable,
			"lapd is reading %d MiB of request bodies already; retry shortly", maxBodyBytesInFlight>>20)
	}
	defer b.release(weight)
	if length < 0 {
		// A chunked body is read here, up to the limit, so that the
		// handler's c.Body() cannot read more: before a route group's own
		// authentication, then, but bounded by the weight just taken.
		buf, err := io.ReadAll(io.LimitReader(c.Request().BodyStream(), int64(limit)+1))
		if err != nil {
			return newAPIError(http.StatusBadRequest, api.CodeBadRequest, "read request body: %v", err)
		}
		if len(buf) > limit {
			return tooLarge(limit)
		}
		c.Request().SetBodyRaw(buf)
	}
	return c.Next()
}

// finish deals with a body the handler did not read (an early answer):
// a small one is discarded, so the client still sending it reads the
// answer and the connection can carry the next request; a larger one's
// connection is closed.
func (b *bodyLimiter) finish(c *fiber.Ctx) {
	req := c.Request()
	if !req.IsBodyStream() {
		return
	}
	length := req.Header.ContentLength()
	if length >= 0 && length <= drainLimit {
		if _, err := io.Copy(io.Discard, io.LimitReader(req.BodyStream(), drainLimit)); err == nil {
			return
		}
	}
	c.Response().Header.SetConnectionClose()
}

func tooLarge(limit int) error {
	return newAPIError(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body is larger than %d bytes", limit)
}

// clipHeader bounds a header value quoted in an error message.
func clipHeader(v string) string {
	if len(v) > 32 {
		v = v[:32]
	}
	return string(bytes.ToValidUTF8([]byte(v), nil))
}
