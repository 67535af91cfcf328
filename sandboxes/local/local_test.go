package local

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes"
)

func TestProvisionIsReadyAndAuthenticated(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", nil)
	f := newFixture(t)
	require.NoError(t, b.EnsureAgent(ctx, f.agent))
	spec := f.spec()

	sb, err := b.Provision(ctx, spec)
	require.NoError(t, err)
	assert.Equal(t, spec.ID, sb.ID)
	assert.Equal(t, f.agent.ID, sb.AgentID)
	assert.EqualValues(t, 1, sb.Generation)
	assert.True(t, sb.Running)
	assert.True(t, strings.HasPrefix(sb.Endpoint.URL, "http://127.0.0.1:"), sb.Endpoint.URL)

	c := f.client(t, sb, spec)
	assert.Equal(t, http.StatusOK, c.do(http.MethodGet, "/session", nil, nil))
	c.token = "wrong"
	assert.Equal(t, http.StatusUnauthorized, c.do(http.MethodGet, "/session", nil, nil))

	all, err := b.List(ctx)
	require.NoError(t, err)
	require.Len(t, all, 1)
	assert.Equal(t, sb, all[0], "List reports the sandbox as Provision did")

	logs, err := b.Logs(ctx, sb, 4096)
	require.NoError(t, err)
	assert.Contains(t, logs, "starting "+filepath.Join(binDir, "lap-harness"))
}

// The harness's environment is exactly ARCHITECTURE §5 plus a minimal
// PATH, HOME and LANG: nothing of lapd's own environment, where
// MASTER_KEY and the real LLM key live.
func TestHarnessEnvironmentIsExactlyTheSandboxEnvironment(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", nil)
	f := newFixture(t)
	spec := f.spec()
	require.Equal(t, lapdMasterKey, os.Getenv("MASTER_KEY"), "lapd's environment holds the master key")

	sb := provision(t, ctx, b, spec)
	env, err := procEnviron(pidOf(t, sb))
	require.NoError(t, err)

	workspace := sb.Data["workspace"]
	want := []string{
		"AGENT_PROMPT=You are a test agent.",
		"BRANCH=main",
		"HARNESS_AUTH_TOKEN=" + spec.Env["HARNESS_AUTH_TOKEN"],
		"HARNESS_HOST=127.0.0.1",
		"HOME=" + filepath.Join(workspace, "home"),
		"LANG=C.UTF-8",
		"LAP_MODEL=test/model",
		"LITELLM_API_BASE=" + f.llm.URL(),
		"LITELLM_API_KEY=lapsb_stub",
		"MY_SECRET=s3cret",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"PORT=" + sb.Data["port"],
		"WORKSPACE=" + workspace,
	}
	assert.Equal(t, want, env)
	joined := strings.Join(env, "\n")
	assert.NotContains(t, joined, lapdMasterKey)
	assert.NotContains(t, joined, lapdLLMKey)
}

