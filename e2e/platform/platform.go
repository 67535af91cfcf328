// Package platform runs the built lap for black-box tests: it builds lapd,
// lap and lap-harness once per test binary (Main), and starts lapd
// processes on a temporary data dir and a free loopback port, with the
// local backend and the scripted fake LLM (e2e/fakellm) as the upstream.
// Every e2e package uses it, so there is one way to run the platform.
package platform

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
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
)

// Bin is the directory holding the built lapd, lap and lap-harness (lapd
// finds harnesses next to itself, as in bin/ after make build). Main sets
// it.
var Bin string

// MasterKey is the master key of every lapd these tests start.
const MasterKey = "sk-lap-e2e-master-key-0123456789"

// Deadline bounds every wait of these tests. It guards against a hang and
// is not a timing assertion: healthy waits take a fraction of it.
const Deadline = 2 * time.Minute

// Main builds the binaries into a temporary Bin, runs the tests and
// removes Bin; a package's TestMain calls os.Exit(platform.Main(m)).
func Main(m *testing.M) int {
	dir, err := os.MkdirTemp("", "lap-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Sandboxes running as users of their own execute the harness binary.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	build := exec.Command("go", "build", "-o", dir, "lap.dev/lap/cmd/lapd", "lap.dev/lap/cmd/lap", "lap.dev/lap/cmd/lap-harness")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build lapd, lap and lap-harness:", err)
		return 1
	}
	Bin = dir
	return m.Run()
}

// Lap is the path of the built lap CLI.
func Lap() string { return filepath.Join(Bin, "lap") }

// UseNodeHarnesses makes the Node.js harnesses that `make build` put in
// the checkout's bin/ (launchers of sandboxes/claude-agent-sdk's compiled
// server and of its opencode adapter, which runs the opencode binary
// installed in sandboxes/opencode) available to the lapd processes of this
// test binary. It fails the test, naming the fix, when they have not been
// built.
func UseNodeHarnesses(t testing.TB) {
	t.Helper()
	root, err := repoRoot()
	require.NoError(t, err)
	for _, built := range []string{
		filepath.Join(root, "sandboxes", "claude-agent-sdk", "dist", "server.js"),
		filepath.Join(root, "sandboxes", "claude-agent-sdk", "dist", "opencode.js"),
		filepath.Join(root, "sandboxes", "opencode", "node_modules", ".lap-stamp"),
	} {
		if _, err := os.Stat(built); err != nil {
			t.Fatalf("%s is not built (%v): run `make build` first", built, err)
		}
	}
	for _, name := range []string{"lap-harness-claude-agent-sdk", "lap-harness-opencode"} {
		src := filepath.Join(root, "bin", name)
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatalf("%s is not built (%v): run `make build` first", src, err)
		}
		// Written aside and renamed, so tests that call this in parallel
		// never exec a half-written launcher.
		tmp, err := os.CreateTemp(Bin, name+".*")
		require.NoError(t, err)
		_, err = tmp.Write(b)
		require.NoError(t, errors.Join(err, tmp.Chmod(0o755), tmp.Close()))
		require.NoError(t, os.Rename(tmp.Name(), filepath.Join(Bin, name)))
	}
}

// repoRoot is the directory of lap's go.mod, above the test's directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module lap.dev/lap\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no lap go.mod above the working directory")
		}
		dir = parent
	}
}

// RepoRoot returns the checkout's root directory (README.md, bin/).
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := repoRoot()
	require.NoError(t, err)
	return root
}

// Platform is one lapd data directory with its fake LLM; lapd processes
// come and go on it, one at a time.
type Platform struct {
	T   testing.TB
	Dir string // holds data/ (LAP_DATA_DIR); lapd's working directory
	LLM *fakellm.Server
	// Env is the environment of the next Start: lapd's settings.
	Env     map[string]string
	current *Lapd
}

