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
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes/protocol/sse"
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
	// -short (make test-short) skips every test that runs the platform
	// (SkipInShortMode), so nothing needs building.
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
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

// SkipInShortMode skips t under go test -short (make test-short): the
// tests of this package's users start the built lapd, harness processes
// (as users of their own when run as root) and real git repositories,
// which takes longer than the edit loop's quick tier allows. make test
// runs them. New and UseNodeHarnesses call it.
func SkipInShortMode(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test of the built binaries: skipped in -short mode (make test runs it)")
	}
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
	SkipInShortMode(t)
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

	closeOnce sync.Once
}

// New makes a data dir and a fake LLM. By default the harnesses call the
// fake directly (LAP_SANDBOX_GATEWAY_URL), so tests of sandboxes need no
// gateway; settings override the defaults, and a setting given as ""
// is removed (e.g. LAP_SANDBOX_GATEWAY_URL: "" routes the harnesses
// through lapd's LLM gateway to the fake).
func New(t testing.TB, settings map[string]string) *Platform {
	t.Helper()
	SkipInShortMode(t)
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
		p.Close()
		os.RemoveAll(dir)
	})
	return p
}

// Close stops everything the platform started: the running lapd
// (SIGKILL) and every harness its sandboxes run, which outlive lapd by
// design. It then checks that no process of the platform's sandboxes is
// left (CheckNothingRuns). The test's cleanup calls it; a test that
// changes the ground under Dir in a cleanup of its own (say, unmounts a
// file system that holds the sandboxes' records) must call Close first,
// as its cleanup runs before the platform's.
func (p *Platform) Close() {
	p.closeOnce.Do(func() {
		if p.current != nil {
			p.current.Kill()
		}
		p.KillHarnesses()
		p.CheckNothingRuns()
	})
}

// DataDir is LAP_DATA_DIR.
func (p *Platform) DataDir() string { return p.Env["LAP_DATA_DIR"] }

// KillHarnesses stops what lapd left running, by the local backend's
// records: each harness's process group (its pid) and, when the sandbox
// has a user id of its own, every process of that user, as lapd's own
// stop does. Harnesses outlive a killed lapd by design.
func (p *Platform) KillHarnesses() {
	recs, _ := filepath.Glob(filepath.Join(p.DataDir(), "sandboxes", "*", "sandbox.json"))
	// A user id is killed only while the registry still gives it to a
	// workspace of this platform: a destroyed sandbox's id may be
	// another test's by now.
	ours := p.sandboxUIDs()
	var uids []int
	for _, path := range recs {
		var rec struct {
			PID int  `json:"pid"`
			UID *int `json:"uid"`
		}
		if b, err := os.ReadFile(path); err != nil || json.Unmarshal(b, &rec) != nil {
			continue
		}
		if rec.PID > 0 {
			_ = syscall.Kill(-rec.PID, syscall.SIGKILL)
		}
		if rec.UID != nil && *rec.UID > 0 && slices.Contains(ours, *rec.UID) {
			uids = append(uids, *rec.UID)
		}
	}
	killAll(processesOf(uids))
}

// CheckNothingRuns fails the test if a process of the platform's
// sandboxes is still alive once KillHarnesses has run, and then kills it,
// so that even a failing run leaves nothing behind. Its processes are
// those of the user ids the local backend's machine-wide registry gives
// to workspaces under Dir: an id is claimed for one workspace at a time,
// so they are this test's and no other's. (Without a user id per sandbox,
// when the tests do not run as root, there is no such mark and nothing
// is checked.)
func (p *Platform) CheckNothingRuns() {
	p.T.Helper()
	uids := p.sandboxUIDs()
	if len(uids) == 0 {
		return
	}
	// SIGKILL is prompt but not instant: allow the kernel a moment.
	if waitfor.Poll(context.Background(), 10*time.Second, 0, func() bool { return len(processesOf(uids)) == 0 }) {
		return
	}
	left := processesOf(uids)
	var desc []string
	for _, pid := range left {
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		desc = append(desc, fmt.Sprintf("pid %d %q", pid, strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ")))
	}
	p.T.Errorf("processes of this test's sandboxes (user ids %v) still run after lapd and its harnesses were stopped: %s", uids, strings.Join(desc, "; "))
	killAll(left)
}

// sandboxUIDs returns the user ids that the uid registry
// (LOCAL_SANDBOX_UID_REGISTRY) gives to workspaces under Dir.
func (p *Platform) sandboxUIDs() []int {
	registry := p.Env["LOCAL_SANDBOX_UID_REGISTRY"]
	if registry == "" {
		registry = defaultUIDRegistry
	}
	entries, err := os.ReadDir(registry)
	if err != nil {
		return nil
	}
	var uids []int
	for _, e := range entries {
		uid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink(filepath.Join(registry, e.Name())); err == nil && strings.HasPrefix(target, p.Dir+"/") {
			uids = append(uids, uid)
		}
	}
	return uids
}

// defaultUIDRegistry is config's default LOCAL_SANDBOX_UID_REGISTRY.
const defaultUIDRegistry = "/var/lib/lap/sandbox-uids"

// processesOf returns the live processes (zombies excluded) owned by one
// of uids.
func processesOf(uids []int) []int {
	if len(uids) == 0 {
		return nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name(), &st) != nil || !slices.Contains(uids, int(st.Uid)) {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The state follows the command name, which ends at the last ')'.
		if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

func killAll(pids []int) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
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
	r    *sse.Reader
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
	return &Stream{resp: resp, r: sse.NewReader(resp.Body)}, nil
}

// Next returns the next event; keep-alive comments are skipped. The
// error is io.EOF when the stream ended cleanly between events, else what
// broke it (io.ErrUnexpectedEOF for a stream cut within an event).
func (s *Stream) Next() (Event, error) {
	ev, err := s.r.Next()
	if err != nil {
		return Event{}, err
	}
	return Event{Name: ev.Type, Data: bytes.Clone(ev.Data)}, nil
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
