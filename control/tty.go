package control

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/gofiber/fiber/v2"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/store"
)

// Terminal sessions. An agent of a terminal harness (claude-code, codex:
// sandboxes.Harness.TUI) runs its tool under tmux in the sandbox and
// serves the terminal at the harness's GET /tty; it has no chat API. Its
// sessions are provisioned like any other but open no harness session:
// such a session is ready once its sandbox's harness is, takes no turns
// (…/message answers 409), and is used through GET /sessions/:id/tty,
// which lapd relays to the sandbox's /tty. Each carries a token of its
// own for that route, so a terminal can be handed out without the
// master key.

// Limits of the relay.
const (
	// ttyMaxInput bounds one client message (a large paste), as the
	// harness does.
	ttyMaxInput = 1 << 20
	// ttyMaxOutput bounds one message from the harness.
	ttyMaxOutput = 16 << 20
	// ttyTouchEvery spaces the activity writes keystrokes cause.
	ttyTouchEvery = time.Second
)

// isTUI reports whether agent a runs a terminal harness.
func isTUI(a store.Agent) bool {
	h, ok := sandboxes.LookupHarness(a.HarnessID)
	return ok && h.TUI
}

// ttyPath is the lapd path of session id's terminal.
func ttyPath(id string) string { return api.BasePath + "/sessions/" + id + "/tty" }

// newTTYToken makes a terminal session's token and returns it sealed for
// the store, owned by the session so it cannot be moved to another.
func (o *orchestrator) newTTYToken(sessionID string) []byte {
	b := make([]byte, 24)
	rand.Read(b)
	return o.secrets.Seal([]byte("laptty_"+hex.EncodeToString(b)), "tty:"+sessionID)
}

// ttyToken opens the terminal token of sess ("" for a chat session).
func (o *orchestrator) ttyToken(sess store.Session) (string, error) {
	if len(sess.TTYToken) == 0 {
		return "", nil
	}
	tok, err := o.secrets.Open(sess.TTYToken, "tty:"+sess.ID)
	if err != nil {
		return "", fmt.Errorf("open terminal token of session %s: %w", sess.ID, err)
	}
	return string(tok), nil
}

// withTTY adds a terminal session's tty_url and tty_token to out.
func (o *orchestrator) withTTY(sess store.Session, out api.Session) api.Session {
	if len(sess.TTYToken) == 0 {
		return out
	}
	out.TTYURL = ttyPath(sess.ID)
	tok, err := o.ttyToken(sess)
	if err != nil {
		o.log.Error("terminal token unreadable", "session", sess.ID, "err", err)
	}
	out.TTYToken = tok
	return out
}

// chatOnly refuses a turn on a terminal session: its tool is driven
// through its terminal, there is no chat API to send to.
func chatOnly(sess store.Session) error {
	if len(sess.TTYToken) == 0 {
		return nil
	}
	return conflict("session %s is a terminal agent's: attach with lap, or open the WebSocket GET %s", sess.ID, ttyPath(sess.ID))
}

// terminals counts the terminals attached to each session: the idle
// reaper leaves a session with one alone. The zero value is ready.
type terminals struct {
	mu sync.Mutex
	n  map[string]int
}

func (t *terminals) add(id string, d int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil {
		t.n = map[string]int{}
	}
	t.n[id] += d
	if t.n[id] <= 0 {
		delete(t.n, id)
	}
}

// attached reports whether a terminal is attached to session id.
func (t *terminals) attached(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n[id] > 0
}

// isTTYRoute reports whether path is a session's terminal route, which
// authenticates its own callers (the master key or the session's token).
func isTTYRoute(path string) bool {
	rest, ok := strings.CutPrefix(path, api.BasePath+"/sessions/")
	if !ok {
		return false
	}
	id, ok := strings.CutSuffix(rest, "/tty")
	return ok && id != "" && !strings.Contains(id, "/")
}