func TestBuildEnvPrecedence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		spec    sandboxes.Spec
		want    map[string]string
		wantErr string
	}{
		{
			name: "secrets may replace PATH but not what lap sets",
			spec: sandboxes.Spec{
				Agent: sandboxes.AgentSpec{
					Env:     map[string]string{"LAP_MODEL": "m"},
					Secrets: map[string]string{"PATH": "/opt/bin", "LAP_MODEL": "evil", "WORKSPACE": "/", "PORT": "1"},
				},
				Env: map[string]string{"HARNESS_AUTH_TOKEN": "t"},
			},
			want: map[string]string{"PATH": "/opt/bin", "HOME": "/ws/home", "LANG": "C.UTF-8",
				"LAP_MODEL": "m", "WORKSPACE": "/ws", "HARNESS_AUTH_TOKEN": "t", "HARNESS_HOST": "127.0.0.1"},
		},
		{
			name:    "bad name",
			spec:    sandboxes.Spec{Agent: sandboxes.AgentSpec{Secrets: map[string]string{"A=B": "x"}}},
			wantErr: `environment variable name "A=B"`,
		},
		{
			name:    "NUL in value",
			spec:    sandboxes.Spec{Env: map[string]string{"X": "a\x00b"}},
			wantErr: "NUL",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := buildEnv(tt.spec, "/ws", "/usr/bin")
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestSuspendAndResumeKeepWorkspaceAndSessions(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", nil)
	f := newFixture(t)
	spec := f.spec()
	sb := provision(t, ctx, b, spec)
	c := f.client(t, sb, spec)
	sess := c.newSession()
	f.llm.Enqueue(fakellm.CallTool("write_file", map[string]any{"path": "kept.txt", "content": "before the sleep\n"}), fakellm.Text("written"))
	assert.Equal(t, "written", c.send(sess, "write a file").Text())
	pid := pidOf(t, sb)

	sb, err := b.Suspend(ctx, sb)
	require.NoError(t, err)
	assert.False(t, sb.Running)
	assert.True(t, gone(pid), "the harness process is gone after Suspend")
	sb, err = b.Suspend(ctx, sb)
	require.NoError(t, err, "Suspend is idempotent")
	all, err := b.List(ctx)
	require.NoError(t, err)
	require.Len(t, all, 1)
	assert.False(t, all[0].Running, "List shows a suspended sandbox as not running")
	b2, err := os.ReadFile(filepath.Join(sb.Data["workspace"], "repo", "kept.txt"))
	require.NoError(t, err, "the workspace is kept")
	assert.Equal(t, "before the sleep\n", string(b2))

	sb, err = b.Resume(ctx, sb)
	require.NoError(t, err)
	assert.True(t, sb.Running)
	assert.NotEqual(t, pid, pidOf(t, sb))
	c.sb = sb
	f.llm.Enqueue(fakellm.CallTool("read_file", map[string]any{"path": "kept.txt"}), fakellm.Text("still there"))
	msg := c.send(sess, "is the file there?")
	assert.Equal(t, "before the sleep\n", toolOutput(t, msg))
	reqs := f.llm.Requests()
	assert.True(t, reqs[len(reqs)-1].Contains("write a file"), "the harness session kept its history across Suspend/Resume")
}

func TestResumeOfARunningSandboxReturnsAtOnce(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", nil)
	f := newFixture(t)
	sb := provision(t, ctx, b, f.spec())
	again, err := b.Resume(ctx, sb)
	require.NoError(t, err)
	assert.Equal(t, sb, again, "same process, same endpoint")
}

// A harness killed mid-turn can leave its running tool's children behind
// (the harness kills its tool's shell when it dies, not what the shell
// started); Resume clears them and starts the harness again on the same
// workspace.
func TestResumeAfterCrashClearsLeftoversAndRestarts(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", nil)
	f := newFixture(t)
	spec := f.spec()
	sb := provision(t, ctx, b, spec)
	c := f.client(t, sb, spec)
	sess := c.newSession()
	pid := pidOf(t, sb)

	f.llm.Enqueue(fakellm.CallTool("bash", map[string]any{"command": "sleep 300; echo done"}), fakellm.Text("unreachable"))
	require.Equal(t, http.StatusNoContent, c.do(http.MethodPost, "/session/"+sess+"/prompt_async",
		map[string]any{"parts": []map[string]string{{"type": "text", "text": "sleep"}}}, nil))
	waitfor.Cond(t, "the tool's shell and its sleep", func() bool { return len(sessionMembers(pid)) >= 2 })

	require.NoError(t, kill(ctx, sb))
	waitfor.Cond(t, "the harness to die", func() bool { return gone(pid) })
	left := sessionMembers(pid)
	require.NotEmpty(t, left, "the sleep outlives the crashed harness")
	all, err := b.List(ctx)
	require.NoError(t, err)
	require.Len(t, all, 1)
	assert.False(t, all[0].Running, "List sees the crash")

	sb, err = b.Resume(ctx, sb)
	require.NoError(t, err)
	assert.True(t, sb.Running)
	for _, p := range left {
		assert.True(t, gone(p), "Resume killed the crashed harness's leftover %d", p)
	}
	c.sb = sb
	assert.Equal(t, http.StatusOK, c.do(http.MethodGet, "/session/"+sess+"/message", nil, nil), "the session is still there")
	logs, err := b.Logs(ctx, sb, 64<<10)
	require.NoError(t, err)
	assert.Contains(t, logs, "exited: killed by SIGKILL")
}

// A restarted lapd finds its sandboxes again: the running one is adopted
// (same pid, no restart), the stopped one is resumable.
func TestAdoptionByANewBackend(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dir := dataDir(t)
	first := newBackend(t, dir, nil)
	f := newFixture(t)
	spec := f.spec()
	live := provision(t, ctx, first, spec)
	idle := provision(t, ctx, first, f.spec())
	idle, err := first.Suspend(ctx, idle)
	require.NoError(t, err)
	require.NoError(t, first.Close(ctx))

	second := newBackend(t, dir, nil)
	all, err := second.List(ctx)
	require.NoError(t, err)
	slices.SortFunc(all, func(a, b sandboxes.Sandbox) int { return strings.Compare(a.ID, b.ID) })
	want := []sandboxes.Sandbox{live, idle}
	slices.SortFunc(want, func(a, b sandboxes.Sandbox) int { return strings.Compare(a.ID, b.ID) })
	assert.Equal(t, want, all, "the new backend sees what the old one left")

	again, err := second.Resume(ctx, live)
	require.NoError(t, err)
	assert.Equal(t, live, again, "an adopted healthy harness is not restarted")

	pid := pidOf(t, live)
	_, err = second.Suspend(ctx, live)
	require.NoError(t, err)
	assert.True(t, gone(pid), "an adopted harness can be stopped")

	idle, err = second.Resume(ctx, idle)
	require.NoError(t, err)
	assert.True(t, idle.Running)
}

// An adopted process is recognised by pid and start time: a pid reused by
// another process is not taken for the harness.
func TestAdoptionRejectsAReusedPid(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dir := dataDir(t)
	b := newBackend(t, dir, nil)
	f := newFixture(t)
	sb := provision(t, ctx, b, f.spec())

	// Point the record at this test process, which runs but is not the
	// harness.
	sbDir := b.sandboxDir(sb.ID)
	rec, err := readRecord(sbDir)
	require.NoError(t, err)
	harnessPID := rec.PID
	rec.PID = os.Getpid()
	require.NoError(t, writeRecord(sbDir, rec))
	all, err := b.List(ctx)
	require.NoError(t, err)
	require.Len(t, all, 1)
	assert.False(t, all[0].Running)

	rec.PID = harnessPID
	require.NoError(t, writeRecord(sbDir, rec))
}

func TestStopOnExit(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dir := dataDir(t)
	b := newBackend(t, dir, map[string]string{"LOCAL_STOP_ON_EXIT": "true"})
	f := newFixture(t)
	sb := provision(t, ctx, b, f.spec())
	require.NoError(t, b.Close(ctx))
	assert.True(t, gone(pidOf(t, sb)), "Close stopped the harness")

	next := newBackend(t, dir, nil)
	all, err := next.List(ctx)
	require.NoError(t, err)
	require.Len(t, all, 1)
	assert.False(t, all[0].Running)
	sb, err = next.Resume(ctx, sb)
	require.NoError(t, err, "the workspace was kept for resume")
	assert.True(t, sb.Running)
}

func TestProvisionFailuresLeaveNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string // LOCAL_* settings
		modify  func(*sandboxes.Spec)
		lookup  func(string) (sandboxes.Harness, bool)
		cancel  bool
		wantIs  error
		wantMsg string
	}{
		{
			name:    "harness exits at once",
			modify:  func(s *sandboxes.Spec) { delete(s.Agent.Env, "LITELLM_API_BASE") },
			wantIs:  sandboxes.ErrNotReady,
			wantMsg: "LLM base URL is required",
		},
		{
			name:    "clone fails",
			modify:  func(s *sandboxes.Spec) { s.Agent.Env["REPO_URL"] = "file:///nonexistent/repo.git" },
			wantIs:  sandboxes.ErrNotReady,
			wantMsg: "could not prepare its workspace",
		},
		{
			name: "never ready",
			env:  map[string]string{"LOCAL_READY_TIMEOUT": "500ms"},
			lookup: func(string) (sandboxes.Harness, bool) {
				return sandboxes.Harness{ID: "sleeper", Command: []string{"sleep", "600"}}, true
			},
			wantIs:  sandboxes.ErrNotReady,
			wantMsg: "no answer to GET /session within 500ms",
		},
		{
			name:    "unknown harness",
			modify:  func(s *sandboxes.Spec) { s.Agent.HarnessID = "nope" },
			wantMsg: `harness "nope" is unknown`,
		},
		{
			name: "command not found",
			lookup: func(string) (sandboxes.Harness, bool) {
				return sandboxes.Harness{ID: "missing", Command: []string{"lap-harness-that-is-not-there"}}, true
			},
			wantMsg: "command lap-harness-that-is-not-there not found",
		},
		{
			name:    "bad environment",
			modify:  func(s *sandboxes.Spec) { s.Agent.Secrets["BAD NAME"] = "x" },
			wantMsg: `environment variable name "BAD NAME"`,
		},
		{
			name:    "cancelled",
			cancel:  true,
			wantIs:  context.Canceled,
			wantMsg: "context canceled",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			b := newBackend(t, "", tt.env, func(o *Options) { o.Lookup = tt.lookup })
			f := newFixture(t)
			spec := f.spec()
			if tt.modify != nil {
				tt.modify(&spec)
			}
			pctx := ctx
			if tt.cancel {
				c, cancel := context.WithCancel(ctx)
				cancel()
				pctx = c
			}
			_, err := b.Provision(pctx, spec)
			require.Error(t, err)
			if tt.wantIs != nil {
				assert.ErrorIs(t, err, tt.wantIs)
			}
			assert.Contains(t, err.Error(), tt.wantMsg)
			_, statErr := os.Stat(b.sandboxDir(spec.ID))
			assert.True(t, errors.Is(statErr, os.ErrNotExist), "the sandbox directory is removed: %v", statErr)
			all, err := b.List(ctx)
			require.NoError(t, err)
			assert.Empty(t, all)
		})
	}
}

