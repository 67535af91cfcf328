package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"lap.dev/lap/control/api"
)

// Client talks to lapd's REST API (ARCHITECTURE §4) with the master key.
type Client struct {
	// BaseURL is the server's root, e.g. http://localhost:3000.
	BaseURL string
	// Key is the master key, sent as a bearer token.
	Key  string
	http *http.Client
}

// requestTimeout bounds every call that is not a stream or a long poll, so a
// hung server cannot hang a script.
const requestTimeout = 30 * time.Second

// NewClient returns a client for the server at baseURL.
func NewClient(baseURL, key string) *Client {
	return &Client{
		BaseURL: strings.TrimRight(baseURL, "/"),
		Key:     key,
		http: &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			ResponseHeaderTimeout: 0, // long polls and streams answer late
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   4,
		}},
	}
}

// APIError is an error answer of the server, {"error":{"code","message"}}.
type APIError struct {
	Status  int
	Code    string
	Message string
	// URL is the server that answered.
	URL string
}

// Error returns the server's message.
func (e *APIError) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return fmt.Sprintf("server answered %d %s", e.Status, http.StatusText(e.Status))
}

// UnreachableError says the server could not be reached at all.
type UnreachableError struct {
	URL string
	Err error
}

// Error names the URL and the cause in a few words.
func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach lap at %s (%s)", e.URL, shortNetError(e.Err))
}

// Unwrap returns the transport error.
func (e *UnreachableError) Unwrap() error { return e.Err }

// shortNetError names the cause of a failed connection in a few words.
func shortNetError(err error) string {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.As(err, &dnsErr):
		return "no such host " + dnsErr.Name
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return "timed out"
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		return opErr.Err.Error()
	}
	return err.Error()
}

// isStatus reports whether err is an API error with the given status.
func isStatus(err error, status int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == status
}

// newRequest builds a request for path (below api.BasePath) and query.
func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values, body any) (*http.Request, error) {
	u := c.BaseURL + api.BasePath + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, r)
	if err != nil {
		return nil, fmt.Errorf("bad server URL %q: %w", c.BaseURL, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Key != "" {
		req.Header.Set("Authorization", "Bearer "+c.Key)
	}
	return req, nil
}

// send performs req and turns transport failures and error answers into
// *UnreachableError and *APIError.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil && errors.Is(err, ctxErr) && !errors.Is(ctxErr, context.DeadlineExceeded) {
			return nil, ctxErr
		}
		return nil, &UnreachableError{URL: c.BaseURL, Err: err}
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		err := decodeError(resp)
		err.URL = c.BaseURL
		return nil, err
	}
	return resp, nil
}

// decodeError reads an error answer. A body that is not the API's error
// shape (a proxy's HTML page, say) still yields a useful message.
func decodeError(resp *http.Response) *APIError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body api.ErrorBody
	if err := json.Unmarshal(b, &body); err == nil && (body.Error.Code != "" || body.Error.Message != "") {
		return &APIError{Status: resp.StatusCode, Code: body.Error.Code, Message: body.Error.Message}
	}
	msg := strings.TrimSpace(string(b))
	if len(msg) > 200 || strings.ContainsAny(msg, "<\n") {
		msg = ""
	}
	if msg == "" {
		msg = fmt.Sprintf("%s %s answered %d %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	return &APIError{Status: resp.StatusCode, Message: msg}
}

// do sends a JSON request and decodes a JSON answer into out (nil: drop it).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	return c.doNoTimeout(ctx, method, path, query, body, out)
}

func (c *Client) doNoTimeout(ctx context.Context, method, path string, query url.Values, body, out any) error {
	req, err := c.newRequest(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode answer of %s %s: %w", method, path, err)
	}
	return nil
}

// stream opens a server-sent event stream.
func (c *Client) stream(ctx context.Context, method, path string, body any) (*sseStream, error) {
	req, err := c.newRequest(ctx, method, path, nil, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: expected an event stream, got %q", method, path, ct)
	}
	return newSSEStream(resp.Body), nil
}

// maxPages bounds cursor loops against a server that never stops paging.
const maxPages = 1000

// listAll follows next_cursor through every page of a listing.
func listAll[T any](ctx context.Context, c *Client, path string, query url.Values) ([]T, error) {
	if query == nil {
		query = url.Values{}
	}
	var all []T
	for range maxPages {
		var page api.List[T]
		if err := c.do(ctx, http.MethodGet, path, query, nil, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Data...)
		if page.NextCursor == "" {
			return all, nil
		}
		query.Set("cursor", page.NextCursor)
	}
	return nil, fmt.Errorf("list %s: more than %d pages", path, maxPages)
}

// listOrArray decodes an answer that is either {data: [...]} or a bare
// array: the log routes are specified only as "the log", so the CLI takes
// both shapes.
func getListOrArray[T any](ctx context.Context, c *Client, path string) ([]T, error) {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, path, nil, nil, &raw); err != nil {
		return nil, err
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '[' {
		var items []T
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, fmt.Errorf("decode answer of GET %s: %w", path, err)
		}
		return items, nil
	}
	var page api.List[T]
	if err := json.Unmarshal(raw, &page); err != nil {
		return nil, fmt.Errorf("decode answer of GET %s: %w", path, err)
	}
	return page.Data, nil
}

