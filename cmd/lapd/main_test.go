package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/config"
	"lap.dev/lap/control/api"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/sandboxestest"
	"lap.dev/lap/store"
)

// TestMain lets the test binary be lapd itself (with the in-process test
// backend, since this branch wires no real one): the tests below start it
// as a subprocess to kill it, restart it and talk to it over HTTP.
func TestMain(m *testing.M) {
	if os.Getenv("LAPD_TEST_MAIN") == "1" {
		os.Exit(run(context.Background(), os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr, testBackend))
	}
	os.Exit(m.Run())
}

func testBackend(ctx context.Context, cfg config.Config, log *slog.Logger) (sandboxes.Backend, error) {
	return sandboxestest.New(sandboxestest.Options{}), nil
}

const key = "sk-lap-test-0123456789abcdef"

func lookupFrom(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestHelpListsEverySetting(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"--help"}, lookupFrom(nil), &out, &errOut, newBackend)
	require.Equal(t, exitOK, code)
	for _, s := range config.Settings() {
		assert.Contains(t, out.String(), s.Name)
	}
	assert.Contains(t, out.String(), "lapd init")
}

func TestBadSettingsExit2(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		vars map[string]string
		want []string
	}{
		{"bad backend", map[string]string{"MASTER_KEY": key, "LAP_BACKEND": "docker"}, []string{"LAP_BACKEND", "one of local, knative"}},
		{"bad pool", map[string]string{"MASTER_KEY": key, "WARM_POOL_SIZE": "many"}, []string{"WARM_POOL_SIZE", "integer"}},
		{"no master key", map[string]string{"LAP_DATA_DIR": t.TempDir()}, []string{"MASTER_KEY", "lapd init"}},
		{"unknown argument", nil, []string{"unknown arguments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			args := []string{}
			if tt.vars == nil {
				args = []string{"frobnicate"}
			}
			code := run(context.Background(), args, lookupFrom(tt.vars), &out, &errOut, newBackend)
			assert.Equal(t, exitConfig, code)
			for _, w := range tt.want {
				assert.Contains(t, errOut.String(), w)
			}
		})
	}
}

func TestBackendThatCannotStartFailsClearly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	broken := func(context.Context, config.Config, *slog.Logger) (sandboxes.Backend, error) {
		return nil, errors.New("LAP_BACKEND=local: the backend is broken")
	}
	code := run(context.Background(), nil, lookupFrom(map[string]string{"MASTER_KEY": key, "LAP_DATA_DIR": dir}), &out, &errOut, broken)
	assert.Equal(t, exitFailed, code)
	assert.Contains(t, errOut.String(), "LAP_BACKEND=local: the backend is broken")
	_, err := os.Stat(filepath.Join(dir, "lap.db"))
	assert.ErrorIs(t, err, os.ErrNotExist, "nothing is created before the backend is there")
}

func TestInitPrintsTheKeyOnce(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	vars := lookupFrom(map[string]string{"LAP_DATA_DIR": dir})
	var out, errOut bytes.Buffer
	require.Equal(t, exitOK, run(context.Background(), []string{"init"}, vars, &out, &errOut, newBackend), errOut.String())
	b, err := os.ReadFile(filepath.Join(dir, config.MasterKeyFile))
	require.NoError(t, err)
	assert.Contains(t, out.String(), strings.TrimSpace(string(b)))

	out.Reset()
	require.Equal(t, exitOK, run(context.Background(), []string{"init"}, vars, &out, &errOut, newBackend))
	assert.NotContains(t, out.String(), strings.TrimSpace(string(b)), "printed only when created")
	cfg, err := config.Load(vars, "")
	require.NoError(t, err, "lapd finds the key it made")
	assert.Equal(t, strings.TrimSpace(string(b)), cfg.MasterKey)
}

// lapd is a lapd subprocess.
type lapd struct {
	t      *testing.T
	cmd    *exec.Cmd
	url    string
	mu     sync.Mutex
	log    bytes.Buffer
	exited chan struct{}
	err    error
}

