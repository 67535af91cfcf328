package control

import (
	"bufio"
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

// target says where one session's harness is: the sandbox's endpoint and
// token and the session inside the harness.
type target struct {
	sandboxID string
	endpoint  sandboxes.Endpoint
	token     string
	sessionID string // the harness's session id
}

// harnessClient speaks the harness protocol (ARCHITECTURE §5).
type harnessClient struct {
	// hc keeps connections to harnesses open between requests: a new
	// connection per turn cost each turn a connect, an accept and a close
	// on both sides (a tenth of lapd's CPU per turn at 100 sessions). It
	// has no overall timeout: a turn may run as long as LAP_TURN_TIMEOUT.
	//
	// A harness that dies while idle closes its connections, and the
	// transport drops them from the pool; in the moment before it has, a
	// message may go out on one. Turns are therefore sent with "Expect:
	// 100-continue": the body — the message — follows only once the
	// harness asked for it, so a failure before that proves the harness
	// never had the message (see sendMessage).
	hc *http.Client
	// fresh sends each turn on a new connection, for harnesses that do
	// not answer "Expect: 100-continue" (noContinue): on a new connection
	// a dead harness is a refused dial, the same proof. Proxied endpoints
	// use it too (see sandboxes.Endpoint.Proxied).
	fresh *http.Client
	// noContinue holds the hosts that made a turn wait continueTimeout.
	noContinue sync.Map
}

// continueTimeout is how long a turn's request waits for the harness's
// "100 Continue" before sending the body anyway; a harness that makes it
// wait is sent its later turns on new connections.
const continueTimeout = time.Second

func newHarnessClient() *harnessClient {
	pooled := http.DefaultTransport.(*http.Transport).Clone()
	pooled.MaxIdleConns = 1024
	pooled.MaxIdleConnsPerHost = 256
	pooled.IdleConnTimeout = 90 * time.Second
	pooled.ExpectContinueTimeout = continueTimeout
	fresh := http.DefaultTransport.(*http.Transport).Clone()
	fresh.DisableKeepAlives = true
	return &harnessClient{hc: &http.Client{Transport: pooled}, fresh: &http.Client{Transport: fresh}}
}

// errNotDelivered wraps the failure of a turn's request that the harness
// never asked the body of: the message did not reach it.
type errNotDelivered struct{ err error }

func (e errNotDelivered) Error() string { return e.err.Error() }
func (e errNotDelivered) Unwrap() error { return e.err }

// statusError is a non-2xx answer from a harness.
type statusError struct {
	status int
	body   string
}

// Error implements error.
func (e *statusError) Error() string {
	return fmt.Sprintf("harness answered %d: %s", e.status, e.body)
}

// isStatus reports whether err is a harness answer with that status.
func isStatus(err error, status int) bool {
	var se *statusError
	return errors.As(err, &se) && se.status == status
}

// notSent reports whether err means the request never reached a harness
// (connection refused: the harness is not running), so retrying it after
// bringing the harness back cannot run a turn twice.
func notSent(err error) bool {
	var op *net.OpError
	var nd errNotDelivered
	return errors.As(err, &nd) || errors.As(err, &op) && op.Op == "dial"
}

func (h *harnessClient) request(ctx context.Context, t target, method, path string, in any) (*http.Request, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, t.endpoint.URL+path, body)
	if err != nil {
		return nil, err
	}
	t.endpoint.Apply(req)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if t.token != "" {
		req.Header.Set("Authorization", protocol.Bearer(t.token))
	}
	return req, nil
}

// call sends one request with hc and decodes a 2xx JSON answer into out
// (if not nil). Other statuses return a *statusError.
func (h *harnessClient) call(ctx context.Context, hc *http.Client, t target, method, path string, in, out any) error {
	req, err := h.request(ctx, t, method, path, in)
	if err != nil {
		return err
	}
	return h.do(hc, req, out)
}

// do sends req and decodes a 2xx JSON answer into out (if not nil).
func (h *harnessClient) do(hc *http.Client, req *http.Request, out any) error {
	method, path := req.Method, req.URL.Path
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return &statusError{status: resp.StatusCode, body: strings.TrimSpace(string(b))}
	}
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode harness answer to %s %s: %w", method, path, err)
	}
	return nil
}

