package ttyharness_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/sandboxes/ttyharness"
)

const token = "harness-secret"

// term is a test client of GET /tty speaking exactly the harness's
// protocol: binary input, text resize messages, binary output. It keeps
// everything the terminal sent.
type term struct {
	t    testing.TB
	conn *websocket.Conn

	mu      sync.Mutex
	out     bytes.Buffer
	changed chan struct{}
	closed  chan struct{}
	err     error
}

// dial opens the terminal at base (http://host:port) with the token as a
// bearer header, or as ?token= when inQuery.
func dial(t testing.TB, base, tok string, inQuery bool) *term {
	t.Helper()
	c, err := tryDial(base, tok, inQuery)
	require.NoError(t, err, "dial %s/tty", base)
	tm := &term{t: t, conn: c, changed: make(chan struct{}), closed: make(chan struct{})}
	c.SetReadLimit(16 << 20)
	go tm.read()
	t.Cleanup(func() { tm.close() })
	return tm
}

func tryDial(base, tok string, inQuery bool) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(base, "http") + "/tty"
	opts := &websocket.DialOptions{HTTPHeader: http.Header{}}
	if inQuery {
		u += "?token=" + tok
	} else if tok != "" {
		opts.HTTPHeader.Set("Authorization", "Bearer "+tok)
	}
	c, resp, err := websocket.Dial(ctx, u, opts)
	if err != nil && resp != nil {
		return nil, fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
	}
	return c, err
}

func (tm *term) read() {
	defer close(tm.closed)
	for {
		typ, data, err := tm.conn.Read(context.Background())
		tm.mu.Lock()
		if err != nil {
			tm.err = err
			close(tm.changed)
			tm.changed = make(chan struct{})
			tm.mu.Unlock()
			return
		}
		if typ == websocket.MessageBinary {
			tm.out.Write(data)
		}
		close(tm.changed)
		tm.changed = make(chan struct{})
		tm.mu.Unlock()
	}
}

// send types s.
func (tm *term) send(s string) {
	tm.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(tm.t, tm.conn.Write(ctx, websocket.MessageBinary, []byte(s)))
}

// text sends a text (control) message.
func (tm *term) text(s string) {
	tm.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(tm.t, tm.conn.Write(ctx, websocket.MessageText, []byte(s)))
}

// resize sends the resize message.
func (tm *term) resize(cols, rows int) {
	b, _ := json.Marshal(ttyharness.Resize{Type: "resize", Cols: cols, Rows: rows})
	tm.text(string(b))
}

// screen is the output so far as plain text: escape sequences and
// whitespace removed, since tmux moves the cursor instead of writing
// blanks and redraws only what changed.
func (tm *term) screen() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return plain(tm.out.String())
}

// raw is the output so far, as sent.
func (tm *term) raw() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.out.String()
}

var escapes = regexp.MustCompile(`\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[P^_][^\x1b]*\x1b\\|\x1b[()*+][0-9A-Za-z]|\x1b[ -/]*[0-~]`)

// plain strips terminal escapes, control characters and whitespace.
func plain(s string) string {
	s = escapes.ReplaceAllString(s, "")
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// waitFor waits until the screen shows want (whitespace ignored) count
// times, or fails after d.
func (tm *term) waitFor(want string, count int, d time.Duration) {
	tm.t.Helper()
	want = plain(want)
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		tm.mu.Lock()
		got := plain(tm.out.String())
		changed, err := tm.changed, tm.err
		tm.mu.Unlock()
		if strings.Count(got, want) >= count {
			return
		}
		if err != nil {
			tm.t.Fatalf("terminal closed (%v) before it showed %q ×%d; it showed:\n%s", err, want, count, tail(got))
		}
		select {
		case <-changed:
		case <-deadline.C:
			tm.t.Fatalf("terminal did not show %q ×%d within %s; it showed:\n%s", want, count, d, tail(got))
		}
	}
}

// mark returns how much output there is, for waiting on output after it.
func (tm *term) mark() int {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.out.Len()
}

// waitAfter waits until output after mark shows want and returns how long
// that took from calling it, or from calling first, when given (e.g. the
// keystroke whose echo is awaited).
func (tm *term) waitAfter(mark int, want string, d time.Duration, first ...func()) time.Duration {
	tm.t.Helper()
	began := time.Now()
	for _, fn := range first {
		fn()
	}
	want = plain(want)
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		tm.mu.Lock()
		got := plain(tm.out.String()[mark:])
		changed, err := tm.changed, tm.err
		tm.mu.Unlock()
		if strings.Contains(got, want) {
			return time.Since(began)
		}
		if err != nil {
			tm.t.Fatalf("terminal closed (%v) before it showed %q", err, want)
		}
		select {
		case <-changed:
		case <-deadline.C:
			tm.t.Fatalf("terminal did not show %q within %s; it showed:\n%s", want, d, tail(got))
		}
	}
}

func tail(s string) string {
	if len(s) > 3000 {
		return "…" + s[len(s)-3000:]
	}
	return s
}

// close closes the socket as a client that detaches.
func (tm *term) close() {
	_ = tm.conn.Close(websocket.StatusNormalClosure, "detach")
	select {
	case <-tm.closed:
	case <-time.After(10 * time.Second):
		_ = tm.conn.CloseNow()
	}
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond) // a poll interval, not a wait for an event
	}
}

// get does GET path with the token (when not empty) and decodes JSON.
func get(t testing.TB, base, path, tok string, out any) int {
	t.Helper()
	req, err := http.NewRequest("GET", base+path, nil)
	require.NoError(t, err)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	if out != nil && res.StatusCode < 300 {
		require.NoError(t, json.NewDecoder(res.Body).Decode(out))
	}
	return res.StatusCode
}

// waitReady waits until GET /session answers 200.
func waitReady(t testing.TB, base string, d time.Duration, diag func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	probe := func() bool {
		req, _ := http.NewRequest("GET", base+"/session", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return false // not listening yet
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}
	for {
		if probe() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("harness not ready within %s:\n%s", d, diag())
		}
		time.Sleep(50 * time.Millisecond) // a poll interval
	}
}

// tmuxOut runs a tmux command on the harness's socket and returns its output.
func tmuxOut(t testing.TB, socket string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", socket}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// gitRepo makes a repository with README.md on branch main to clone.
func gitRepo(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	run := func(args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "git %v: %s", args, out)
	}
	run("init", "-q", "-b", "main")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "README.md"), []byte("# demo\nhello world\n"), 0o644))
	run("add", "README.md")
	run("commit", "-q", "-m", "first")
	return dir
}

// shortTempDir is a temporary directory with a short path: tmux's socket
// lives in the workspace and a unix socket path has ~100 bytes.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ttyh")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testLogger logs to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