// startLapd runs lapd on dir and waits until it listens. With expectFail
// it waits for the process to end instead.
func startLapd(t *testing.T, dir string, expectFail bool) *lapd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve")
	cmd.Dir = dir
	cmd.Env = []string{"LAPD_TEST_MAIN=1", "MASTER_KEY=" + key, "LAP_DATA_DIR=" + filepath.Join(dir, "data"),
		"LAP_LISTEN=127.0.0.1:0", "LAP_SHUTDOWN_TIMEOUT=10s", "PATH=" + os.Getenv("PATH")}
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	l := &lapd{t: t, cmd: cmd, exited: make(chan struct{})}
	addr := make(chan string, 1)
	listening := regexp.MustCompile(`msg="lapd listening" addr=(\S+)`)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			l.mu.Lock()
			l.log.WriteString(sc.Text() + "\n")
			l.mu.Unlock()
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		l.err = cmd.Wait()
		close(l.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-l.exited
	})
	select {
	case a := <-addr:
		require.False(t, expectFail, "lapd started, want it to fail:\n%s", l.output())
		l.url = "http://" + a
	case <-l.exited:
		require.True(t, expectFail, "lapd exited: %v\n%s", l.err, l.output())
	case <-time.After(60 * time.Second):
		t.Fatalf("lapd did not start:\n%s", l.output())
	}
	return l
}

func (l *lapd) output() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.log.String()
}

// stop sends SIGTERM and waits for a clean exit.
func (l *lapd) stop() {
	l.t.Helper()
	require.NoError(l.t, l.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-l.exited:
	case <-time.After(60 * time.Second):
		l.t.Fatalf("lapd did not stop on SIGTERM:\n%s", l.output())
	}
	require.NoError(l.t, l.err, "lapd exits 0 on SIGTERM:\n%s", l.output())
}

// kill SIGKILLs lapd.
func (l *lapd) kill() {
	l.t.Helper()
	require.NoError(l.t, l.cmd.Process.Signal(syscall.SIGKILL))
	<-l.exited
}

func (l *lapd) do(method, path, body string, auth bool) (int, []byte, error) {
	req, err := http.NewRequest(method, l.url+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

var client = &http.Client{
	Timeout:   time.Minute,
	Transport: &http.Transport{MaxIdleConnsPerHost: 600, MaxConnsPerHost: 0},
}

const quickstart = `{
"name": "my-sdk-agent",
"harness_id": "claude-agent-sdk",
"model": "anthropic/claude-sonnet-4-5",
"prompt": "You are a helpful assistant.",
"repo_url": "https://github.com/your-org/your-repo"
}`

func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var eb api.ErrorBody
	require.NoError(t, json.Unmarshal(body, &eb), "%s", body)
	return eb.Error.Code
}

func TestServeQuickstartFlow(t *testing.T) {
	t.Parallel()
	l := startLapd(t, t.TempDir(), false)
	status, _, err := l.do(http.MethodGet, "/healthz", "", false)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, status)

	status, body, err := l.do(http.MethodPost, api.BasePath+"/agents", quickstart, true)
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, "%s", body)
	var a api.Agent
	require.NoError(t, json.Unmarshal(body, &a))
	assert.Equal(t, "my-sdk-agent", a.Name)

	tests := []struct {
		name, method, path, body string
		auth                     bool
		status                   int
		code                     string
	}{
		{"same again", http.MethodPost, "/agents", quickstart, true, http.StatusConflict, api.CodeConflict},
		{"no bearer", http.MethodPost, "/agents", quickstart, false, http.StatusUnauthorized, api.CodeUnauthorized},
		{"malformed JSON", http.MethodPost, "/agents", `{"name": `, true, http.StatusBadRequest, api.CodeBadRequest},
		{"unknown session", http.MethodGet, "/sessions/c3970704", "", true, http.StatusNotFound, api.CodeNotFound},
	}
	for _, tt := range tests {
		status, body, err := l.do(tt.method, api.BasePath+tt.path, tt.body, tt.auth)
		require.NoError(t, err, tt.name)
		assert.Equal(t, tt.status, status, "%s: %s", tt.name, body)
		assert.Equal(t, tt.code, errorCode(t, body), tt.name)
	}

	status, body, err = l.do(http.MethodGet, api.BasePath+"/agents", "", true)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status)
	assert.Contains(t, string(body), `"name":"my-sdk-agent"`)

	status, body, err = l.do(http.MethodPost, api.BasePath+"/agents/my-sdk-agent/session", "", true)
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, "%s", body)
	var sess api.Session
	require.NoError(t, json.Unmarshal(body, &sess))
	status, body, err = l.do(http.MethodGet, api.BasePath+"/sessions/"+sess.ID+"?wait=ready", "", true)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(body, &sess))
	require.Equal(t, api.SessionReady, sess.Status, "%s", body)
	status, body, err = l.do(http.MethodPost, api.BasePath+"/sessions/"+sess.ID[:8]+"/message", `{"text":"Summarise the top-level README in three bullets."}`, true)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Contains(t, string(body), "echo: Summarise")

	l.stop()
	assert.Contains(t, l.output(), `msg=stopped`)
}