// New makes a data dir and a fake LLM. By default the harnesses call the
// fake directly (LAP_SANDBOX_GATEWAY_URL), so tests of sandboxes need no
// gateway; settings override the defaults, and a setting given as ""
// is removed (e.g. LAP_SANDBOX_GATEWAY_URL: "" routes the harnesses
// through lapd's LLM gateway to the fake).
func New(t testing.TB, settings map[string]string) *Platform {
	t.Helper()
	dir, err := os.MkdirTemp("", "lap-e2e-data-")
	require.NoError(t, err)
	// Harnesses running as users of their own must reach their
	// workspaces under it (search permission only).
	require.NoError(t, os.Chmod(dir, 0o711))
	llm := fakellm.Start(t)
	p := &Platform{T: t, Dir: dir, LLM: llm, Env: map[string]string{
		"MASTER_KEY":              MasterKey,
		"LAP_DATA_DIR":            filepath.Join(dir, "data"),
		"LAP_LISTEN":              "127.0.0.1:0",
		"LITELLM_API_BASE":        llm.URL(),
		"LITELLM_API_KEY":         "sk-real-upstream-key",
		"LAP_SANDBOX_GATEWAY_URL": llm.URL(),
		"LOCAL_STOP_GRACE":        "5s",
		"PATH":                    os.Getenv("PATH"),

		// The fake LLM's test/model has no price.
		"LAP_ALLOW_UNPRICED_MODELS": "true",
	}}
	for k, v := range settings {
		if v == "" {
			delete(p.Env, k)
			continue
		}
		p.Env[k] = v
	}
	t.Cleanup(func() {
		if p.current != nil {
			p.current.Kill()
		}
		p.KillHarnesses()
		os.RemoveAll(dir)
	})
	return p
}

// DataDir is LAP_DATA_DIR.
func (p *Platform) DataDir() string { return p.Env["LAP_DATA_DIR"] }

// KillHarnesses stops what lapd left running, by the pids in the local
// backend's records: harnesses outlive a killed lapd by design.
func (p *Platform) KillHarnesses() {
	recs, _ := filepath.Glob(filepath.Join(p.DataDir(), "sandboxes", "*", "sandbox.json"))
	for _, path := range recs {
		var rec struct {
			PID int `json:"pid"`
		}
		if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &rec) == nil && rec.PID > 0 {
			_ = syscall.Kill(-rec.PID, syscall.SIGKILL)
		}
	}
}

// HarnessPID is the pid of the harness of sandbox id, from the local
// backend's record; 0 when none runs.
func (p *Platform) HarnessPID(sandboxID string) int {
	p.T.Helper()
	var rec struct {
		PID int `json:"pid"`
	}
	b, err := os.ReadFile(filepath.Join(p.DataDir(), "sandboxes", sandboxID, "sandbox.json"))
	require.NoError(p.T, err)
	require.NoError(p.T, json.Unmarshal(b, &rec))
	return rec.PID
}

// Workspace is the WORKSPACE of sandbox id (the clone is in repo/).
func (p *Platform) Workspace(sandboxID string) string {
	return filepath.Join(p.DataDir(), "sandboxes", sandboxID, "workspace")
}

// Lapd is one lapd process.
type Lapd struct {
	t   testing.TB
	cmd *exec.Cmd
	// URL is lapd's root, e.g. http://127.0.0.1:41234.
	URL    string
	mu     sync.Mutex
	out    bytes.Buffer
	exited chan struct{}
}

var listening = regexp.MustCompile(`msg="lapd listening" addr=(\S+)`)

// Start runs lapd on the platform and waits until it listens.
func (p *Platform) Start() *Lapd {
	p.T.Helper()
	cmd := exec.Command(filepath.Join(Bin, "lapd"))
	for k, v := range p.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Dir = p.Dir
	stderr, err := cmd.StderrPipe()
	require.NoError(p.T, err)
	cmd.Stdout = io.Discard
	require.NoError(p.T, cmd.Start())
	l := &Lapd{t: p.T, cmd: cmd, exited: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l.mu.Lock()
			l.out.WriteString(sc.Text() + "\n")
			l.mu.Unlock()
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		_ = cmd.Wait()
		close(l.exited)
	}()
	select {
	case a := <-addr:
		l.URL = "http://" + a
	case <-l.exited:
		p.T.Fatalf("lapd exited:\n%s", l.Output())
	case <-time.After(Deadline):
		p.T.Fatalf("lapd did not start:\n%s", l.Output())
	}
	p.current = l
	return l
}

// PID is lapd's process id.
func (l *Lapd) PID() int { return l.cmd.Process.Pid }

// Output is what lapd logged so far.
func (l *Lapd) Output() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.out.String()
}

// Kill SIGKILLs lapd and waits for it (its harnesses run on).
func (l *Lapd) Kill() {
	_ = l.cmd.Process.Kill()
	<-l.exited
}

// Stop SIGTERMs lapd and waits for it to exit.
func (l *Lapd) Stop() {
	l.t.Helper()
	require.NoError(l.t, l.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-l.exited:
	case <-time.After(Deadline):
		l.t.Fatalf("lapd did not stop:\n%s", l.Output())
	}
}