func TestNotReadyErrorCarriesTheLogTail(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", nil)
	f := newFixture(t)
	spec := f.spec()
	delete(spec.Agent.Env, "LITELLM_API_BASE")
	_, err := b.Provision(ctx, spec)
	require.ErrorIs(t, err, sandboxes.ErrNotReady)
	assert.Contains(t, err.Error(), "--- harness output (tail) ---")
	assert.Contains(t, err.Error(), "lap-harness: LLM base URL is required")
	assert.Contains(t, err.Error(), "exited: exit status 1")
}

func TestDestroy(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", nil)
	f := newFixture(t)
	sb := provision(t, ctx, b, f.spec())
	pid := pidOf(t, sb)
	require.NoError(t, b.Destroy(ctx, sb))
	assert.True(t, gone(pid))
	_, err := os.Stat(sb.Data["workspace"])
	assert.True(t, errors.Is(err, os.ErrNotExist), "the workspace is removed: %v", err)
	require.NoError(t, b.Destroy(ctx, sb), "Destroy is idempotent")
	all, err := b.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, all)

	_, err = b.Resume(ctx, sb)
	assert.ErrorIs(t, err, sandboxes.ErrGone)
	_, err = b.Suspend(ctx, sb)
	assert.ErrorIs(t, err, sandboxes.ErrNotFound)
	_, err = b.Logs(ctx, sb, 10)
	assert.ErrorIs(t, err, sandboxes.ErrNotFound)
}

