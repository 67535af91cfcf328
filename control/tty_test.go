package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/config"
	"lap.dev/lap/control/api"
	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/control/secrets"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/local"
	"lap.dev/lap/store"
)

// fakeTUI stands in for Claude Code behind the real terminal harness: it
// shows its terminal size and how often it was started, and echoes each
// line typed.
const fakeTUI = `#!/bin/sh
run=$(( $(cat "$HOME/runs" 2>/dev/null || echo 0) + 1 )); echo $run > "$HOME/runs"
echo "fake tool ready size=$(stty size | tr ' ' x) run=$run"
while IFS= read -r line; do
  [ "$line" = size ] && echo "size=$(stty size | tr ' ' x)"
  echo "echo:$line"
done
`

// ttyHarnessBin is cmd/lap-tty-harness, built by TestMain into a
// directory removed when the tests end.
var ttyHarnessBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lapttyh")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ttyHarnessBin = filepath.Join(dir, "lap-tty-harness")
	out, err := exec.Command("go", "build", "-o", ttyHarnessBin, "lap.dev/lap/cmd/lap-tty-harness").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build lap-tty-harness: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ttyEnv is lapd on loopback with the local backend running the real
// terminal harness (claude-code's entry points at lap-tty-harness with
// the fake tool).
type ttyEnv struct {
	*env
	local *local.Backend
}

func newTTYEnv(t testing.TB, settings map[string]string) *ttyEnv {
	t.Helper()
	bin := ttyHarnessBin
	tool := filepath.Join(t.TempDir(), "fake-claude")
	require.NoError(t, os.WriteFile(tool, []byte(fakeTUI), 0o755))
	dir := t.TempDir()
	sbDir, err := os.MkdirTemp("", "ltty") // tmux's socket path must be short
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(sbDir) })
	vars := map[string]string{"MASTER_KEY": testKey, "LAP_DATA_DIR": dir, "LAP_LISTEN": "127.0.0.1:0",
		"WARM_POOL_SIZE": "0", "LOCAL_SANDBOX_USER": "root", "LAP_SANDBOX_GATEWAY_URL": "http://127.0.0.1:1/llm"}
	for k, v := range settings {
		vars[k] = v
	}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := vars[k]; return v, ok }, "")
	require.NoError(t, err)
	lb, err := local.New(local.Options{Dir: sbDir, Config: cfg.Local, Lookup: func(id string) (sandboxes.Harness, bool) {
		h, ok := sandboxes.LookupHarness(id)
		if ok && id == "claude-code" {
			h.Command = []string{bin, "--tool", "claude-code", "--tool-bin", tool}
		}
		return h, ok
	}})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = lb.Close(ctx)
	})
	st, err := store.Open(filepath.Join(dir, store.FileName), store.Options{})
	require.NoError(t, err)
	key, err := secrets.LoadKey(cfg.EncryptionKey, dir)
	require.NoError(t, err)
	box, err := secrets.New(key)
	require.NoError(t, err)
	tokens := sandboxtoken.NewSigner(box.DeriveKey(secrets.SandboxTokenLabel))
	srv, err := New(Options{Config: cfg, Store: st, Backend: lb, Secrets: box, Tokens: tokens})
	require.NoError(t, err)
	require.NoError(t, srv.Start(context.Background()))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	e := &env{t: t, srv: srv, store: st, tokens: tokens, dir: dir,
		url: "http://" + ln.Addr().String(), client: &http.Client{Timeout: time.Minute}}
	t.Cleanup(func() {
		// The sandboxes go before the store closes.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var list api.List[api.Session]
		e.do(http.MethodGet, "/sessions", nil, &list)
		for _, s := range list.Data {
			e.do(http.MethodDelete, "/sessions/"+s.ID, nil, nil)
		}
		waitfor.Poll(ctx, 20*time.Second, 50*time.Millisecond, func() bool {
			sbs, _ := lb.List(ctx)
			return len(sbs) == 0
		})
		e.stop()
	})
	return &ttyEnv{env: e, local: lb}
}