// serveTTY is GET /sessions/:id/tty: a WebSocket relayed to the sandbox's
// terminal (the harness's GET /tty), messages passed as they are in both
// directions — binary input and resize text messages in, output out.
// An idle session is resumed first; while attached, the session is not
// reaped, and detaching leaves the tool running.
//
// Fiber runs on fasthttp, whose handlers have no http.Hijacker: the
// request is checked and the sandbox's terminal dialled here, then the
// connection is hijacked from fasthttp and handed to coder/websocket's
// Accept through hijackWriter (tty.go), so one WebSocket library serves
// both sides.
func (s *Server) serveTTY(c *fiber.Ctx) error {
	ctx := c.UserContext()
	token, ok := strings.CutPrefix(c.Get(fiber.HeaderAuthorization), "Bearer ")
	if !ok || strings.TrimSpace(token) == "" {
		token = c.Query("token")
	}
	token = strings.TrimSpace(token)
	sum := sha256.Sum256([]byte(token))
	master := subtle.ConstantTimeCompare(sum[:], s.masterKey[:]) == 1
	refused := newAPIError(http.StatusUnauthorized, api.CodeUnauthorized,
		"missing or wrong token: send the session's tty_token (or the master key) as Authorization: Bearer or ?token=")
	sess, err := s.o.resolveSession(ctx, c.Params("id"))
	if err != nil {
		if !master {
			return refused // an unauthenticated caller learns nothing of ids
		}
		return err
	}
	if !master {
		want, err := s.o.ttyToken(sess)
		if err != nil || want == "" || subtle.ConstantTimeCompare([]byte(token), []byte(want)) != 1 {
			return refused
		}
	}
	if len(sess.TTYToken) == 0 {
		return conflict("session %s has no terminal: its agent runs a chat harness; use POST %s/sessions/%s/message", sess.ID, api.BasePath, sess.ID)
	}
	if !strings.EqualFold(c.Get(fiber.HeaderUpgrade), "websocket") {
		return badRequest("GET %s is a WebSocket: send Upgrade: websocket", ttyPath(sess.ID))
	}
	req, err := upgradeRequest(c)
	if err != nil {
		return badRequest("%v", err)
	}

	// Attached from here: the reaper must not suspend the sandbox the
	// relay is about to reach.
	s.o.terms.add(sess.ID, 1)
	attached := true
	defer func() {
		if attached {
			s.o.terms.add(sess.ID, -1)
		}
	}()
	tgt, err := s.o.passTarget(ctx, sess)
	if err != nil {
		return err
	}
	up, err := dialTTY(ctx, tgt, c.Request().URI().QueryArgs().Peek("cols"), c.Request().URI().QueryArgs().Peek("rows"))
	if err != nil {
		return harnessFailure("session %s: open the sandbox's terminal: %v", sess.ID, err)
	}

	attached = false // the relay detaches
	id := sess.ID
	c.Context().HijackSetNoResponse(true)
	c.Context().Hijack(func(conn net.Conn) {
		defer s.o.terms.add(id, -1)
		if !s.relays.enter() {
			_ = up.CloseNow() // lapd is stopping
			return
		}
		defer s.relays.leave()
		defer s.o.touch(context.WithoutCancel(s.baseCtx), id) // idle from the detach on
		w := &hijackWriter{conn: conn, header: http.Header{}}
		// The token authorizes a client, not its origin: the clients
		// are CLIs, and no cookie is involved.
		client, err := websocket.Accept(w, req, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			w.fail()
			_ = up.Close(websocket.StatusNormalClosure, "client handshake failed")
			s.log.Warn("tty: websocket upgrade", "session", id, "err", err)
			return
		}
		s.log.Info("tty attached", "session", id)
		reason := s.relayTTY(id, client, up)
		s.log.Info("tty detached", "session", id, "reason", reason)
	})
	return nil
}

// relaySet tracks the running relays, which fasthttp no longer does once
// it handed their connections over, so Shutdown can wait for them (they
// write the session's last activity).
type relaySet struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// enter registers a relay; false once lapd is stopping.
func (r *relaySet) enter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.wg.Add(1)
	return true
}

func (r *relaySet) leave() { r.wg.Done() }