func TestDeleteAgentRemovesItsSandboxesOnly(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", nil)
	f, other := newFixture(t), newFixture(t)
	a := provision(t, ctx, b, f.spec())
	s := provision(t, ctx, b, f.spec())
	_, err := b.Suspend(ctx, s)
	require.NoError(t, err)
	keep := provision(t, ctx, b, other.spec())

	require.NoError(t, b.DeleteAgent(ctx, f.agent))
	require.NoError(t, b.DeleteAgent(ctx, f.agent), "DeleteAgent is idempotent")
	assert.True(t, gone(pidOf(t, a)))
	all, err := b.List(ctx)
	require.NoError(t, err)
	require.Len(t, all, 1)
	assert.Equal(t, keep.ID, all[0].ID)
	assert.True(t, all[0].Running)
}

func TestConcurrentProvisionsGetTheirOwnPortsAndUsers(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", nil)
	f := newFixture(t)
	const n = 4
	got := make([]sandboxes.Sandbox, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sb, err := b.Provision(ctx, f.spec())
			assert.NoError(t, err)
			got[i] = sb
		})
	}
	wg.Wait()
	ports, uids := map[string]bool{}, map[string]bool{}
	for _, sb := range got {
		require.True(t, sb.Running)
		assert.False(t, ports[sb.Data["port"]], "port %s handed out twice", sb.Data["port"])
		ports[sb.Data["port"]] = true
		if uid := sb.Data["uid"]; uid != "" {
			assert.False(t, uids[uid], "uid %s handed out twice", uid)
			uids[uid] = true
		}
	}
}

