// Package lapdlocal tests the built lapd with its default backend, local
// harness processes (bin/lap-harness), end to end over its REST API: warm
// pools, idle scale-to-zero with transparent resume, harness crashes and
// lapd restarts. The LLM is the scripted fake (e2e/fakellm), reached by
// the harnesses directly (LAP_SANDBOX_GATEWAY_URL), so these tests need no
// gateway and no network.
package lapdlocal

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
)

// binDir holds lapd and lap-harness, built once (lapd finds the harness
// next to itself, as in bin/ after make build).
var binDir string

const masterKey = "sk-lap-e2e-master-key-0123456789"

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "lap-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	build := exec.Command("go", "build", "-o", dir, "lap.dev/lap/cmd/lapd", "lap.dev/lap/cmd/lap-harness")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build lapd and lap-harness:", err)
		return 1
	}
	binDir = dir
	return m.Run()
}

// platform is one lapd data directory with its fake LLM; lapd processes
// come and go on it.
type platform struct {
	t       testing.TB
	dir     string
	llm     *fakellm.Server
	env     map[string]string
	current *lapd
}

// newPlatform makes a data dir and fake LLM. settings are lapd's
// settings beyond the defaults these tests use.
func newPlatform(t testing.TB, settings map[string]string) *platform {
	t.Helper()
	dir, err := os.MkdirTemp("", "lap-e2e-data-")
	require.NoError(t, err)
	// Harnesses running as users of their own must reach their
	// workspaces under it (search permission only).
	require.NoError(t, os.Chmod(dir, 0o711))
	llm := fakellm.Start(t)
	p := &platform{t: t, dir: dir, llm: llm, env: map[string]string{
		"MASTER_KEY":              masterKey,
		"LAP_DATA_DIR":            filepath.Join(dir, "data"),
		"LAP_LISTEN":              "127.0.0.1:0",
		"LITELLM_API_BASE":        llm.URL(),
		"LITELLM_API_KEY":         "sk-real-upstream-key",
		"LAP_SANDBOX_GATEWAY_URL": llm.URL(),
		"LOCAL_STOP_GRACE":        "5s",
		"PATH":                    os.Getenv("PATH"),
	}}
	for k, v := range settings {
		p.env[k] = v
	}
	t.Cleanup(func() {
		if p.current != nil {
			p.current.kill()
		}
		p.killHarnesses()
		os.RemoveAll(dir)
	})
	return p
}

// killHarnesses stops what lapd left running, by the pids in the local
// backend's records: harnesses outlive a killed lapd by design.
func (p *platform) killHarnesses() {
	recs, _ := filepath.Glob(filepath.Join(p.dir, "data", "sandboxes", "*", "sandbox.json"))
	for _, path := range recs {
		var rec struct {
			PID int `json:"pid"`
		}
		if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &rec) == nil && rec.PID > 0 {
			_ = syscall.Kill(-rec.PID, syscall.SIGKILL)
		}
	}
}

// lapd is one lapd process.
type lapd struct {
	t      testing.TB
	cmd    *exec.Cmd
	url    string
	mu     sync.Mutex
	out    bytes.Buffer
	exited chan struct{}
}

// start runs lapd on the platform and waits until it listens.
func (p *platform) start() *lapd {
	p.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "lapd"))
	for k, v := range p.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Dir = p.dir
	stderr, err := cmd.StderrPipe()
	require.NoError(p.t, err)
	cmd.Stdout = io.Discard
	require.NoError(p.t, cmd.Start())
	l := &lapd{t: p.t, cmd: cmd, exited: make(chan struct{})}
	addr := make(chan string, 1)
	listening := regexp.MustCompile(`msg="lapd listening" addr=(\S+)`)
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
		l.url = "http://" + a
	case <-l.exited:
		p.t.Fatalf("lapd exited:\n%s", l.output())
	case <-time.After(2 * time.Minute):
		p.t.Fatalf("lapd did not start:\n%s", l.output())
	}
	p.current = l
	return l
}

func (l *lapd) output() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.out.String()
}

// kill SIGKILLs lapd (its harnesses run on).
func (l *lapd) kill() {
	_ = l.cmd.Process.Kill()
	<-l.exited
}

