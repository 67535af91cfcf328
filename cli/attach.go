package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/term"

	"lap.dev/lap/control/api"
)

// Terminal mode: `lap <agent>` and `lap resume <session>` for an agent of
// a terminal harness (Claude Code, Codex) attach this terminal to the
// tool running under tmux in the session's sandbox, through lapd's
// GET /sessions/:id/tty WebSocket: keys go out as binary messages, the
// window size as {"type":"resize"} text messages (on open and on every
// SIGWINCH), the tool's output comes back as binary messages.
//
// The detach key is Ctrl-] (0x1d), as in telnet: Claude Code and Codex
// use Ctrl-D and Ctrl-C themselves (LAP's CLI detaches on a lone Ctrl-D,
// which takes that key from the tool). Detaching leaves the tool running;
// lap resume re-attaches and tmux redraws the screen.

// detachKey is Ctrl-].
const detachKey = 0x1d

// ttyPingEvery keeps the WebSocket (and proxies on the way) alive.
const ttyPingEvery = 30 * time.Second

// errDetached ends terminal mode when the user pressed the detach key.
var errDetached = errors.New("detached")

// attach runs terminal mode on the chat's session: waits for it to be
// ready, attaches, and on the way out keeps or deletes the session as
// chat mode does (which prints the resume hint).
func (ch *chat) attach(ctx context.Context, wait bool) (err error) {
	defer func() { err = ch.end(err) }()
	if !ch.a.inTTY || !ch.a.outTTY {
		return withCode(ExitUsage, fmt.Errorf("agent %s runs a terminal agent (%s): attaching needs a terminal on stdin and stdout", ch.agent.Name, ch.agent.HarnessID))
	}
	if wait {
		s, err := ch.waitReady(ctx)
		if err != nil {
			return err
		}
		ch.session = s
	}
	if ch.session.TTYURL == "" {
		return withCode(ExitFailed, fmt.Errorf("session %s has no terminal (tty_url); is the server older than this lap?", shortID(ch.session.ID)))
	}
	in, ok := ch.a.in.(*os.File)
	if !ok {
		return withCode(ExitUsage, errors.New("terminal mode needs stdin to be a terminal"))
	}
	fmt.Fprintf(ch.status, "attaching to %s's terminal — Ctrl-] detaches, the agent keeps running\n", ch.agent.Name)
	height := func() int { return cmp.Or(ch.a.height(), 24) }
	err = ch.cl.attachTTY(ctx, ch.session, in, ch.a.out, ch.a.width, height)
	if errors.Is(err, errDetached) {
		fmt.Fprintf(ch.status, "\r\ndetached from session %s; the agent keeps running\n", shortID(ch.session.ID))
		return nil
	}
	return err
}

// ttyURL is the WebSocket URL of session s's terminal: its tty_url,
// absolute or relative to the server, with http(s) made ws(s).
func (c *Client) ttyURL(s api.Session) (string, error) {
	base, err := url.Parse(c.BaseURL)
	if err != nil {
		return "", fmt.Errorf("server URL %q: %w", c.BaseURL, err)
	}
	ref, err := url.Parse(s.TTYURL)
	if err != nil {
		return "", fmt.Errorf("tty_url %q: %w", s.TTYURL, err)
	}
	u := base.ResolveReference(ref)
	if !strings.HasPrefix(s.TTYURL, "/") && !ref.IsAbs() {
		// A relative path is relative to the server's root, base path
		// included.
		u = base.JoinPath(s.TTYURL)
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "ws"
	case "https", "wss":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("tty_url %q: unsupported scheme", s.TTYURL)
	}
	return u.String(), nil
}

// attachTTY relays the terminal in ↔ session s's terminal until the user
// detaches (errDetached), the server closes the socket, or ctx ends. in
// is put in raw mode meanwhile.
func (c *Client) attachTTY(ctx context.Context, s api.Session, in *os.File, out io.Writer, width, height func() int) error {
	u, err := c.ttyURL(s)
	if err != nil {
		return err
	}
	tok := s.TTYToken
	if tok == "" {
		tok = c.Key
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Minute) // a resume may take a while
	defer dcancel()
	q := url.Values{"token": {tok}, "cols": {fmt.Sprint(width())}, "rows": {fmt.Sprint(height())}}
	conn, resp, err := websocket.Dial(dctx, u+"?"+q.Encode(), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}},
	})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 {
			return withCode(ExitFailed, fmt.Errorf("attach to session %s: HTTP %d: %w", shortID(s.ID), resp.StatusCode, err))
		}
		return fmt.Errorf("attach to session %s: %w", shortID(s.ID), err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(16 << 20)

	var wmu sync.Mutex // one writer at a time: keys, resizes, pings
	write := func(typ websocket.MessageType, b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return conn.Write(ctx, typ, b)
	}
	resize := func() error {
		b, _ := json.Marshal(map[string]any{"type": "resize", "cols": width(), "rows": height()})
		return write(websocket.MessageText, b)
	}
	if err := resize(); err != nil {
		return fmt.Errorf("attach to session %s: %w", shortID(s.ID), err)
	}

	state, err := term.MakeRaw(int(in.Fd()))
	if err != nil {
		return fmt.Errorf("raw terminal: %w", err)
	}
	defer term.Restore(int(in.Fd()), state)

	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	go func() {
		ping := time.NewTicker(ttyPingEvery)
		defer ping.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-winch:
				_ = resize()
			case <-ping.C:
				pctx, pcancel := context.WithTimeout(ctx, ttyPingEvery)
				err := conn.Ping(pctx)
				pcancel()
				if err != nil && ctx.Err() == nil {
					cancel(fmt.Errorf("the server stopped answering: %w", err))
					return
				}
			}
		}
	}()
	// Keys: stdin is read in a goroutine that cannot be interrupted; it
	// ends with the process or at the next key after a detach.
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				b := buf[:n]
				if i := bytes.IndexByte(b, detachKey); i >= 0 {
					if i > 0 {
						_ = write(websocket.MessageBinary, b[:i])
					}
					cancel(errDetached)
					return
				}
				if werr := write(websocket.MessageBinary, b); werr != nil {
					cancel(werr)
					return
				}
			}
			if err != nil {
				cancel(errDetached) // stdin closed: nothing more to send
				return
			}
		}
	}()
	// Output.
	go func() {
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				if ctx.Err() == nil {
					cancel(err)
				}
				return
			}
			if typ == websocket.MessageBinary {
				if _, err := out.Write(data); err != nil {
					cancel(err)
					return
				}
			}
		}
	}()
	<-ctx.Done()
	cause := context.Cause(ctx)
	if errors.Is(cause, errDetached) {
		_ = conn.Close(websocket.StatusNormalClosure, "detach")
		return errDetached
	}
	if st := websocket.CloseStatus(cause); st == websocket.StatusNormalClosure || st == websocket.StatusGoingAway {
		var ce websocket.CloseError
		errors.As(cause, &ce)
		return fmt.Errorf("the server closed the terminal: %s", orDash(ce.Reason))
	}
	return fmt.Errorf("terminal of session %s: %w", shortID(s.ID), cause)
}