// When lapd runs as root (as in CI), every harness runs as a user id of
// its own that owns its workspace, under resource limits, and cannot see
// another sandbox's files or process environment. Run as another user,
// harnesses run as that user, with the open-file limit.
func TestIsolation(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", map[string]string{"LOCAL_MAX_OPEN_FILES": "1000", "LOCAL_MAX_PROCESSES": "300"})
	f := newFixture(t)
	specA, specB := f.spec(), f.spec()
	a := provision(t, ctx, b, specA)
	other := provision(t, ctx, b, specB)
	pid := pidOf(t, a)
	assert.Equal(t, "1000", procLimit(t, pid, "Max open files"))

	if os.Geteuid() != 0 {
		assert.Equal(t, strconv.Itoa(os.Geteuid()), strings.Fields(procStatus(t, pid, "Uid"))[0], "harness runs as lapd's user")
		assert.Empty(t, a.Data["uid"])
		return
	}

	uid := a.Data["uid"]
	require.NotEmpty(t, uid)
	assert.NotEqual(t, uid, other.Data["uid"], "each sandbox has its own user id")
	n, err := strconv.Atoi(uid)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, n, 1000000)
	assert.Equal(t, []string{uid, uid, uid, uid}, strings.Fields(procStatus(t, pid, "Uid")))
	assert.Equal(t, []string{uid, uid, uid, uid}, strings.Fields(procStatus(t, pid, "Gid")))
	assert.Empty(t, procStatus(t, pid, "Groups"), "no supplementary groups")
	assert.Equal(t, "300", procLimit(t, pid, "Max processes"))

	fi, err := os.Stat(a.Data["workspace"])
	require.NoError(t, err)
	st := fi.Sys().(*syscall.Stat_t)
	assert.EqualValues(t, n, st.Uid, "the workspace belongs to the sandbox's user")
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	rec, err := os.Stat(filepath.Join(b.sandboxDir(a.ID), recordFile))
	require.NoError(t, err)
	assert.EqualValues(t, 0, rec.Sys().(*syscall.Stat_t).Uid, "the record (with the secrets) stays lapd's")
	assert.Equal(t, os.FileMode(0o600), rec.Mode().Perm())

	// What the agent's tools can reach from inside sandbox a.
	c := f.client(t, a, specA)
	sess := c.newSession()
	for _, tt := range []struct{ name, command, want string }{
		{"own id", "id -u", uid},
		{"another sandbox's workspace", "ls " + other.Data["workspace"] + " 2>&1; true", "Permission denied"},
		{"another harness's environment", "cat /proc/" + other.Data["pid"] + "/environ 2>&1; true", "Permission denied"},
		{"its own record", "cat " + filepath.Join(b.sandboxDir(a.ID), recordFile) + " 2>&1; true", "Permission denied"},
		{"lapd's data", "ls " + filepath.Dir(b.dir) + " 2>&1; true", "Permission denied"},
	} {
		f.llm.Enqueue(fakellm.CallTool("bash", map[string]any{"command": tt.command}), fakellm.Text("ok"))
		out := toolOutput(t, c.send(sess, tt.name))
		assert.Contains(t, out, tt.want, "%s: %s", tt.name, tt.command)
		assert.NotContains(t, out, specB.Env["HARNESS_AUTH_TOKEN"], tt.name)
	}
}

