// Package harnessclient is the one client of the harness protocol
// (ARCHITECTURE §5): lapd's turns, the backends' readiness probes and the
// tests all speak to harnesses through it, so they agree on what an answer
// means — which status is an error, when a turn provably never reached its
// harness, when a harness is ready, how its event stream is read.
//
// It depends only on the standard library, the sandboxes contract (for
// Endpoint and ErrNotReady, both standard-library only) and the protocol's
// wire types and SSE format.
package harnessclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/protocol"
)

// Target says which harness to call and as whom: its endpoint, its
// HARNESS_AUTH_TOKEN ("" sends no Authorization, as for an external
// harness run without one) and, for calls on one session, the harness's
// session id.
type Target struct {
	Endpoint sandboxes.Endpoint
	Token    string
	Session  string
}

// Client speaks the harness protocol to any number of harnesses. It is
// safe for concurrent use; make one per process part and keep it, as its
// pooled connections are what make a turn cheap.
type Client struct {
	// pooled keeps connections to harnesses open between requests: a new
	// connection per turn cost each turn a connect, an accept and a close
	// on both sides (a tenth of lapd's CPU per turn at 100 sessions). It
	// has no overall timeout: a turn may run as long as LAP_TURN_TIMEOUT.
	//
	// A harness that dies while idle closes its connections, and the
	// transport drops them from the pool; in the moment before it has, a
	// message may go out on one. Turns are therefore sent with "Expect:
	// 100-continue": the body — the message — follows only once the
	// harness asked for it, so a failure before that proves the harness
	// never had the message (see SendMessage).
	pooled *http.Client
	// fresh sends each turn on a new connection, for harnesses that do
	// not answer "Expect: 100-continue" (noContinue): on a new connection
	// a dead harness is a refused dial, the same proof. Proxied endpoints
	// use it too (see sandboxes.Endpoint.Proxied).
	fresh *http.Client
	// noContinue holds the hosts that made a turn wait ContinueTimeout.
	noContinue sync.Map
}

// ContinueTimeout is how long a turn's request waits for the harness's
// "100 Continue" before sending the body anyway; a harness that makes it
// wait is sent its later turns on new connections.
const ContinueTimeout = time.Second

// New returns a Client with its own connection pool.
func New() *Client {
	pooled := http.DefaultTransport.(*http.Transport).Clone()
	pooled.MaxIdleConns = 1024
	pooled.MaxIdleConnsPerHost = 256
	pooled.IdleConnTimeout = 90 * time.Second
	pooled.ExpectContinueTimeout = ContinueTimeout
	fresh := http.DefaultTransport.(*http.Transport).Clone()
	fresh.DisableKeepAlives = true
	return &Client{pooled: &http.Client{Transport: pooled}, fresh: &http.Client{Transport: fresh}}
}

// NewWithClient returns a Client that sends every request with hc, for a
// caller that reaches its harnesses through a transport of its own (the
// Knative backend's tests dial a fake ingress). Turns sent with it use
// hc's connections as they are: it suits readiness probes and calls, while
// lapd's turns want New's pooled and fresh transports.
func NewWithClient(hc *http.Client) *Client {
	return &Client{pooled: hc, fresh: hc}
}

// Do sends req, already addressed and authorised by the caller (lapd's
// pass-through to a harness's API), on the pooled connections.
func (c *Client) Do(req *http.Request) (*http.Response, error) { return c.pooled.Do(req) }

// StatusError is a harness's answer with a status other than 2xx.
type StatusError struct {
	Status int
	// Body is the start of the answer's body, trimmed.
	Body string
}

// Error implements error.
func (e *StatusError) Error() string {
	return fmt.Sprintf("harness answered %d: %s", e.Status, e.Body)
}

// IsStatus reports whether err is a harness's answer with that status.
func IsStatus(err error, status int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Status == status
}

// NotDeliveredError wraps the failure of a turn's request that the
// harness never asked the body of: the message did not reach it.
type NotDeliveredError struct{ Err error }

// Error implements error.
func (e NotDeliveredError) Error() string { return e.Err.Error() }

// Unwrap returns the transport's error.
func (e NotDeliveredError) Unwrap() error { return e.Err }

// NotSent reports whether err means the request never reached a harness —
// a NotDeliveredError, or a refused dial (the harness is not running) — so
// retrying it after bringing the harness back cannot run a turn twice.
func NotSent(err error) bool {
	var op *net.OpError
	var nd NotDeliveredError
	return errors.As(err, &nd) || errors.As(err, &op) && op.Op == "dial"
}

// request builds a request to t, with in (if not nil) as its JSON body.
func request(ctx context.Context, t Target, method, path string, in any) (*http.Request, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	// A base URL given with a trailing slash (an ingress URL) still works.
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(t.Endpoint.URL, "/")+path, body)
	if err != nil {
		return nil, err
	}
	t.Endpoint.Apply(req)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if t.Token != "" {
		req.Header.Set("Authorization", protocol.Bearer(t.Token))
	}
	return req, nil
}

