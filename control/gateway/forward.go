package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"lap.dev/lap/control/gateway/mockllm"
)

// maxAnswerBytes bounds a whole (not streamed) upstream answer the gateway
// holds in memory to read its usage.
const maxAnswerBytes = 64 << 20

// recordTimeout bounds recording one request's usage after its answer.
const recordTimeout = 10 * time.Second

// mockBase is the base URL of requests to the mock models; the mock
// transport never dials it.
const mockBase = "http://mock.invalid"

// handleCompletion serves one of the model-calling routes in dialect d.
func (g *Gateway) handleCompletion(d *dialect) fiber.Handler {
	return func(c *fiber.Ctx) error {
		ctx := c.UserContext()
		// Authenticate before the body is read: lapd streams request
		// bodies, so a caller without a token never gets one buffered.
		who, aerr := g.authenticate(ctx, c)
		if aerr != nil {
			g.metrics.request("", "", aerr.status)
			return g.fail(c, d, aerr)
		}
		// fasthttp's buffer, not Fiber's copy of it: a 32 MiB body is held
		// once here and once in the clone that goes upstream.
		body := c.Request().Body()
		req, aerr := parseRequest(body)
		if aerr != nil {
			g.metrics.request(who.agentID, "", aerr.status)
			return g.fail(c, d, aerr)
		}
		model := req.model
		label, price, priced := g.prices.entry(model)
		if d.refuse != nil {
			if aerr := d.refuse(req); aerr != nil {
				g.metrics.request(who.agentID, label, aerr.status)
				return g.fail(c, d, aerr)
			}
		}

		base, client := g.upstream, g.client
		if mockllm.IsMock(model) {
			base, client = mockBase, g.mock
		} else if base == "" {
			g.metrics.request(who.agentID, label, http.StatusBadRequest)
			return g.fail(c, d, errBadRequest("no_upstream", fmt.Sprintf(
				"model %s needs an upstream LLM, but lapd has none: set LITELLM_API_BASE (and LITELLM_API_KEY) "+
					"for lapd, or use a mock model (%s) for an offline demo", model, strings.Join(mockllm.Models(), ", "))))
		}
		if !priced && !g.allowUnpriced {
			g.metrics.request(who.agentID, label, http.StatusBadRequest)
			return g.fail(c, d, errBadRequest("model_not_priced", fmt.Sprintf(
				"model %s has no price in lapd's price table, so what it spends could not count against budgets: "+
					"add it to LAP_PRICES_FILE, or set LAP_ALLOW_UNPRICED_MODELS=true for lapd to let models without a price run at $0",
				model)))
		}

		amount := 0.0
		if d.billed {
			amount = estimateUSD(price, len(body), req)
		}
		res, aerr := g.admit(ctx, who, amount)
		if aerr != nil {
			g.metrics.request(who.agentID, label, aerr.status)
			g.logf(slog.LevelInfo, "LLM request refused: budget spent or reserved", "agent", who.agentID, "session", who.sessionID, "model", model)
			if ra := retryAfter(aerr); ra != "" {
				c.Set(fiber.HeaderRetryAfter, ra)
			}
			return g.fail(c, d, aerr)
		}

		// The body is fasthttp's, valid only until the handler returns, and
		// the upstream call may outlive the handler (streams): copy it.
		body = bytes.Clone(body)
		dropUsageChunk := false
		if d == openAI && req.stream && !req.includeUsage {
			// Usage of a stream comes only in a last chunk the client asks
			// for; ask for it, and keep it from a client that did not.
			body, dropUsageChunk = withStreamUsage(body), true
		}

		// A stream outlives the handler, and with it any context a
		// middleware cancels when the handler returns; fasthttp does not
		// cancel on a client disconnect anyway (the relay notices that).
		// So the upstream call is bounded by LAP_LLM_TIMEOUT instead.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.timeout)
		upReq, err := http.NewRequestWithContext(uctx, http.MethodPost, base+d.path, bytes.NewReader(body))
		if err != nil {
			cancel()
			res.release()
			return g.fail(c, d, errInternal("build upstream request: "+err.Error()))
		}
		upReq.URL.RawQuery = forwardQuery(c, completionQuery)
		copyRequestHeaders(upReq.Header, c)
		if g.key != "" && client != g.mock {
			d.setKey(upReq.Header, g.key)
		}
		resp, err := client.Do(upReq)
		if err != nil {
			cancel()
			res.release()
			aerr := g.upstreamError(uctx, err)
			g.metrics.request(who.agentID, label, aerr.status)
			g.logf(slog.LevelWarn, "LLM upstream call failed", "model", model, "err", err)
			return g.fail(c, d, aerr)
		}
		c.Status(resp.StatusCode)
		copyResponseHeaders(c, resp)

		if resp.StatusCode/100 == 2 && isEventStream(resp.Header) {
			c.Set(fiber.HeaderCacheControl, "no-cache")
			c.Set("X-Accel-Buffering", "no")
			insp := d.newStream(dropUsageChunk)
			rec := g.recordFunc(ctx, d, who, model, label, price, priced, res)
			c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
				defer cancel()
				defer resp.Body.Close()
				err := relayEvents(w, resp.Body, insp.event, g.keepAlive)
				switch {
				case errors.Is(err, errClientGone):
					cancel() // stop the upstream generating for nobody
					g.logf(slog.LevelInfo, "LLM stream client went away; upstream call cancelled", "model", model, "agent", who.agentID)
				case err != nil:
					aerr := g.upstreamError(uctx, err)
					g.logf(slog.LevelWarn, "LLM upstream stream broke", "model", model, "err", err)
					w.Write(d.streamError(aerr))
					w.Flush()
				}
				u, ok := insp.usage()
				if !ok && d.billed {
					g.logf(slog.LevelWarn, "LLM stream ended without usage: charged its reservation", "model", model, "agent", who.agentID)
				}
				rec(resp.StatusCode, u, ok)
			})
			return nil
		}

		defer cancel()
		defer resp.Body.Close()
		answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes+1))
		if err == nil && len(answer) > maxAnswerBytes {
			err = fmt.Errorf("answer larger than %d bytes", maxAnswerBytes)
		}
		if err != nil {
			aerr := g.upstreamError(uctx, err)
			if resp.StatusCode/100 == 2 {
				// The upstream answered, and may have billed: charge the
				// reservation.
				g.recordFunc(ctx, d, who, model, label, price, priced, res)(aerr.status, Usage{}, false)
			} else {
				res.release()
				g.metrics.request(who.agentID, label, aerr.status)
			}
			g.logf(slog.LevelWarn, "read LLM upstream answer", "model", model, "err", err)
			c.Response().Header.Reset()
			return g.fail(c, d, aerr)
		}
		if resp.StatusCode/100 == 2 {
			u, ok := d.usage(answer)
			g.recordFunc(ctx, d, who, model, label, price, priced, res)(resp.StatusCode, u, ok)
		} else {
			res.release()
			g.metrics.request(who.agentID, label, resp.StatusCode)
			g.logf(slog.LevelInfo, "LLM upstream answered with an error", "model", model, "status", resp.StatusCode)
		}
		return c.Send(answer)
	}
}