// closeAndWait refuses new relays and waits for the running ones, or
// for ctx.
func (r *relaySet) closeAndWait(ctx context.Context) {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// upgradeRequest copies the upgrade request out of fasthttp's context,
// which is reused once the handler returns, into a net/http request for
// websocket.Accept.
func upgradeRequest(c *fiber.Ctx) (*http.Request, error) {
	u, err := url.ParseRequestURI(string(c.Request().RequestURI()))
	if err != nil {
		return nil, fmt.Errorf("bad request URI: %w", err)
	}
	r := &http.Request{Method: http.MethodGet, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Host: string(c.Request().Host()), RequestURI: u.RequestURI()}
	c.Request().Header.VisitAll(func(k, v []byte) { r.Header.Add(string(k), string(v)) })
	return r, nil
}

// dialTTY opens the sandbox's terminal WebSocket (the harness's GET /tty)
// with the sandbox's harness token, through the endpoint's routing (on
// Knative: ingress, activator and queue-proxy).
func dialTTY(ctx context.Context, tgt target, cols, rows []byte) (*websocket.Conn, error) {
	u, err := url.Parse(tgt.endpoint.URL)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/tty"
	q := url.Values{}
	if len(cols) > 0 && len(rows) > 0 {
		q.Set("cols", string(cols))
		q.Set("rows", string(rows))
	}
	u.RawQuery = q.Encode()
	h := http.Header{}
	for k, v := range tgt.endpoint.Header {
		h.Set(k, v)
	}
	if tgt.token != "" {
		h.Set("Authorization", "Bearer "+tgt.token)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(dctx, u.String(), &websocket.DialOptions{HTTPHeader: h, Host: tgt.endpoint.Host})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	conn.SetReadLimit(ttyMaxOutput)
	return conn, nil
}

// relayTTY copies messages between the client and the sandbox's terminal
// until either side closes or lapd stops; it closes both and returns
// why. Input counts as activity on the session.
func (s *Server) relayTTY(id string, client, up *websocket.Conn) string {
	client.SetReadLimit(ttyMaxInput)
	type end struct {
		fromClient bool
		err        error
	}
	// The pipes read without a context: a cancelled Read closes the
	// connection without a close frame, and each side should learn why
	// the relay ended. Closing a side ends its pipe instead.
	ends := make(chan end, 2)
	go func() {
		var last time.Time
		ends <- end{true, pipeWS(client, up, func(typ websocket.MessageType) {
			if typ == websocket.MessageBinary && time.Since(last) >= ttyTouchEvery {
				last = time.Now()
				s.o.touch(s.baseCtx, id)
			}
		})}
	}()
	go func() { ends <- end{false, pipeWS(up, client, nil)} }()
	stop := context.AfterFunc(s.ttyCtx, func() {
		_ = client.Close(websocket.StatusGoingAway, "lapd is shutting down; the agent keeps running")
		_ = up.Close(websocket.StatusNormalClosure, "detached")
	})
	defer stop()
	first := <-ends
	reason := "client detached"
	switch {
	case s.ttyCtx.Err() != nil:
		reason = "lapd stopping"
	case first.fromClient:
		_ = up.Close(websocket.StatusNormalClosure, "detached")
		_ = client.Close(websocket.StatusNormalClosure, "detached")
	default:
		status := websocket.CloseStatus(first.err)
		reason = "the sandbox's terminal closed"
		switch status {
		case websocket.StatusNoStatusRcvd:
			status = websocket.StatusNormalClosure
		case -1, websocket.StatusAbnormalClosure, websocket.StatusTLSHandshake:
			status = websocket.StatusInternalError
		}
		var ce websocket.CloseError
		if errors.As(first.err, &ce) && ce.Reason != "" {
			reason = ce.Reason
		}
		_ = client.Close(status, reason)
		_ = up.Close(websocket.StatusNormalClosure, "")
	}
	<-ends
	return reason
}

// pipeWS copies messages from src to dst as they are until either fails.
func pipeWS(src, dst *websocket.Conn, seen func(websocket.MessageType)) error {
	ctx := context.Background()
	for {
		typ, data, err := src.Read(ctx)
		if err != nil {
			return err
		}
		if seen != nil {
			seen(typ)
		}
		if err := dst.Write(ctx, typ, data); err != nil {
			return err
		}
	}
}

// hijackWriter is the http.ResponseWriter and http.Hijacker that
// websocket.Accept needs, over a connection hijacked from fasthttp: the
// handshake answer is written when Accept hijacks; an answer Accept
// writes when it refuses is kept for fail.
type hijackWriter struct {
	conn     net.Conn
	header   http.Header
	status   int
	body     bytes.Buffer
	hijacked bool
}

func (w *hijackWriter) Header() http.Header { return w.header }

func (w *hijackWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *hijackWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

// Hijack writes the response head (101 Switching Protocols) and hands
// the connection over.
func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if err := w.writeHead(); err != nil {
		return nil, nil, err
	}
	w.hijacked = true
	return w.conn, bufio.NewReadWriter(bufio.NewReader(w.conn), bufio.NewWriter(w.conn)), nil
}

func (w *hijackWriter) writeHead() error {
	var head bytes.Buffer
	fmt.Fprintf(&head, "HTTP/1.1 %d %s\r\n", w.status, http.StatusText(w.status))
	if err := w.header.Write(&head); err != nil {
		return err
	}
	head.WriteString("\r\n")
	_, err := w.conn.Write(head.Bytes())
	return err
}

// fail sends the answer Accept wrote when it refused the handshake.
func (w *hijackWriter) fail() {
	if w.hijacked {
		return
	}
	if w.status == 0 {
		w.status = http.StatusInternalServerError
	}
	w.header.Set("Content-Length", fmt.Sprint(w.body.Len()))
	w.header.Set("Connection", "close")
	if w.writeHead() == nil {
		_, _ = w.conn.Write(w.body.Bytes())
	}
}