// terminalSession creates a claude-code agent and a ready session of it.
func (e *ttyEnv) terminalSession(name string) api.Session {
	e.t.Helper()
	e.createAgent(name, map[string]any{"harness_id": "claude-code", "repo_url": ""})
	return e.readySession(name)
}

// wsTerm is a client of lapd's GET /sessions/:id/tty speaking exactly the
// protocol: binary input, {"type":"resize"} text messages, binary output.
type wsTerm struct {
	t    testing.TB
	conn *websocket.Conn

	mu      sync.Mutex
	out     bytes.Buffer
	changed chan struct{}
	err     error
	closed  chan struct{}
}

// dialTerm opens session id's terminal with tok, as a bearer header or
// ?token= (inQuery).
func (e *ttyEnv) dialTerm(path, tok string, inQuery bool) (*wsTerm, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(e.url, "http") + path
	opts := &websocket.DialOptions{HTTPHeader: http.Header{}}
	if inQuery {
		u += "?token=" + tok
	} else {
		opts.HTTPHeader.Set("Authorization", "Bearer "+tok)
	}
	c, resp, err := websocket.Dial(ctx, u, opts)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return nil, status, err
	}
	c.SetReadLimit(16 << 20)
	tm := &wsTerm{t: e.t, conn: c, changed: make(chan struct{}), closed: make(chan struct{})}
	go tm.read()
	e.t.Cleanup(func() { _ = c.CloseNow() })
	return tm, http.StatusSwitchingProtocols, nil
}

func (tm *wsTerm) read() {
	defer close(tm.closed)
	for {
		typ, data, err := tm.conn.Read(context.Background())
		tm.mu.Lock()
		if err != nil {
			tm.err = err
		} else if typ == websocket.MessageBinary {
			tm.out.Write(data)
		}
		close(tm.changed)
		tm.changed = make(chan struct{})
		tm.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (tm *wsTerm) send(s string) {
	tm.t.Helper()
	require.NoError(tm.t, tm.conn.Write(context.Background(), websocket.MessageBinary, []byte(s)))
}

func (tm *wsTerm) resize(cols, rows int) {
	tm.t.Helper()
	b, _ := json.Marshal(map[string]any{"type": "resize", "cols": cols, "rows": rows})
	require.NoError(tm.t, tm.conn.Write(context.Background(), websocket.MessageText, b))
}

var ttyEscapes = regexp.MustCompile(`\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[P^_][^\x1b]*\x1b\\|\x1b[()*+][0-9A-Za-z]|\x1b[ -/]*[0-~]`)

// plainScreen strips escapes and whitespace: tmux moves the cursor
// instead of writing blanks.
func plainScreen(s string) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == 0x7f {
			return -1
		}
		return r
	}, ttyEscapes.ReplaceAllString(s, ""))
}

// mark is the length of the output so far.
func (tm *wsTerm) mark() int {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.out.Len()
}

// waitFor waits until the output after mark shows want (whitespace and
// escapes ignored) and returns how long that took.
func (tm *wsTerm) waitFor(mark int, want string, d time.Duration) time.Duration {
	tm.t.Helper()
	start := time.Now()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	want = plainScreen(want)
	for {
		tm.mu.Lock()
		got := plainScreen(tm.out.String()[mark:])
		ch, err := tm.changed, tm.err
		tm.mu.Unlock()
		if strings.Contains(got, want) {
			return time.Since(start)
		}
		if err != nil {
			tm.t.Fatalf("terminal closed (%v) before it showed %q; it showed %q", err, want, got)
		}
		select {
		case <-ch:
		case <-deadline.C:
			tm.t.Fatalf("terminal did not show %q within %s; it showed %q", want, d, got)
		}
	}
}

// detach closes the socket as lap's CLI does.
func (tm *wsTerm) detach() {
	_ = tm.conn.Close(websocket.StatusNormalClosure, "detach")
	<-tm.closed
}