// recordFunc returns the function that prices and records the usage of one
// answered request and settles its reservation. It runs after the handler
// has returned for streams, so it captures what it needs now, and records
// with a context the client's going away does not cancel: the tokens were
// spent all the same. An answer without usage (seen false) is charged its
// reservation. Requests that are not billed only release theirs.
func (g *Gateway) recordFunc(ctx context.Context, d *dialect, who caller, model, label string, price Price, priced bool,
	res *reservation) func(status int, u Usage, seen bool) {
	ctx = context.WithoutCancel(ctx)
	return func(status int, u Usage, seen bool) {
		g.metrics.request(who.agentID, label, status)
		if !d.billed {
			res.release()
			return
		}
		if !priced && (u.InputTokens > 0 || u.OutputTokens > 0) {
			g.warnUnpriced(model)
		}
		u.CostUSD = price.Cost(u)
		if !seen {
			u.CostUSD = max(u.CostUSD, res.amount)
		}
		g.metrics.usage(who.agentID, label, u)
		res.settle(func() {
			rctx, cancel := context.WithTimeout(ctx, recordTimeout)
			defer cancel()
			if err := g.usage.RecordUsage(rctx, who.sessionID, who.agentID, model, u); err != nil {
				g.log.Error("record LLM usage", "agent", who.agentID, "session", who.sessionID, "model", model, "err", err)
			}
		})
	}
}