// stop SIGTERMs lapd and waits for it to exit.
func (l *lapd) stop() {
	l.t.Helper()
	require.NoError(l.t, l.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-l.exited:
	case <-time.After(2 * time.Minute):
		l.t.Fatalf("lapd did not stop:\n%s", l.output())
	}
}

var client = &http.Client{Timeout: 5 * time.Minute}

// do calls the API and decodes a 2xx answer into out.
func (l *lapd) do(method, path string, body, out any) (int, []byte) {
	l.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(l.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, l.url+path, rd)
	require.NoError(l.t, err)
	req.Header.Set("Authorization", "Bearer "+masterKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	require.NoError(l.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(l.t, err)
	if out != nil && resp.StatusCode/100 == 2 {
		require.NoError(l.t, json.Unmarshal(b, out), "%s", b)
	}
	return resp.StatusCode, b
}

func (l *lapd) createAgent(name string) api.Agent {
	l.t.Helper()
	var a api.Agent
	status, body := l.do(http.MethodPost, api.BasePath+"/agents", api.CreateAgentRequest{
		Name: name, HarnessID: "lap", Model: "test/model", Prompt: "You are a test agent."}, &a)
	require.Equal(l.t, http.StatusCreated, status, "%s", body)
	return a
}

func (l *lapd) createSession(agent string) api.Session {
	l.t.Helper()
	var sess api.Session
	status, body := l.do(http.MethodPost, api.BasePath+"/agents/"+agent+"/session", api.CreateSessionRequest{Title: "e2e"}, &sess)
	require.Equal(l.t, http.StatusCreated, status, "%s", body)
	return sess
}

func (l *lapd) session(id, query string) api.Session {
	l.t.Helper()
	var sess api.Session
	status, body := l.do(http.MethodGet, api.BasePath+"/sessions/"+id+query, nil, &sess)
	require.Equal(l.t, http.StatusOK, status, "%s", body)
	return sess
}

func (l *lapd) readySession(agent string) api.Session {
	l.t.Helper()
	sess := l.createSession(agent)
	if sess.Status != api.SessionReady {
		sess = l.session(sess.ID, "?wait=ready&timeout=120s")
	}
	require.Equal(l.t, api.SessionReady, sess.Status, "%+v", sess)
	return sess
}

func (l *lapd) send(id, text string) api.Message {
	l.t.Helper()
	var m api.Message
	status, body := l.do(http.MethodPost, api.BasePath+"/sessions/"+id+"/message", api.SendMessageRequest{Text: text}, &m)
	require.Equal(l.t, http.StatusOK, status, "%s\nlapd:\n%s", body, l.output())
	require.Nil(l.t, m.Info.Error, "%s", body)
	return m
}

// warm returns the number of warm sandboxes of agent, from /metrics.
func (l *lapd) warm(agent string) int {
	l.t.Helper()
	req, err := http.NewRequest(http.MethodGet, l.url+"/metrics", nil)
	require.NoError(l.t, err)
	req.Header.Set("Authorization", "Bearer "+masterKey)
	resp, err := client.Do(req)
	require.NoError(l.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(l.t, err)
	m := regexp.MustCompile(`(?m)^lap_warm_sandboxes\{agent="` + regexp.QuoteMeta(agent) + `"\} (\d+)`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	var n int
	fmt.Sscan(string(m[1]), &n)
	return n
}

// harnessPID is the pid of the harness of sandbox id, from the local
// backend's record; 0 when none runs.
func (p *platform) harnessPID(sandboxID string) int {
	p.t.Helper()
	var rec struct {
		PID int `json:"pid"`
	}
	b, err := os.ReadFile(filepath.Join(p.dir, "data", "sandboxes", sandboxID, "sandbox.json"))
	require.NoError(p.t, err)
	require.NoError(p.t, json.Unmarshal(b, &rec))
	return rec.PID
}

func (p *platform) workspace(sandboxID string) string {
	return filepath.Join(p.dir, "data", "sandboxes", sandboxID, "workspace")
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	state := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
	return state != "Z" && state != "X"
}

// waitFor polls cond every 20ms until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// contextFor bounds a test.
func contextFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