// call sends one request with hc and decodes a 2xx JSON answer into out
// (if not nil). Other statuses return a *StatusError.
func call(ctx context.Context, hc *http.Client, t Target, method, path string, in, out any) error {
	req, err := request(ctx, t, method, path, in)
	if err != nil {
		return err
	}
	return do(hc, req, out)
}

// do sends req and decodes a 2xx JSON answer into out (if not nil).
func do(hc *http.Client, req *http.Request, out any) error {
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := statusOf(resp); err != nil {
		return err
	}
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode harness answer to %s %s: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// statusOf returns a *StatusError with the start of the body for a non-2xx
// answer, nil for a 2xx one.
func statusOf(resp *http.Response) error {
	if resp.StatusCode/100 == 2 {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return &StatusError{Status: resp.StatusCode, Body: strings.TrimSpace(string(b))}
}

// sessionPath is the path of t's session, plus suffix.
func sessionPath(t Target, suffix string) string {
	return "/session/" + url.PathEscape(t.Session) + suffix
}

// Identity reads GET /: which harness runs and whether its workspace is
// prepared (or why it could not be).
func (c *Client) Identity(ctx context.Context, t Target) (protocol.Identity, error) {
	var id protocol.Identity
	err := call(ctx, c.pooled, t, http.MethodGet, "/", nil, &id)
	return id, err
}

// CreateSession opens a session in the harness (POST /session).
func (c *Client) CreateSession(ctx context.Context, t Target, req protocol.CreateSessionRequest) (protocol.SessionInfo, error) {
	var info protocol.SessionInfo
	if err := call(ctx, c.pooled, t, http.MethodPost, "/session", req, &info); err != nil {
		return info, fmt.Errorf("create harness session: %w", err)
	}
	if info.ID == "" {
		return info, errors.New("create harness session: the harness returned no session id")
	}
	return info, nil
}

// GetSession reads the harness session t.Session: cheap (no write on the
// harness's side), it tells that the harness is up and has it.
func (c *Client) GetSession(ctx context.Context, t Target) (protocol.SessionInfo, error) {
	var info protocol.SessionInfo
	if err := call(ctx, c.pooled, t, http.MethodGet, sessionPath(t, ""), nil, &info); err != nil {
		return info, fmt.Errorf("read harness session: %w", err)
	}
	if info.ID != t.Session {
		return info, fmt.Errorf("read harness session: the harness returned session %q for %q", info.ID, t.Session)
	}
	return info, nil
}

// SendMessage runs a turn in t.Session and returns the assistant's message.
// Its request carries "Expect: 100-continue": when it fails before any of
// the body was sent (the harness never asked for it), the error is a
// NotDeliveredError (NotSent), so the message may be sent again safely.
// Turns to a proxied endpoint, or to a harness that once let the body wait
// ContinueTimeout, go on new connections instead, where the same proof is
// a refused dial.
func (c *Client) SendMessage(ctx context.Context, t Target, req protocol.SendMessageRequest) (protocol.Message, error) {
	var m protocol.Message
	path := sessionPath(t, "/message")
	host := t.Endpoint.URL
	if _, no := c.noContinue.Load(host); no || t.Endpoint.Proxied {
		return m, call(ctx, c.fresh, t, http.MethodPost, path, req, &m)
	}
	var asked atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got100Continue: func() { asked.Store(true) }})
	hreq, err := request(ctx, t, http.MethodPost, path, req)
	if err != nil {
		return m, err
	}
	hreq.Header.Set("Expect", "100-continue")
	body, err := io.ReadAll(hreq.Body)
	if err != nil {
		return m, err
	}
	var sent atomic.Bool
	hreq.GetBody = func() (io.ReadCloser, error) { return &watchedBody{r: bytes.NewReader(body), read: &sent}, nil }
	hreq.Body, _ = hreq.GetBody()
	err = do(c.pooled, hreq, &m)
	if sent.Load() && !asked.Load() {
		c.noContinue.Store(host, true) // it let the body wait for ContinueTimeout
	}
	var se *StatusError
	if err != nil && !sent.Load() && !errors.As(err, &se) && ctx.Err() == nil {
		err = NotDeliveredError{err}
	}
	return m, err
}

// watchedBody is a request body that records whether the transport has
// read any of it.
type watchedBody struct {
	r    *bytes.Reader
	read *atomic.Bool
}

func (b *watchedBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.r.Read(p)
}

func (b *watchedBody) Close() error { return nil }

// Abort interrupts the turn running in t.Session.
func (c *Client) Abort(ctx context.Context, t Target) error {
	return call(ctx, c.pooled, t, http.MethodPost, sessionPath(t, "/abort"), nil, nil)
}
