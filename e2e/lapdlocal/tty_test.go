package lapdlocal

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/cli/clitest"
	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/internal/waitfor"
)

const (
	ttyFixPrompt = "Fix the README"
	// ttyReply has no blanks, so it reads the same however tmux draws it.
	ttyReply = "README-fixed-by-the-fake-model"
)

// TestClaudeCodeThroughLapdTTY runs the real Claude Code (make build's
// pinned one) in a local sandbox and works it through lapd's terminal
// WebSocket as lap's CLI would: the prompt typed, the model's Read and
// Edit tool calls run in the repo, the reply drawn, a detach, a
// re-attach that redraws the reply, and, once the session scaled to zero,
// an attach that resumes it with the conversation.
func TestClaudeCodeThroughLapdTTY(t *testing.T) {
	t.Parallel()
	_, l, sess, readme := startClaudeCode(t, "3s")

	began := time.Now()
	tm := dialLapdTTY(t, l, sess)
	tm.resize(110, 35)
	tm.waitFor(0, "bypass permissions on", 2*time.Minute)
	t.Logf("attach → Claude Code's prompt through lapd: %s", time.Since(began).Round(time.Millisecond))

	m := tm.mark()
	tm.send(ttyFixPrompt + " please")
	tm.waitFor(m, ttyFixPrompt, 30*time.Second)
	tm.send("\r") // Enter on its own, as a person's keystroke
	tm.waitFor(m, ttyReply, 2*time.Minute)
	onDisk, err := os.ReadFile(readme)
	require.NoError(t, err)
	assert.Equal(t, "# demo\nhello from the agent\n", string(onDisk), "Claude Code's Edit tool changed the repo")
	tm.detach()

	tm2 := dialLapdTTY(t, l, sess)
	tm2.waitFor(0, ttyReply, time.Minute)
	tm2.detach()

	// Detached and idle: scaled to zero; attaching resumes the sandbox,
	// and Claude Code continues its conversation (--continue).
	waitfor.Within(t, time.Minute, "the session idles", func() bool { return l.Session(sess.ID, "").Status == api.SessionIdle })
	tm3 := dialLapdTTY(t, l, sess)
	tm3.waitFor(0, ttyReply, 2*time.Minute)
	assert.Equal(t, api.SessionReady, l.Session(sess.ID, "").Status)
	tm3.detach()
}

// startClaudeCode runs lapd with make build's Claude Code terminal
// harness and the fake LLM scripted for the fix prompt (Read, Edit,
// reply), and opens a ready session of a claude-code agent; readme is the
// file the turn edits.
func startClaudeCode(t *testing.T, idle string) (p *platform.Platform, l *platform.Lapd, sess api.Session, readme string) {
	t.Helper()
	p = platform.New(t, map[string]string{"WARM_POOL_SIZE": "0", "LOCAL_STOP_ON_EXIT": "true", "SESSION_IDLE_TIMEOUT": idle})
	p.Env["LAP_SANDBOX_GATEWAY_URL"] = p.LLM.URL() + "/llm"
	// make build's launcher of the terminal harness with Claude Code.
	launcher := filepath.Join(platform.RepoRoot(t), "bin", "lap-harness-claude-code")
	if _, err := os.Stat(launcher); err != nil {
		t.Fatalf("%s is not built (%v): run `make build` first", launcher, err)
	}
	// tmux's socket lives in the workspace, under the data dir, and a
	// unix socket's path has ~100 bytes: the platform's is too long.
	data, err := os.MkdirTemp("", "lt")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(data, 0o711))
	t.Cleanup(func() { _ = os.RemoveAll(data) })
	p.Env["LAP_DATA_DIR"] = data
	p.Env["PATH"] = filepath.Dir(launcher) + string(os.PathListSeparator) + p.Env["PATH"]
	p.LLM.Respond(func(r fakellm.Request) fakellm.Reply {
		isFix, step := ttyTurn(r)
		switch {
		case len(r.Tools) == 0 || !isFix:
			return fakellm.Text("ok") // side requests: titles, summaries
		case step == 0:
			return fakellm.Reply{Text: "Let me read it.", ToolCalls: []fakellm.ToolCall{fakellm.ClaudeCodeTools.Read(readme)}}
		case step == 1:
			return fakellm.CallTools(fakellm.ClaudeCodeTools.Edit(readme, "hello world", "hello from the agent"))
		default:
			return fakellm.Reply{Text: ttyReply, Chunks: 1}
		}
	})
	l = p.Start()
	t.Cleanup(l.Stop)
	l.CreateAgentWith(api.CreateAgentRequest{Name: "cc", HarnessID: "claude-code", Model: "anthropic/claude-sonnet-4-5",
		Prompt: "You are a careful engineer.", RepoURL: platform.GitRepo(t, map[string]string{"README.md": "# demo\nhello world\n"})})
	sess = l.ReadySession("cc")
	require.NotEmpty(t, sess.TTYURL)
	readme = filepath.Join(p.Workspace(sess.SandboxID), "repo", "README.md")
	return p, l, sess, readme
}