// Client is the HTTP client of these helpers; its timeout guards against
// a hang.
var Client = &http.Client{
	Timeout:   5 * time.Minute,
	Transport: &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 512},
}

// Request makes an API request with the master key; body, when not nil,
// is sent as JSON.
func (l *Lapd) Request(ctx context.Context, method, path string, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, l.URL+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+MasterKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// Do calls the API and decodes a 2xx answer into out. It returns the
// status and the body.
func (l *Lapd) Do(method, path string, body, out any) (int, []byte) {
	l.t.Helper()
	status, b, err := l.Call(context.Background(), method, path, body, out)
	require.NoError(l.t, err)
	return status, b
}

// Call is Do for goroutines other than the test's: it returns errors
// instead of failing the test.
func (l *Lapd) Call(ctx context.Context, method, path string, body, out any) (int, []byte, error) {
	req, err := l.Request(ctx, method, path, body)
	if err != nil {
		return 0, nil, err
	}
	resp, err := Client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, b, err
	}
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, b, fmt.Errorf("decode %s %s: %w: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, b, nil
}

// CreateAgent creates an agent of the lap harness with the fake model.
func (l *Lapd) CreateAgent(name string) api.Agent {
	l.t.Helper()
	return l.CreateAgentWith(api.CreateAgentRequest{Name: name, HarnessID: "lap", Model: "test/model", Prompt: "You are a test agent."})
}

// CreateAgentWith creates the agent req describes.
func (l *Lapd) CreateAgentWith(req api.CreateAgentRequest) api.Agent {
	l.t.Helper()
	var a api.Agent
	status, body := l.Do(http.MethodPost, api.BasePath+"/agents", req, &a)
	require.Equal(l.t, http.StatusCreated, status, "%s", body)
	return a
}

// CreateSession opens a session of agent (ready at once or creating).
func (l *Lapd) CreateSession(agent string) api.Session {
	l.t.Helper()
	var sess api.Session
	status, body := l.Do(http.MethodPost, api.BasePath+"/agents/"+agent+"/session", api.CreateSessionRequest{Title: "e2e"}, &sess)
	require.Equal(l.t, http.StatusCreated, status, "%s", body)
	return sess
}

// Session reads session id; query is appended to the path (e.g.
// "?wait=ready&timeout=60s").
func (l *Lapd) Session(id, query string) api.Session {
	l.t.Helper()
	var sess api.Session
	status, body := l.Do(http.MethodGet, api.BasePath+"/sessions/"+id+query, nil, &sess)
	require.Equal(l.t, http.StatusOK, status, "%s", body)
	return sess
}

// ReadySession opens a session of agent and waits until it is ready.
func (l *Lapd) ReadySession(agent string) api.Session {
	l.t.Helper()
	sess := l.CreateSession(agent)
	if sess.Status != api.SessionReady {
		sess = l.Session(sess.ID, "?wait=ready&timeout=120s")
	}
	require.Equal(l.t, api.SessionReady, sess.Status, "%+v", sess)
	return sess
}

// Send sends text to session id and returns the answer, failing the test
// unless the turn succeeded.
func (l *Lapd) Send(id, text string) api.Message {
	l.t.Helper()
	var m api.Message
	status, body := l.Do(http.MethodPost, api.BasePath+"/sessions/"+id+"/message", api.SendMessageRequest{Text: text}, &m)
	require.Equal(l.t, http.StatusOK, status, "%s\nlapd:\n%s", body, l.Output())
	require.Nil(l.t, m.Info.Error, "%s", body)
	return m
}

// Messages reads session id's durable log.
func (l *Lapd) Messages(id string) []api.Message {
	l.t.Helper()
	var list api.List[api.Message]
	status, body := l.Do(http.MethodGet, api.BasePath+"/sessions/"+id+"/messages", nil, &list)
	require.Equal(l.t, http.StatusOK, status, "%s", body)
	return list.Data
}

// Warm returns the number of warm sandboxes of agent, from /metrics.
func (l *Lapd) Warm(agent string) int {
	l.t.Helper()
	status, b := l.Do(http.MethodGet, "/metrics", nil, nil)
	require.Equal(l.t, http.StatusOK, status)
	m := regexp.MustCompile(`(?m)^lap_warm_sandboxes\{agent="` + regexp.QuoteMeta(agent) + `"\} (\d+)`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// Healthy reports whether lapd answers GET /healthz with 200.
func (l *Lapd) Healthy() bool {
	resp, err := Client.Get(l.URL + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Alive reports whether pid runs (a zombie does not).
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	state := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
	return state != "Z" && state != "X"
}

// RSS returns the resident memory of pid in bytes, from /proc.
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// WaitFor polls cond every 20ms until it holds, failing the test after
// Deadline.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Deadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Context returns a context that ends with the test, bounded by 5
// minutes.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// FreePort returns a free port of 127.0.0.1.
func FreePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// Event is one server-sent event of lapd's streams.
type Event struct {
	Name string
	Data []byte
}

// Stream reads the server-sent events of one response.
type Stream struct {
	resp *http.Response
	sc   *bufio.Scanner
}

// StreamMessage starts POST /sessions/:id/message_stream with text. A
// non-2xx answer is returned as an error with the body.
func (l *Lapd) StreamMessage(ctx context.Context, id, text string) (*Stream, error) {
	req, err := l.Request(ctx, http.MethodPost, api.BasePath+"/sessions/"+id+"/message_stream", api.SendMessageRequest{Text: text})
	if err != nil {
		return nil, err
	}
	resp, err := Client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, fmt.Errorf("message_stream: %s: %s", resp.Status, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	return &Stream{resp: resp, sc: sc}, nil
}

// Next returns the next event; keep-alive comments are skipped. The
// error is io.EOF when the stream ended cleanly, else what broke it.
func (s *Stream) Next() (Event, error) {
	var ev Event
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "":
			if ev.Name != "" || ev.Data != nil {
				return ev, nil
			}
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "event:"):
			ev.Name = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			ev.Data = append(ev.Data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")...)
		}
	}
	if err := s.sc.Err(); err != nil {
		return ev, err
	}
	return ev, io.EOF
}

// Close ends the stream.
func (s *Stream) Close() error { return s.resp.Body.Close() }

// Outcome is how a streamed turn ended for its client.
type Outcome struct {
	// Done is the assistant message of a `done` event.
	Done *api.Message
	// Error is the detail of an `error` event.
	Error *api.ErrorDetail
	// Broken is what ended the stream before either (e.g. lapd died).
	Broken error
}

// Finish reads the stream to its end and says how the turn ended.
func (s *Stream) Finish() Outcome {
	defer s.Close()
	for {
		ev, err := s.Next()
		if err != nil {
			return Outcome{Broken: err}
		}
		switch ev.Name {
		case api.EventDone:
			var m api.Message
			if err := json.Unmarshal(ev.Data, &m); err != nil {
				return Outcome{Broken: fmt.Errorf("decode done: %w", err)}
			}
			return Outcome{Done: &m}
		case api.EventError:
			var e api.ErrorDetail
			if err := json.Unmarshal(ev.Data, &e); err != nil {
				return Outcome{Broken: fmt.Errorf("decode error event: %w", err)}
			}
			return Outcome{Error: &e}
		}
	}
}

// Harness returns the URL and bearer token of the harness of sandbox id,
// from the local backend's record, to call it directly (as lapd does).
func (p *Platform) Harness(sandboxID string) (url, token string) {
	p.T.Helper()
	var rec struct {
		Port int               `json:"port"`
		Env  map[string]string `json:"env"`
	}
	b, err := os.ReadFile(filepath.Join(p.DataDir(), "sandboxes", sandboxID, "sandbox.json"))
	require.NoError(p.T, err)
	require.NoError(p.T, json.Unmarshal(b, &rec))
	require.NotZero(p.T, rec.Port, "sandbox %s runs no harness", sandboxID)
	return fmt.Sprintf("http://127.0.0.1:%d", rec.Port), rec.Env["HARNESS_AUTH_TOKEN"]
}

// ReadySessions opens n sessions of agent at once (at most 32 requests in
// flight) and waits until every one is ready.
func (l *Lapd) ReadySessions(agent string, n int) []api.Session {
	l.t.Helper()
	out := make([]api.Session, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			var s api.Session
			status, body, err := l.Call(context.Background(), http.MethodPost, api.BasePath+"/agents/"+agent+"/session", api.CreateSessionRequest{}, &s)
			if err == nil && status != http.StatusCreated {
				err = fmt.Errorf("create session: %d %s", status, body)
			}
			if err == nil && s.Status != api.SessionReady {
				status, body, err = l.Call(context.Background(), http.MethodGet, api.BasePath+"/sessions/"+s.ID+"?wait=ready&timeout=300s", nil, &s)
				if err == nil && (status != http.StatusOK || s.Status != api.SessionReady) {
					err = fmt.Errorf("session %s not ready: %d %s", s.ID, status, body)
				}
			}
			out[i] = s
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(l.t, err)
	}
	return out
}