// withStreamUsage sets stream_options.include_usage in a JSON request.
func withStreamUsage(body []byte) []byte {
	var out []byte
	var err error
	if so := gjson.GetBytes(body, "stream_options"); so.Exists() && !so.IsObject() {
		out, err = sjson.SetRawBytes(body, "stream_options", []byte(`{"include_usage":true}`))
	} else {
		out, err = sjson.SetBytes(body, "stream_options.include_usage", true)
	}
	if err != nil {
		return body // valid JSON object, checked before: cannot happen
	}
	return out
}

// upstreamError classifies a failed upstream call.
func (g *Gateway) upstreamError(ctx context.Context, err error) *apiError {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return errTimeout(fmt.Sprintf("the upstream LLM did not answer within %s (LAP_LLM_TIMEOUT)", g.timeout))
	}
	return errUpstream("the upstream LLM at LITELLM_API_BASE could not be reached: " + err.Error())
}

// fail answers with the gateway's own error e in dialect d.
func (g *Gateway) fail(c *fiber.Ctx, d *dialect, e *apiError) error {
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(e.status).Send(d.errorBody(e))
}

// forwardHeaders are the only request headers that go upstream: what the
// wire formats need (the body's type, Anthropic's version and beta
// features) and the SDKs' own descriptive headers. Everything else stays
// behind — the sandbox's token, and above all headers that choose what
// the real key bills or where it routes (OpenAI-Organization,
// OpenAI-Project, LiteLLM's x-litellm-*), which a sandbox must not pick.
var forwardHeaders = map[string]bool{
	"content-type": true, "accept": true, "user-agent": true,
	"anthropic-version": true, "anthropic-beta": true,
}

// forwardHeaderPrefixes are allowed by prefix: the Stainless-generated
// SDKs' (OpenAI's, Anthropic's) description of themselves and their
// retries.
var forwardHeaderPrefixes = []string{"x-stainless-"}

func copyRequestHeaders(h http.Header, c *fiber.Ctx) {
	c.Request().Header.VisitAll(func(k, v []byte) {
		name := string(k)
		lower := strings.ToLower(name)
		ok := forwardHeaders[lower]
		for _, p := range forwardHeaderPrefixes {
			ok = ok || strings.HasPrefix(lower, p)
		}
		if ok {
			h.Add(name, string(v))
		}
	})
}

// Query parameters that go upstream, per route; any other is dropped, as
// a query can choose billing as a header can (Azure-style api-version,
// LiteLLM's per-request settings).
var (
	// completionQuery: Anthropic's SDKs call beta features with ?beta=true.
	completionQuery = map[string]bool{"beta": true}
	// modelsQuery: the list's paging.
	modelsQuery = map[string]bool{"beta": true, "limit": true, "after_id": true, "before_id": true}
)

// forwardQuery returns the request's query string with only the allowed
// parameters.
func forwardQuery(c *fiber.Ctx, allowed map[string]bool) string {
	raw := c.Request().URI().QueryString()
	if len(raw) == 0 {
		return ""
	}
	q, err := url.ParseQuery(string(raw))
	if err != nil {
		return ""
	}
	for k := range q {
		if !allowed[k] {
			delete(q, k)
		}
	}
	return q.Encode()
}

// dropResponseHeaders are not relayed to the client: hop-by-hop headers,
// those fasthttp sets for the body it writes, and cookies.
var dropResponseHeaders = map[string]bool{
	"content-length": true, "content-encoding": true, "transfer-encoding": true, "connection": true,
	"keep-alive": true, "proxy-connection": true, "te": true, "trailer": true, "upgrade": true,
	"set-cookie": true, "date": true, "server": true,
}

func copyResponseHeaders(c *fiber.Ctx, resp *http.Response) {
	for name, values := range resp.Header {
		if dropResponseHeaders[strings.ToLower(name)] {
			continue
		}
		for _, v := range values {
			c.Response().Header.Add(name, v)
		}
	}
}

func isEventStream(h http.Header) bool {
	return strings.HasPrefix(strings.ToLower(h.Get("Content-Type")), "text/event-stream")
}

// statusLabel is a status code as a metrics label.
func statusLabel(status int) string { return strconv.Itoa(status) }