func esc(s string) string { return url.PathEscape(s) }

// ListAgents returns every agent, optionally filtered by search.
func (c *Client) ListAgents(ctx context.Context, search string) ([]api.Agent, error) {
	q := url.Values{}
	if search != "" {
		q.Set("search", search)
	}
	return listAll[api.Agent](ctx, c, "/agents", q)
}

// GetAgent returns the agent with the given UUID or name.
func (c *Client) GetAgent(ctx context.Context, idOrName string) (api.Agent, error) {
	var a api.Agent
	err := c.do(ctx, http.MethodGet, "/agents/"+esc(idOrName), nil, nil, &a)
	return a, err
}

// CreateAgent creates an agent.
func (c *Client) CreateAgent(ctx context.Context, req api.CreateAgentRequest) (api.Agent, error) {
	var a api.Agent
	err := c.do(ctx, http.MethodPost, "/agents", nil, req, &a)
	return a, err
}

// UpdateAgent changes the given fields of an agent.
func (c *Client) UpdateAgent(ctx context.Context, idOrName string, req api.UpdateAgentRequest) (api.Agent, error) {
	var a api.Agent
	err := c.do(ctx, http.MethodPatch, "/agents/"+esc(idOrName), nil, req, &a)
	return a, err
}

// DeleteAgent deletes an agent, its sessions and sandboxes.
func (c *Client) DeleteAgent(ctx context.Context, idOrName string) error {
	return c.do(ctx, http.MethodDelete, "/agents/"+esc(idOrName), nil, nil, nil)
}

// Harnesses lists the harnesses the server can run.
func (c *Client) Harnesses(ctx context.Context) ([]api.Harness, error) {
	return getListOrArray[api.Harness](ctx, c, "/harnesses")
}

// CreateSession opens a session with an agent.
func (c *Client) CreateSession(ctx context.Context, agent string, req api.CreateSessionRequest) (api.Session, error) {
	var s api.Session
	err := c.do(ctx, http.MethodPost, "/agents/"+esc(agent)+"/session", nil, req, &s)
	return s, err
}

// ListSessions lists sessions, optionally of one agent and in one status.
func (c *Client) ListSessions(ctx context.Context, agentID, status string) ([]api.Session, error) {
	q := url.Values{}
	if agentID != "" {
		q.Set("agent_id", agentID)
	}
	if status != "" {
		q.Set("status", status)
	}
	return listAll[api.Session](ctx, c, "/sessions", q)
}

// GetSession returns one session.
func (c *Client) GetSession(ctx context.Context, id string) (api.Session, error) {
	var s api.Session
	err := c.do(ctx, http.MethodGet, "/sessions/"+esc(id), nil, nil, &s)
	return s, err
}

// WaitSession long-polls until the session is ready or failed, or timeout
// passes on the server; it returns the session as it then is.
func (c *Client) WaitSession(ctx context.Context, id string, timeout time.Duration) (api.Session, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout+requestTimeout)
	defer cancel()
	var s api.Session
	q := url.Values{"wait": {"ready"}, "timeout": {timeout.String()}}
	err := c.doNoTimeout(ctx, http.MethodGet, "/sessions/"+esc(id), q, nil, &s)
	return s, err
}

// DeleteSession ends a session and destroys its sandbox.
func (c *Client) DeleteSession(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/sessions/"+esc(id), nil, nil, nil)
}

// Abort interrupts the session's running turn.
func (c *Client) Abort(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, "/sessions/"+esc(id)+"/abort", nil, nil, nil)
}

// Messages returns the session's durable conversation log.
func (c *Client) Messages(ctx context.Context, id string) ([]api.Message, error) {
	return getListOrArray[api.Message](ctx, c, "/sessions/"+esc(id)+"/messages")
}

// Log returns the session's timeline.
func (c *Client) Log(ctx context.Context, id string) ([]api.LogEntry, error) {
	return getListOrArray[api.LogEntry](ctx, c, "/sessions/"+esc(id)+"/log")
}

// Diagnose returns everything the server knows about the session, both
// decoded and as sent (so --json shows fields this CLI does not know).
func (c *Client) Diagnose(ctx context.Context, id string) (api.Diagnosis, json.RawMessage, error) {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/sessions/"+esc(id)+"/diagnose", nil, nil, &raw); err != nil {
		return api.Diagnosis{}, nil, err
	}
	var d api.Diagnosis
	if err := json.Unmarshal(raw, &d); err != nil {
		return api.Diagnosis{}, nil, fmt.Errorf("decode diagnosis: %w", err)
	}
	return d, raw, nil
}

// Events subscribes to the session's live event bus.
func (c *Client) Events(ctx context.Context, id string) (*sseStream, error) {
	return c.stream(ctx, http.MethodGet, "/sessions/"+esc(id)+"/events", nil)
}

// MessageStream sends a user message and streams the turn.
func (c *Client) MessageStream(ctx context.Context, id, text string) (*sseStream, error) {
	return c.stream(ctx, http.MethodPost, "/sessions/"+esc(id)+"/message_stream", api.SendMessageRequest{Text: text})
}
