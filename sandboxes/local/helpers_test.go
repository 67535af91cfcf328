package local

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"lap.dev/lap/config"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/protocol"
)

// binDir holds the lap-harness built once for every test of the package.
var binDir string

// Secrets of "lapd" that must never reach a sandbox: TestMain puts them
// in the test process's environment, which stands in for lapd's.
const (
	lapdMasterKey = "sk-lap-master-key-of-lapd-0123456789"
	lapdLLMKey    = "sk-real-upstream-llm-key-0123456789"
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "lap-local-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// dir stays private (0700): harnesses running as users of their own
	// are started through a descriptor lapd opened, so they need not
	// reach the binary's directory.
	defer os.RemoveAll(dir)
	build := exec.Command("go", "build", "-o", dir, "lap.dev/lap/cmd/lap-harness")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build lap-harness:", err)
		return 1
	}
	binDir = dir
	os.Setenv("MASTER_KEY", lapdMasterKey)
	os.Setenv("LITELLM_API_KEY", lapdLLMKey)
	return m.Run()
}

// localConfig is the LOCAL_* settings as lapd loads them, with overrides.
func localConfig(t testing.TB, env map[string]string) config.LocalConfig {
	t.Helper()
	c, err := config.Load(func(k string) (string, bool) {
		if k == "MASTER_KEY" {
			return lapdMasterKey, true
		}
		v, ok := env[k]
		return v, ok
	}, "")
	require.NoError(t, err)
	return c.Local
}

// dataDir is a fresh lapd data directory that sandboxes running as other
// users can reach (t.TempDir's parent is private to root).
func dataDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lap-local-test-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = removeAll(dir) })
	return dir
}

// newBackend returns a backend over dir (a fresh data dir when "") that
// is closed, and whose sandboxes are destroyed, when t ends.
func newBackend(t testing.TB, dir string, env map[string]string, opts ...func(*Options)) *Backend {
	t.Helper()
	if dir == "" {
		dir = dataDir(t)
	}
	o := Options{
		Dir:     filepath.Join(dir, "sandboxes"),
		Config:  localConfig(t, env),
		ExecDir: binDir,
	}
	for _, fn := range opts {
		fn(&o)
	}
	b, err := New(o)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, b.Close(ctx))
		recs, err := b.records()
		require.NoError(t, err)
		for _, rec := range recs {
			require.NoError(t, b.Destroy(ctx, sandboxes.Sandbox{ID: rec.ID}))
		}
	})
	return b
}

// fixture is one agent with its fake LLM.
type fixture struct {
	llm   *fakellm.Server
	agent sandboxes.AgentSpec
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	llm := fakellm.Start(t)
	return &fixture{llm: llm, agent: sandboxes.AgentSpec{
		ID:         uuid.NewString(),
		Name:       "test-agent",
		HarnessID:  "lap",
		Generation: 1,
		Env: map[string]string{
			"LITELLM_API_BASE": llm.URL(),
			"LAP_MODEL":        "test/model",
			"AGENT_PROMPT":     "You are a test agent.",
			"BRANCH":           "main",
		},
		Secrets: map[string]string{"MY_SECRET": "s3cret"},
	}}
}

// spec is a sandbox of the fixture's agent with a fresh token.
func (f *fixture) spec() sandboxes.Spec {
	return sandboxes.Spec{
		ID:    uuid.NewString(),
		Role:  sandboxes.RoleSession,
		Agent: f.agent,
		Env: map[string]string{
			"HARNESS_AUTH_TOKEN": "tok-" + uuid.NewString(),
			"LITELLM_API_KEY":    "lapsb_stub",
		},
	}
}

// provision provisions spec on b and fails the test if that fails: the
// setup of most tests, which check what comes after.
func provision(t testing.TB, ctx context.Context, b *Backend, spec sandboxes.Spec) sandboxes.Sandbox {
	t.Helper()
	sb, err := b.Provision(ctx, spec)
	require.NoError(t, err)
	return sb
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// harnessClient talks to one sandbox's harness.
type harnessClient struct {
	t     testing.TB
	sb    sandboxes.Sandbox
	token string
}

func (f *fixture) client(t testing.TB, sb sandboxes.Sandbox, spec sandboxes.Spec) *harnessClient {
	return &harnessClient{t: t, sb: sb, token: spec.Env["HARNESS_AUTH_TOKEN"]}
}

// do makes a request and decodes a JSON answer into out (if not nil).
func (c *harnessClient) do(method, path string, body, out any) int {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(c.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.sb.Endpoint.URL+path, rd)
	require.NoError(c.t, err)
	req.Header.Set("Authorization", protocol.Bearer(c.token))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	if out != nil && resp.StatusCode/100 == 2 {
		require.NoError(c.t, json.Unmarshal(b, out), "decode %s", b)
	}
	return resp.StatusCode
}

func (c *harnessClient) newSession() string {
	c.t.Helper()
	var info protocol.SessionInfo
	require.Equal(c.t, http.StatusOK, c.do(http.MethodPost, "/session", protocol.CreateSessionRequest{Title: "t"}, &info))
	return info.ID
}

func (c *harnessClient) send(id, text string) protocol.Message {
	c.t.Helper()
	var msg protocol.Message
	require.Equal(c.t, http.StatusOK, c.do(http.MethodPost, "/session/"+id+"/message",
		protocol.SendMessageRequest{Parts: []protocol.InputPart{{Type: "text", Text: text}}}, &msg))
	return msg
}

// toolOutput returns the output (or error) of the first tool part of msg.
func toolOutput(t testing.TB, msg protocol.Message) string {
	t.Helper()
	for _, p := range msg.Parts {
		if p.Type == "tool" && p.State != nil {
			return p.State.Output + p.State.Error
		}
	}
	t.Fatalf("no tool part in %+v", msg)
	return ""
}

func pidOf(t testing.TB, sb sandboxes.Sandbox) int {
	t.Helper()
	pid, err := strconv.Atoi(sb.Data["pid"])
	require.NoError(t, err, "pid in %v", sb.Data)
	return pid
}

// gone reports whether pid no longer runs (zombies count as gone).
func gone(pid int) bool {
	st, err := readProcStat(pid)
	return err != nil || st.state == 'Z' || st.state == 'X'
}

// kill is the conformance suite's crash: SIGKILL to the harness alone.
func kill(_ context.Context, sb sandboxes.Sandbox) error {
	pid, err := strconv.Atoi(sb.Data["pid"])
	if err != nil {
		return fmt.Errorf("sandbox %s has no pid: %v", sb.ID, sb.Data)
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

// procStatus returns the value of a line of /proc/<pid>/status.
func procStatus(t testing.TB, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}

// procLimit returns the soft limit of name ("Max open files") of pid.
func procLimit(t testing.TB, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	require.NoError(t, err)
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, name); ok {
			return strings.Fields(rest)[0]
		}
	}
	t.Fatalf("no %q in /proc/%d/limits", name, pid)
	return ""
}

// sessionMembers returns the live pids in session sid but sid itself.
func sessionMembers(sid int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == sid {
			continue
		}
		if st, err := readProcStat(pid); err == nil && st.session == sid && st.state != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// limitString renders a limit as /proc/<pid>/limits does.
func limitString(n uint64) string {
	if n == unix.RLIM_INFINITY {
		return "unlimited"
	}
	return strconv.FormatUint(n, 10)
}
