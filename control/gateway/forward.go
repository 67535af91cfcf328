package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
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
		who, aerr := g.authenticate(ctx, c)
		if aerr != nil {
			g.metrics.request("", "", aerr.status)
			return g.fail(c, d, aerr)
		}
		body := c.Body()
		if !isJSONObject(body) {
			g.metrics.request(who.agentID, "", http.StatusBadRequest)
			return g.fail(c, d, errBadRequest("invalid_json", "the request body is not a JSON object"))
		}
		model := gjson.GetBytes(body, "model").String()
		if model == "" {
			g.metrics.request(who.agentID, "", http.StatusBadRequest)
			return g.fail(c, d, errBadRequest("missing_model", "the request names no model"))
		}
		if d.billed {
			if aerr := g.checkBudget(ctx, who); aerr != nil {
				g.metrics.request(who.agentID, g.modelLabel(model), aerr.status)
				g.log.Info("LLM request refused: budget spent", "agent", who.agentID, "session", who.sessionID, "model", model)
				return g.fail(c, d, aerr)
			}
		}

		base, client := g.upstream, g.client
		if mockllm.IsMock(model) {
			base, client = mockBase, g.mock
		} else if base == "" {
			g.metrics.request(who.agentID, g.modelLabel(model), http.StatusBadRequest)
			return g.fail(c, d, errBadRequest("no_upstream", fmt.Sprintf(
				"model %s needs an upstream LLM, but lapd has none: set LITELLM_API_BASE (and LITELLM_API_KEY) "+
					"for lapd, or use a mock model (%s) for an offline demo", model, strings.Join(mockllm.Models(), ", "))))
		}

		// The body is fasthttp's, valid only until the handler returns, and
		// the upstream call may outlive the handler (streams): copy it.
		body = bytes.Clone(body)
		dropUsageChunk := false
		if d == openAI && gjson.GetBytes(body, "stream").Bool() &&
			!gjson.GetBytes(body, "stream_options.include_usage").Bool() {
			// Usage of a stream comes only in a last chunk the client asks
			// for; ask for it, and keep it from a client that did not.
			body, dropUsageChunk = withStreamUsage(body), true
		}

		// A stream outlives the handler, and with it any context a
		// middleware cancels when the handler returns; fasthttp does not
		// cancel on a client disconnect anyway (the relay notices that).
		// So the upstream call is bounded by LAP_LLM_TIMEOUT instead.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.timeout)
		req, err := http.NewRequestWithContext(uctx, http.MethodPost, base+d.path, bytes.NewReader(body))
		if err != nil {
			cancel()
			return g.fail(c, d, errInternal("build upstream request: "+err.Error()))
		}
		if q := c.Request().URI().QueryString(); len(q) > 0 {
			req.URL.RawQuery = string(q)
		}
		copyRequestHeaders(req.Header, c)
		if g.key != "" && client != g.mock {
			d.setKey(req.Header, g.key)
		}
		resp, err := client.Do(req)
		if err != nil {
			cancel()
			aerr := g.upstreamError(uctx, err)
			g.metrics.request(who.agentID, g.modelLabel(model), aerr.status)
			g.log.Warn("LLM upstream call failed", "model", model, "err", err)
			return g.fail(c, d, aerr)
		}
		c.Status(resp.StatusCode)
		copyResponseHeaders(c, resp)

		if resp.StatusCode/100 == 2 && isEventStream(resp.Header) {
			c.Set(fiber.HeaderCacheControl, "no-cache")
			c.Set("X-Accel-Buffering", "no")
			insp := d.newStream(dropUsageChunk)
			rec := g.recordFunc(ctx, d, who, model)
			c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
				defer cancel()
				defer resp.Body.Close()
				err := relayEvents(w, resp.Body, insp.event, g.keepAlive)
				switch {
				case errors.Is(err, errClientGone):
					cancel() // stop the upstream generating for nobody
					g.log.Info("LLM stream client went away; upstream call cancelled", "model", model, "agent", who.agentID)
				case err != nil:
					aerr := g.upstreamError(uctx, err)
					g.log.Warn("LLM upstream stream broke", "model", model, "err", err)
					w.Write(d.streamError(aerr))
					w.Flush()
				}
				u, ok := insp.usage()
				if !ok {
					g.log.Warn("LLM stream ended without usage", "model", model, "agent", who.agentID)
				}
				rec(resp.StatusCode, u)
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
			g.metrics.request(who.agentID, g.modelLabel(model), aerr.status)
			g.log.Warn("read LLM upstream answer", "model", model, "err", err)
			c.Response().Header.Reset()
			return g.fail(c, d, aerr)
		}
		if resp.StatusCode/100 == 2 {
			u, _ := d.usage(answer)
			g.recordFunc(ctx, d, who, model)(resp.StatusCode, u)
		} else {
			g.metrics.request(who.agentID, g.modelLabel(model), resp.StatusCode)
			g.log.Info("LLM upstream answered with an error", "model", model, "status", resp.StatusCode)
		}
		return c.Send(answer)
	}
}