func (h *harnessClient) createSession(ctx context.Context, t target, req protocol.CreateSessionRequest) (protocol.SessionInfo, error) {
	var info protocol.SessionInfo
	if err := h.call(ctx, h.hc, t, http.MethodPost, "/session", req, &info); err != nil {
		return info, fmt.Errorf("create harness session: %w", err)
	}
	if info.ID == "" {
		return info, errors.New("create harness session: the harness returned no session id")
	}
	return info, nil
}

// getSession reads the harness session t.sessionID: cheap (no write on
// the harness's side), it tells that the harness is up and has it.
func (h *harnessClient) getSession(ctx context.Context, t target) (protocol.SessionInfo, error) {
	var info protocol.SessionInfo
	if err := h.call(ctx, h.hc, t, http.MethodGet, "/session/"+url.PathEscape(t.sessionID), nil, &info); err != nil {
		return info, fmt.Errorf("read harness session: %w", err)
	}
	if info.ID != t.sessionID {
		return info, fmt.Errorf("read harness session: the harness returned session %q for %q", info.ID, t.sessionID)
	}
	return info, nil
}

// sendMessage runs a turn. Its request carries "Expect: 100-continue":
// when it fails before any of the body was sent (the harness never asked
// for it), the error is an errNotDelivered (notSent), so the message may
// be sent again safely.
func (h *harnessClient) sendMessage(ctx context.Context, t target, req protocol.SendMessageRequest) (protocol.Message, error) {
	var m protocol.Message
	path := "/session/" + url.PathEscape(t.sessionID) + "/message"
	host := t.endpoint.URL
	if _, no := h.noContinue.Load(host); no || t.endpoint.Proxied {
		return m, h.call(ctx, h.fresh, t, http.MethodPost, path, req, &m)
	}
	var asked atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got100Continue: func() { asked.Store(true) }})
	hreq, err := h.request(ctx, t, http.MethodPost, path, req)
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
	err = h.do(h.hc, hreq, &m)
	if sent.Load() && !asked.Load() {
		h.noContinue.Store(host, true) // it let the body wait for continueTimeout
	}
	var se *statusError
	if err != nil && !sent.Load() && !errors.As(err, &se) && ctx.Err() == nil {
		err = errNotDelivered{err}
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

func (h *harnessClient) abort(ctx context.Context, t target) error {
	return h.call(ctx, h.hc, t, http.MethodPost, "/session/"+url.PathEscape(t.sessionID)+"/abort", nil, nil)
}

func (h *harnessClient) identity(ctx context.Context, t target) (protocol.Identity, error) {
	var id protocol.Identity
	err := h.call(ctx, h.hc, t, http.MethodGet, "/", nil, &id)
	return id, err
}

// eventStream reads a harness's GET /event.
type eventStream struct {
	body io.ReadCloser
	sc   *bufio.Scanner
}

// openEvents subscribes to the harness's events and returns once the
// harness confirmed the subscription (server.connected), so no event of a
// turn started afterwards can be missed.
func (h *harnessClient) openEvents(ctx context.Context, t target) (*eventStream, error) {
	req, err := h.request(ctx, t, http.MethodGet, "/event", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := h.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("subscribe to harness events: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("subscribe to harness events: %w", &statusError{status: resp.StatusCode, body: string(b)})
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	es := &eventStream{body: resp.Body, sc: sc}
	first, err := es.next()
	if err != nil {
		es.close()
		return nil, fmt.Errorf("subscribe to harness events: %w", err)
	}
	if first.Type != protocol.EventServerConnected {
		es.close()
		return nil, fmt.Errorf("subscribe to harness events: first event is %q, want %q", first.Type, protocol.EventServerConnected)
	}
	return es, nil
}

// next returns the next event; io.EOF when the stream ends.
func (es *eventStream) next() (protocol.Event, error) {
	var data []byte
	for es.sc.Scan() {
		line := es.sc.Bytes()
		switch {
		case len(line) == 0:
			if data == nil {
				continue
			}
			var ev protocol.Event
			if err := json.Unmarshal(data, &ev); err != nil {
				return ev, fmt.Errorf("decode harness event: %w", err)
			}
			return ev, nil
		case bytes.HasPrefix(line, []byte("data:")):
			data = append(data, bytes.TrimPrefix(bytes.TrimPrefix(line, []byte("data:")), []byte(" "))...)
		}
	}
	if err := es.sc.Err(); err != nil {
		return protocol.Event{}, err
	}
	return protocol.Event{}, io.EOF
}

func (es *eventStream) close() { es.body.Close() }