func TestSharedSandboxUser(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		_, err := New(Options{Dir: filepath.Join(dataDir(t), "sandboxes"), Config: localConfig(t, map[string]string{"LOCAL_SANDBOX_USER": "nobody"})})
		require.ErrorContains(t, err, "needs lapd to run as root")
		return
	}
	ctx := testCtx(t)
	b := newBackend(t, "", map[string]string{"LOCAL_SANDBOX_USER": "65534:65534"})
	f := newFixture(t)
	sb := provision(t, ctx, b, f.spec())
	assert.Equal(t, "65534", strings.Fields(procStatus(t, pidOf(t, sb), "Uid"))[0])
	assert.Equal(t, "65534", sb.Data["uid"])
	var own unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NPROC, &own))
	assert.Equal(t, limitString(own.Cur), procLimit(t, pidOf(t, sb), "Max processes"),
		"RLIMIT_NPROC counts every process of a user, so a shared user keeps lapd's")
}

func TestSandboxUserSettingErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		user, want string
	}{
		{"no-such-user-here", "unknown user"},
		{"0:0", "that is root"},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			t.Parallel()
			_, err := New(Options{Dir: filepath.Join(dataDir(t), "sandboxes"), Config: localConfig(t, map[string]string{"LOCAL_SANDBOX_USER": tt.user})})
			if os.Geteuid() != 0 {
				require.ErrorContains(t, err, "needs lapd to run as root")
				return
			}
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestLogsAreCapped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const maxBytes = 8 << 10
	f, err := openLog(dir)
	require.NoError(t, err)
	defer f.Close()
	var all strings.Builder
	for i := range 2000 {
		line := "line " + strconv.Itoa(i) + " of the harness's output\n"
		all.WriteString(line)
		_, err := f.WriteString(line)
		require.NoError(t, err)
		require.NoError(t, rotateLog(dir, maxBytes))
	}
	cur, err := os.Stat(filepath.Join(dir, logFile))
	require.NoError(t, err)
	old, err := os.Stat(filepath.Join(dir, oldLogFile))
	require.NoError(t, err)
	assert.LessOrEqual(t, cur.Size()+old.Size(), int64(maxBytes+200), "the two files stay near the cap")

	tail, err := logTail(dir, 1000)
	require.NoError(t, err)
	assert.True(t, strings.HasSuffix(tail, "line 1999 of the harness's output\n"), "the tail is the latest output: %q", tail)

	// Writes after truncation continue at the start of the file, not at
	// the old offset (the harness holds it open for appending).
	_, err = f.WriteString("after\n")
	require.NoError(t, err)
	tail, err = logTail(dir, 6)
	require.NoError(t, err)
	assert.Equal(t, "after\n", tail)
}