func TestSecondLapdOnTheSameDataDirFailsFast(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := startLapd(t, dir, false)
	second := startLapd(t, dir, true)
	assert.Contains(t, second.output(), "another lapd", "the second lapd says why it cannot start")
	status, _, err := first.do(http.MethodGet, "/readyz", "", false)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, status, "the first lapd is unaffected")
}

// TestKillDuringConcurrentCreates is the crash test of the control plane:
// 500 concurrent agent creates, lapd SIGKILLed in the middle, restarted —
// every create that was answered 201 is listed, a turn that was running is
// failed (not lost), and the store checks clean.
func TestKillDuringConcurrentCreates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := startLapd(t, dir, false)

	// A turn in flight at the kill.
	status, body, err := l.do(http.MethodPost, api.BasePath+"/agents", `{"name":"chatty","model":"mock/echo"}`, true)
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, "%s", body)
	status, body, err = l.do(http.MethodPost, api.BasePath+"/agents/chatty/session", "", true)
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, "%s", body)
	var sess api.Session
	require.NoError(t, json.Unmarshal(body, &sess))
	_, body, err = l.do(http.MethodGet, api.BasePath+"/sessions/"+sess.ID+"?wait=ready", "", true)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(body, &sess))
	require.Equal(t, api.SessionReady, sess.Status)
	go l.do(http.MethodPost, api.BasePath+"/sessions/"+sess.ID+"/message", `{"text":"/block"}`, true)
	waitfor.Cond(t, "the turn to be pending", func() bool {
		_, body, err := l.do(http.MethodGet, api.BasePath+"/sessions/"+sess.ID+"/messages", "", true)
		return err == nil && strings.Contains(string(body), `"status":"pending"`)
	})

	const n = 500
	var mu sync.Mutex
	created := map[string]bool{}
	failed := 0
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			name := fmt.Sprintf("agent-%03d", i)
			status, _, err := l.do(http.MethodPost, api.BasePath+"/agents", `{"name":"`+name+`","model":"mock/echo"}`, true)
			mu.Lock()
			defer mu.Unlock()
			if err == nil && status == http.StatusCreated {
				created[name] = true
			} else {
				failed++
			}
		}()
	}
	close(start)
	waitfor.Cond(t, "some creates to succeed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(created) >= 50
	})
	l.kill()
	wg.Wait()
	t.Logf("at the kill: %d creates answered 201, %d cut off", len(created), failed)

	l = startLapd(t, dir, false)
	listed := map[string]bool{}
	cursor := ""
	for pages := 0; pages < 10; pages++ {
		status, body, err := l.do(http.MethodGet, api.BasePath+"/agents?limit=1000&cursor="+cursor, "", true)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status, "%s", body)
		var page api.List[api.Agent]
		require.NoError(t, json.Unmarshal(body, &page))
		for _, a := range page.Data {
			assert.False(t, listed[a.Name], "agent %s listed twice", a.Name)
			listed[a.Name] = true
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	for name := range created {
		assert.True(t, listed[name], "agent %s was created (201) but is not listed after the crash", name)
	}
	assert.True(t, listed["chatty"])

	_, body, err = l.do(http.MethodGet, api.BasePath+"/sessions/"+sess.ID+"/messages", "", true)
	require.NoError(t, err)
	var msgs api.List[api.Message]
	require.NoError(t, json.Unmarshal(body, &msgs))
	require.Len(t, msgs.Data, 1, "the interrupted turn is kept, once")
	assert.Equal(t, "failed", msgs.Data[0].Info.Status)
	assert.Equal(t, "Interrupted", msgs.Data[0].Info.Error.Name)
	status, body, err = l.do(http.MethodPost, api.BasePath+"/sessions/"+sess.ID+"/message", `{"text":"after the crash"}`, true)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, "the session goes on (its sandbox died with lapd and is replaced): %s", body)
	assert.Contains(t, string(body), "echo: after the crash")

	l.stop()
	st, err := store.Open(filepath.Join(dir, "data", store.FileName), store.Options{})
	require.NoError(t, err, "the store opens cleanly")
	defer st.Close()
	require.NoError(t, st.Check(), "and passes bbolt's consistency check")
}