func TestTerminalSessionThroughLapd(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatalf("tmux is needed for the terminal harness: %v", err)
	}
	e := newTTYEnv(t, nil)
	sess := e.terminalSession("tui")
	assert.Equal(t, api.BasePath+"/sessions/"+sess.ID+"/tty", sess.TTYURL)
	assert.NotEmpty(t, sess.TTYToken)
	assert.Empty(t, sess.HarnessSessionID, "a terminal harness has no sessions")
	require.Equal(t, sess.TTYToken, e.session(sess.ID).TTYToken, "the token reads the same on every GET")

	// Turns are refused with a pointer to the terminal.
	status, _, body := e.send(sess.ID, "hello")
	require.Equal(t, http.StatusConflict, status, "%s", body)
	assert.Contains(t, errorOf(t, body).Message, "terminal agent")

	// Attach with the session's token, resize, type, see the echo.
	tm, code, err := e.dialTerm(sess.TTYURL, sess.TTYToken, true)
	require.NoError(t, err, "HTTP %d", code)
	tm.waitFor(0, "fake tool ready", 30*time.Second)
	tm.resize(90, 20)
	m := tm.mark()
	tm.send("size\r")
	tm.waitFor(m, "size=20x90", 10*time.Second)
	m = tm.mark()
	tm.send("hello lapd\r")
	tm.waitFor(m, "echo:hello lapd", 10*time.Second)
	tm.detach()

	// Re-attach with the master key as a bearer: the tool kept running
	// (run=1) and the screen is redrawn, earlier lines included.
	tm2, code, err := e.dialTerm(sess.TTYURL, testKey, false)
	require.NoError(t, err, "HTTP %d", code)
	tm2.waitFor(0, "echo:hello lapd", 30*time.Second)
	m = tm2.mark()
	tm2.send("again\r")
	tm2.waitFor(m, "echo:again", 10*time.Second)
	assert.NotContains(t, plainScreen(tm2.out.String()), "run=2", "the tool was not restarted")
	tm2.detach()

	// Another session's token, no token and a wrong one are refused.
	other := e.readySession("tui")
	_, code, err = e.dialTerm(sess.TTYURL, other.TTYToken, true)
	require.Error(t, err)
	assert.Equal(t, http.StatusUnauthorized, code)
	_, code, _ = e.dialTerm(sess.TTYURL, "", false)
	assert.Equal(t, http.StatusUnauthorized, code)
	_, code, _ = e.dialTerm(api.BasePath+"/sessions/nope/tty", "wrong", true)
	assert.Equal(t, http.StatusUnauthorized, code, "an unknown id is not told from a wrong token")
	// A plain GET (no upgrade) is a clear 400.
	st, b := e.raw(http.MethodGet, sess.TTYURL, "", nil, true)
	assert.Equal(t, http.StatusBadRequest, st, "%s", b)
}

func TestWarmTerminalSession(t *testing.T) {
	e := newTTYEnv(t, map[string]string{"WARM_POOL_SIZE": "1"})
	a := e.createAgent("tui", map[string]any{"harness_id": "claude-code", "repo_url": ""})
	waitfor.Within(t, 60*time.Second, "a warm sandbox", func() bool {
		sbs, _ := e.store.ListSandboxes(context.Background(), store.SandboxFilter{})
		for _, sb := range sbs {
			if sb.AgentID == a.ID && sb.State == store.SandboxWarm {
				return true
			}
		}
		return false
	})
	var sess api.Session
	require.Equal(t, http.StatusCreated, e.do(http.MethodPost, "/agents/tui/session", map[string]any{}, &sess))
	require.Equal(t, api.SessionReady, sess.Status, "a warm claim is ready in the answer")
	require.NotEmpty(t, sess.TTYToken)
	tm, code, err := e.dialTerm(sess.TTYURL, sess.TTYToken, true)
	require.NoError(t, err, "HTTP %d", code)
	tm.waitFor(0, "fake tool ready", 30*time.Second)
	tm.detach()
}