func TestExternal(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	// The developer's harness: started by hand, no token.
	b := newBackend(t, "", nil)
	f := newFixture(t)
	spec := f.spec()
	spec.Env["HARNESS_AUTH_TOKEN"] = ""
	dev := provision(t, ctx, b, spec)

	ext := NewExternal(dev.Endpoint.URL+"/", localConfig(t, nil).ReadyTimeout)
	s := f.spec()
	sb, err := ext.Provision(ctx, s)
	require.NoError(t, err)
	assert.Equal(t, dev.Endpoint.URL, sb.Endpoint.URL)
	assert.Equal(t, s.ID, sb.ID)
	assert.True(t, sb.Running)

	sb, err = ext.Suspend(ctx, sb)
	require.NoError(t, err)
	assert.False(t, sb.Running)
	require.NoError(t, ext.Destroy(ctx, sb))
	require.NoError(t, ext.DeleteAgent(ctx, f.agent))
	assert.False(t, gone(pidOf(t, dev)), "the external harness is not lapd's to stop")
	sb, err = ext.Resume(ctx, sb)
	require.NoError(t, err)
	assert.True(t, sb.Running)

	require.NoError(t, b.Destroy(ctx, dev))
	down := NewExternal(dev.Endpoint.URL, 200*time.Millisecond)
	_, err = down.Provision(ctx, f.spec())
	require.ErrorIs(t, err, sandboxes.ErrNotReady)
	assert.Contains(t, err.Error(), "LOCAL_SANDBOX_URL")
}

func TestCheckID(t *testing.T) {
	t.Parallel()
	for _, id := range []string{uuid.NewString(), "a", "sb-1_2.3"} {
		assert.NoError(t, checkID(id), id)
	}
	for _, id := range []string{"", ".", "..", "../x", "a/b", "-a", strings.Repeat("a", 129)} {
		assert.Error(t, checkID(id), id)
	}
}

// The backend caps a running sandbox's output in the background.
func TestBackendCapsLogsOfRunningSandboxes(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBackend(t, "", map[string]string{"LOCAL_LOG_MAX_BYTES": "8KiB"})
	f := newFixture(t)
	sb := provision(t, ctx, b, f.spec())
	// Output as if the harness had been chatty.
	lf, err := os.OpenFile(sb.Data["log"], os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = lf.WriteString(strings.Repeat("chatty harness output\n", 2000))
	require.NoError(t, lf.Close())
	require.NoError(t, err)
	waitfor.Cond(t, "the log to be capped", func() bool {
		fi, err := os.Stat(sb.Data["log"])
		return err == nil && fi.Size() <= 4<<10
	})
	logs, err := b.Logs(ctx, sb, 16<<10)
	require.NoError(t, err)
	assert.LessOrEqual(t, len(logs), 8<<10+200)
	assert.Contains(t, logs, "chatty harness output\n")
}

// Harnesses running as their own users must reach their workspaces: with
// LOCAL_SANDBOX_USER=isolated a data dir they cannot reach is refused at
// start with what to do; with auto (the default) lapd warns and runs them
// as its own user, so `make run` works from a private home directory.
func TestUnreachableDataDir(t *testing.T) {
	t.Parallel()
	private := filepath.Join(dataDir(t), "private")
	require.NoError(t, os.Mkdir(private, 0o700))
	dir := filepath.Join(private, "data", "sandboxes")
	isolated := localConfig(t, map[string]string{"LOCAL_SANDBOX_USER": "isolated"})
	b, err := New(Options{Dir: dir, Config: isolated, ExecDir: binDir})
	if os.Geteuid() != 0 {
		require.NoError(t, err, "harnesses run as lapd's user")
		require.NoError(t, b.Close(t.Context()))
		return
	}
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cannot reach their workspaces")
	assert.Contains(t, err.Error(), "chmod o+x "+private)
	assert.Contains(t, err.Error(), "LOCAL_SANDBOX_USER=root")

	var logs bytes.Buffer
	b, err = New(Options{Dir: dir, Config: localConfig(t, nil), ExecDir: binDir,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err, "auto falls back to lapd's user")
	assert.Equal(t, asLapd, b.users.mode)
	assert.Contains(t, logs.String(), "without isolation")
	assert.Contains(t, logs.String(), "chmod o+x "+private)
	require.NoError(t, b.Close(t.Context()))

	b, err = New(Options{Dir: dir, Config: localConfig(t, map[string]string{"LOCAL_SANDBOX_USER": "root"}), ExecDir: binDir})
	require.NoError(t, err, "without isolation nothing needs reaching")
	require.NoError(t, b.Close(t.Context()))
}
