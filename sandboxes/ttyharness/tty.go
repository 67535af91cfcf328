package ttyharness

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/creack/pty"
)

// Limits of a terminal client.
const (
	// MaxCols and MaxRows bound a resize; larger asks are ignored.
	MaxCols = 1000
	MaxRows = 1000
	// maxMessage bounds one client message (a large paste).
	maxMessage = 1 << 20
	// quickExits is how many attaches in a row may end within a second
	// (the tool dying at once) before the socket is closed.
	quickExits = 3
)

// Resize is the client's text message that resizes its terminal.
type Resize struct {
	Type string `json:"type"` // "resize"
	Cols int    `json:"cols"`
	Rows int    `json:"rows"`
}

// ttyConn is one WebSocket client: a tmux attach client on a pty of its
// own, re-attached when the tool's session is restarted under it.
type ttyConn struct {
	s    *Server
	conn *websocket.Conn

	mu   sync.Mutex
	ptmx *os.File // the current attach client's pty, nil between attaches
	size pty.Winsize
}

// serveTTY is GET /tty: the WebSocket to the tool's terminal.
func (s *Server) serveTTY(w http.ResponseWriter, r *http.Request) {
	if ready, failed, progress := s.status(); !ready {
		msg := "terminal not ready: " + progress
		if failed != "" {
			msg = "workspace failed: " + failed
		}
		writeError(w, http.StatusServiceUnavailable, "unavailable", msg)
		return
	}
	size := pty.Winsize{Cols: uint16(s.cfg.Cols), Rows: uint16(s.cfg.Rows)}
	if c, err := strconv.Atoi(r.URL.Query().Get("cols")); err == nil && c > 0 && c <= MaxCols {
		size.Cols = uint16(c)
	}
	if rr, err := strconv.Atoi(r.URL.Query().Get("rows")); err == nil && rr > 0 && rr <= MaxRows {
		size.Rows = uint16(rr)
	}
	// The token, not the origin, authorizes a client (GET /tty needs it
	// like every route), and lap's clients are CLIs and lapd's relay.
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		s.log.Warn("tty: websocket upgrade", "err", err)
		return
	}
	conn.SetReadLimit(maxMessage)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.stop, cancel)
	defer stop()

	s.wg.Add(1)
	defer s.wg.Done()
	s.attached.Add(1)
	s.lastAttach.Store(time.Now().UnixNano())
	defer func() {
		s.attached.Add(-1)
		s.lastAttach.Store(time.Now().UnixNano())
	}()
	s.log.Info("tty attached", "remote", r.RemoteAddr, "cols", size.Cols, "rows", size.Rows)

	t := &ttyConn{s: s, conn: conn, size: size}
	go t.readClient(ctx, cancel)
	status, reason := t.relay(ctx)
	s.log.Info("tty detached", "remote", r.RemoteAddr, "reason", reason)
	_ = conn.Close(status, reason)
}

// relay attaches to the tool's session and copies the terminal's output
// to the client until the client goes or ctx ends. When the attach client
// ends because the tool's session did (the tool exited), it starts the
// session again and re-attaches, so the client sees the tool restart.
func (t *ttyConn) relay(ctx context.Context) (websocket.StatusCode, string) {
	quick := 0
	for {
		began := time.Now()
		err := t.attach(ctx)
		if ctx.Err() != nil {
			return websocket.StatusNormalClosure, "detached"
		}
		if err != nil {
			t.s.log.Warn("tty: attach", "err", err)
			return websocket.StatusInternalError, "terminal error; see the harness log"
		}
		if time.Since(began) < time.Second {
			quick++
		} else {
			quick = 0
		}
		if quick >= quickExits {
			return websocket.StatusInternalError, "the terminal keeps ending; see the harness log"
		}
		// The tool exited and took its session with it: start it again
		// now rather than wait for the supervisor's back-off.
		if err := t.s.ensureSession(ctx); err != nil && ctx.Err() == nil {
			t.s.log.Warn("tty: restart the tool's session", "err", err)
		}
	}
}

// attach runs one tmux attach client on a new pty and copies its output
// to the client until it ends.
func (t *ttyConn) attach(ctx context.Context) error {
	_, env := t.s.tool.command(t.s)
	cmd := t.s.tmux.attachCommand(ctx, env)
	// A hang-up detaches a tmux client cleanly; the tool keeps running.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGHUP) }
	cmd.WaitDelay = 2 * time.Second
	t.mu.Lock()
	ptmx, err := pty.StartWithSize(cmd, &t.size)
	if err != nil {
		t.mu.Unlock()
		return err
	}
	t.ptmx = ptmx
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		t.ptmx = nil
		t.mu.Unlock()
		_ = ptmx.Close()
		_ = cmd.Wait()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := ptmx.Read(buf)
		if n > 0 {
			if werr := t.conn.Write(ctx, websocket.MessageBinary, buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			// EIO: the attach client exited and the pty closed.
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.EIO) {
				return nil
			}
			return err
		}
	}
}

// readClient applies the client's messages until it goes, then cancels:
// binary messages are input to the terminal, text messages resizes.
func (t *ttyConn) readClient(ctx context.Context, done context.CancelFunc) {
	defer done()
	for {
		typ, data, err := t.conn.Read(ctx)
		if err != nil {
			return
		}
		switch typ {
		case websocket.MessageBinary:
			t.s.lastInput.Store(time.Now().UnixNano())
			t.write(data)
		case websocket.MessageText:
			t.control(data)
		}
	}
}

// write passes input to the current attach client; input between two
// attaches (the tool restarting) is dropped, as a terminal would.
func (t *ttyConn) write(data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ptmx == nil {
		return
	}
	if _, err := t.ptmx.Write(data); err != nil {
		t.s.log.Debug("tty: write input", "err", err)
	}
}

// control handles a text message: a resize, validated; anything else is
// logged and ignored, so a newer client's messages do not break the
// terminal.
func (t *ttyConn) control(data []byte) {
	var m Resize
	if err := json.Unmarshal(data, &m); err != nil {
		t.s.log.Warn("tty: ignored a text message that is not JSON", "err", err, "bytes", len(data))
		return
	}
	if m.Type != "resize" {
		t.s.log.Warn("tty: ignored a control message", "type", m.Type)
		return
	}
	if m.Cols < 1 || m.Cols > MaxCols || m.Rows < 1 || m.Rows > MaxRows {
		t.s.log.Warn("tty: ignored a resize out of range", "cols", m.Cols, "rows", m.Rows)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.size = pty.Winsize{Cols: uint16(m.Cols), Rows: uint16(m.Rows)}
	if t.ptmx != nil {
		if err := pty.Setsize(t.ptmx, &t.size); err != nil {
			t.s.log.Debug("tty: resize", "err", err)
		}
	}
}