// TestClaudeCodeThroughLapOnAPTY is the same through lap's terminal mode
// on a pseudo-terminal: lap resume attaches to the session (whose
// workspace the fake LLM's tool calls name; lap cc would open another),
// the prompt typed, the reply drawn, Ctrl-] detaches with the resume
// hint, lap resume re-attaches.
func TestClaudeCodeThroughLapOnAPTY(t *testing.T) {
	t.Parallel()
	_, l, sess, readme := startClaudeCode(t, "15m")
	env := clitest.Target{URL: l.URL, Key: platform.MasterKey}.Env(t.TempDir())
	tm := clitest.StartTerm(t, platform.Lap(), env, "resume", sess.ID)
	waitPTY(tm, "bypass permissions on")
	tm.Send(ttyFixPrompt + " please")
	waitPTY(tm, ttyFixPrompt+"please")
	tm.Send("\r")
	waitPTY(tm, ttyReply)
	onDisk, err := os.ReadFile(readme)
	require.NoError(t, err)
	assert.Equal(t, "# demo\nhello from the agent\n", string(onDisk), "screen: %s", tail(plain(tm.Raw())))
	tm.Send("\x1d") // Ctrl-]
	require.Equal(t, 0, tm.Wait())
	hint := regexp.MustCompile(`lap resume ([0-9a-f]{8})`).FindStringSubmatch(ttyEscapes.ReplaceAllString(tm.Raw(), ""))
	require.NotNil(t, hint, "the resume hint")

	tm2 := clitest.StartTerm(t, platform.Lap(), env, "resume", hint[1])
	waitPTY(tm2, ttyReply)
	tm2.Send("\x1d")
	require.Equal(t, 0, tm2.Wait())
}

// waitPTY waits until the program's output shows want (escapes and
// whitespace ignored).
func waitPTY(tm *clitest.Term, want string) {
	want = plain(want)
	tm.WaitFor(want, func([]string) bool { return strings.Contains(plain(tm.Raw()), want) })
}

// ttyTurn finds whether the request answers the fix prompt and how far
// the turn is: the tool results since the prompt.
func ttyTurn(r fakellm.Request) (isFix bool, step int) {
	for i := len(r.Messages) - 1; i >= 0; i-- {
		m := r.Messages[i]
		if m.Role == "user" && strings.Contains(m.Text, ttyFixPrompt) {
			for _, later := range r.Messages[i+1:] {
				if later.Role == "tool" {
					step++
				}
			}
			return true, step
		}
	}
	return false, 0
}

// lapdTerm is a client of lapd's GET /sessions/:id/tty speaking exactly
// the protocol: binary input, resize text messages, binary output.
type lapdTerm struct {
	t    testing.TB
	conn *websocket.Conn

	mu      sync.Mutex
	out     bytes.Buffer
	changed chan struct{}
	err     error
	closed  chan struct{}
}

func dialLapdTTY(t testing.TB, l *platform.Lapd, sess api.Session) *lapdTerm {
	t.Helper()
	req, err := l.Request(context.Background(), http.MethodGet, sess.TTYURL, nil)
	require.NoError(t, err)
	u := "ws" + strings.TrimPrefix(req.URL.String(), "http") + "?token=" + sess.TTYToken
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + sess.TTYToken}}})
	require.NoError(t, err)
	c.SetReadLimit(16 << 20)
	tm := &lapdTerm{t: t, conn: c, changed: make(chan struct{}), closed: make(chan struct{})}
	go tm.read()
	t.Cleanup(func() { _ = c.CloseNow() })
	return tm
}

func (tm *lapdTerm) read() {
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

func (tm *lapdTerm) send(s string) {
	tm.t.Helper()
	require.NoError(tm.t, tm.conn.Write(context.Background(), websocket.MessageBinary, []byte(s)))
}

func (tm *lapdTerm) resize(cols, rows int) {
	tm.t.Helper()
	b, _ := json.Marshal(map[string]any{"type": "resize", "cols": cols, "rows": rows})
	require.NoError(tm.t, tm.conn.Write(context.Background(), websocket.MessageText, b))
}

func (tm *lapdTerm) mark() int {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.out.Len()
}

var ttyEscapes = regexp.MustCompile(`\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[P^_][^\x1b]*\x1b\\|\x1b[()*+][0-9A-Za-z]|\x1b[ -/]*[0-~]`)

// plain strips escapes and whitespace: tmux moves the cursor instead of
// writing blanks.
func plain(s string) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == 0x7f {
			return -1
		}
		return r
	}, ttyEscapes.ReplaceAllString(s, ""))
}

// waitFor waits until the output after mark shows want.
func (tm *lapdTerm) waitFor(mark int, want string, d time.Duration) {
	tm.t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	want = plain(want)
	for {
		tm.mu.Lock()
		got := plain(tm.out.String()[mark:])
		ch, err := tm.changed, tm.err
		tm.mu.Unlock()
		if strings.Contains(got, want) {
			return
		}
		if err != nil {
			tm.t.Fatalf("terminal closed (%v) before it showed %q; it showed %q", err, want, tail(got))
		}
		select {
		case <-ch:
		case <-deadline.C:
			tm.t.Fatalf("terminal did not show %q within %s; it showed %q", want, d, tail(got))
		}
	}
}

func tail(s string) string {
	if len(s) > 2000 {
		return "…" + s[len(s)-2000:]
	}
	return s
}

func (tm *lapdTerm) detach() {
	_ = tm.conn.Close(websocket.StatusNormalClosure, "detach")
	<-tm.closed
}