func TestChatSessionHasNoTerminal(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.createAgent("chat", nil)
	sess := e.readySession("chat")
	assert.Empty(t, sess.TTYURL)
	assert.Empty(t, sess.TTYToken)
	st, b := e.raw(http.MethodGet, ttyPath(sess.ID), "", nil, true)
	assert.Equal(t, http.StatusConflict, st, "%s", b)
	st, _ = e.raw(http.MethodGet, ttyPath(sess.ID), "", nil, false)
	assert.Equal(t, http.StatusUnauthorized, st)
}

func TestIdleTerminalSessionScalesToZeroAndReattaches(t *testing.T) {
	// The reaper is driven by hand with a clock two timeouts ahead, so
	// the test does not wait for time to pass.
	e := newTTYEnv(t, map[string]string{"SESSION_IDLE_TIMEOUT": "1h"})
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	sess := e.terminalSession("tui")
	tm, code, err := e.dialTerm(sess.TTYURL, sess.TTYToken, false)
	require.NoError(t, err, "HTTP %d", code)
	tm.waitFor(0, "fake tool ready", 30*time.Second)

	// Attached and silent past the idle timeout: not reaped.
	e.srv.o.suspendIdle(context.Background(), later())
	require.Equal(t, api.SessionReady, e.session(sess.ID).Status, "an attached terminal is activity")
	m := tm.mark()
	tm.send("still here\r")
	tm.waitFor(m, "echo:still here", 10*time.Second)
	tm.detach()

	// Detached: scaled to zero once idle for the timeout.
	waitfor.Cond(t, "the relay counts the detach", func() bool { return !e.srv.o.terms.attached(sess.ID) })
	e.srv.o.suspendIdle(context.Background(), time.Now().Add(time.Minute))
	require.Equal(t, api.SessionReady, e.session(sess.ID).Status, "idle for less than the timeout since the detach")
	e.srv.o.suspendIdle(context.Background(), later())
	require.Equal(t, api.SessionIdle, e.session(sess.ID).Status)

	// Attaching resumes it; the workspace (the tool's HOME with its run
	// count) is kept, and the tool starts again.
	tm2, code, err := e.dialTerm(sess.TTYURL, sess.TTYToken, true)
	require.NoError(t, err, "HTTP %d", code)
	tm2.waitFor(0, "run=2", 30*time.Second)
	assert.Equal(t, api.SessionReady, e.session(sess.ID).Status)
	tm2.detach()
}

// BenchmarkTTYThroughLapd measures attach → first screen and keystroke
// echo through lapd's relay, with the real terminal harness and tmux.
func BenchmarkTTYThroughLapd(b *testing.B) {
	e := newTTYEnv(b, nil)
	sess := e.terminalSession("tui")
	var attach, echo []time.Duration
	// The first screen is the tool's greeting, then the last line echoed
	// before the previous detach (tmux redraws the screen).
	screen := "fake tool ready"
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		tm, _, err := e.dialTerm(sess.TTYURL, sess.TTYToken, true)
		require.NoError(b, err)
		tm.waitFor(0, screen, 30*time.Second)
		attach = append(attach, time.Since(start))
		for j := 0; j < 10; j++ {
			m := tm.mark()
			key := fmt.Sprintf("k%d-%d", i, j)
			start := time.Now()
			tm.send(key)
			tm.waitFor(m, key, 10*time.Second)
			echo = append(echo, time.Since(start))
			m = tm.mark()
			tm.send("\r")
			tm.waitFor(m, "echo:"+key, 10*time.Second)
			screen = "echo:" + key
		}
		tm.detach()
	}
	b.ReportMetric(float64(p50(attach).Microseconds())/1000, "attach-ms-p50")
	b.ReportMetric(float64(p50(echo).Microseconds())/1000, "echo-ms-p50")
	b.Logf("attach → first screen p50 %s (n=%d); keystroke echo p50 %s (n=%d)", p50(attach), len(attach), p50(echo), len(echo))
}

func p50(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