// recordFunc returns the function that prices and records the usage of one
// answered request. It runs after the handler has returned for streams,
// so it captures what it needs now, and records with a context the
// client's going away does not cancel: the tokens were spent all the same.
func (g *Gateway) recordFunc(ctx context.Context, d *dialect, who caller, model string) func(status int, u Usage) {
	ctx = context.WithoutCancel(ctx)
	return func(status int, u Usage) {
		g.metrics.request(who.agentID, model, status)
		if !d.billed {
			return
		}
		price, ok := g.prices.Lookup(model)
		if !ok && (u.InputTokens > 0 || u.OutputTokens > 0) {
			g.warnUnpriced(model)
		}
		u.CostUSD = price.Cost(u)
		g.metrics.usage(who.agentID, model, u)
		rctx, cancel := context.WithTimeout(ctx, recordTimeout)
		defer cancel()
		if err := g.usage.RecordUsage(rctx, who.sessionID, who.agentID, model, u); err != nil {
			g.log.Error("record LLM usage", "agent", who.agentID, "session", who.sessionID, "model", model, "err", err)
		}
	}
}

// warnUnpriced logs, once per model, that usage of a model without a
// price counts no cost (and so does not advance budgets).
func (g *Gateway) warnUnpriced(model string) {
	if _, seen := g.unpriced.LoadOrStore(model, true); !seen {
		g.log.Warn("LLM model has no price: its usage is recorded at $0; add it to LAP_PRICES_FILE", "model", model)
	}
}

// modelLabel is the metrics label of a model in a request that failed:
// unknown names become "other", so a sandbox cannot grow the label set
// without bound by asking for models that do not exist.
func (g *Gateway) modelLabel(model string) string {
	if _, ok := g.prices.Lookup(model); ok {
		return model
	}
	return "other"
}

// isJSONObject reports whether body is one valid JSON object.
func isJSONObject(body []byte) bool {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	return len(trimmed) > 0 && trimmed[0] == '{' && gjson.ValidBytes(body)
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

// dropRequestHeaders are not forwarded upstream: the sandbox's
// credentials, hop-by-hop headers, and those the HTTP client sets itself.
var dropRequestHeaders = map[string]bool{
	"authorization": true, "x-api-key": true, "api-key": true, "proxy-authorization": true,
	"cookie": true, "host": true, "content-length": true, "connection": true, "keep-alive": true,
	"proxy-connection": true, "te": true, "trailer": true, "transfer-encoding": true, "upgrade": true,
	// The client decompresses for us (and must, to read usage).
	"accept-encoding": true,
}

func copyRequestHeaders(h http.Header, c *fiber.Ctx) {
	c.Request().Header.VisitAll(func(k, v []byte) {
		name := string(k)
		if !dropRequestHeaders[strings.ToLower(name)] {
			h.Add(name, string(v))
		}
	})
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
