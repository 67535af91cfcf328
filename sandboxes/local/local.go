// Package local is lap's embedded default sandbox backend: every sandbox is
// a harness process on this machine, with a workspace directory of its own
// under lapd's data directory. No Kubernetes, no containers.
//
// A sandbox's directory <Dir>/<id> holds its record (sandbox.json: the
// harness's environment, its user id, the pid, start time and port of the
// latest harness process), its output (harness.log, capped by rotation)
// and the workspace (WORKSPACE; the repo at workspace/repo, HOME at
// workspace/home). Suspend stops the process and keeps the directory;
// Resume starts the harness again on the same workspace; Destroy removes
// it all.
//
// Harnesses run in sessions of their own (setsid), so they survive lapd
// stopping; a restarted lapd finds them again through the records and
// /proc (List), checked by pid, start time and environment. When lapd runs
// as root, each harness runs as an unprivileged user id (by default one
// per sandbox) with limits on open files and processes.
//
// LOCAL_SANDBOX_URL mode, where every session lives in one external
// harness, is the separate backend External.
package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"lap.dev/lap/config"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/protocol"
)

// Options configure a Backend.
type Options struct {
	// Dir holds one directory per sandbox: <LAP_DATA_DIR>/sandboxes.
	// It is created if missing.
	Dir string
	// Config holds the LOCAL_* settings, as config.Load returns them.
	Config config.LocalConfig
	// ExecDir is searched first for a harness command given by a bare
	// name (lapd passes the directory of its own executable), then
	// SearchPath.
	ExecDir    string
	SearchPath string
	// Logger receives the backend's diagnostics (default: discarded).
	Logger *slog.Logger
	// Lookup finds a harness by id (default sandboxes.LookupHarness).
	Lookup func(id string) (sandboxes.Harness, bool)
}

// Backend runs harnesses as local processes. It implements
// sandboxes.Backend; Close ends its background work.
type Backend struct {
	dir        string
	cfg        config.LocalConfig
	execDir    string
	searchPath string
	log        *slog.Logger
	lookup     func(string) (sandboxes.Harness, bool)
	users      *users
	client     *http.Client
	boot       string

	mu sync.Mutex
	// sbs serialises the lifecycle calls on each sandbox and remembers
	// the harness processes this lapd started.
	sbs map[string]*sandboxState
	// provisioning maps sandboxes whose Provision has not returned yet to
	// their agent: List leaves them out, DeleteAgent waits for them.
	provisioning map[string]string
	// ports are handed out to harnesses this lapd started (port → id).
	ports map[int]string

	stopLoop context.CancelFunc
	loopDone chan struct{}
}

// sandboxState is lapd's in-memory state of one sandbox; mu is held for
// the whole of every lifecycle call on it.
type sandboxState struct {
	mu   sync.Mutex
	proc *process // the child started by this lapd, if any
}

var _ sandboxes.Backend = (*Backend)(nil)

// logCheckInterval is how often harness logs are checked against the cap.
const logCheckInterval = 2 * time.Second

// healthTimeout bounds one health check of a running harness.
const healthTimeout = 5 * time.Second

// New checks opts, prepares Dir and starts the log capping loop.
func New(opts Options) (*Backend, error) {
	cfg := opts.Config
	if cfg.ReadyTimeout <= 0 || cfg.StopGrace <= 0 || cfg.MaxOpenFiles <= 0 || cfg.LogMaxBytes <= 0 || cfg.Path == "" {
		return nil, errors.New("local backend: incomplete settings (load them with config.Load)")
	}
	if opts.Dir == "" {
		return nil, errors.New("local backend: no sandbox directory")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	users, err := newUsers(cfg, os.Geteuid())
	if err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	if err := os.MkdirAll(dir, sandboxDirPerm); err != nil {
		return nil, fmt.Errorf("local backend: create %s: %w", dir, err)
	}
	if users.switches() {
		uid, gid := users.uid, users.gid
		if users.mode == perSandbox {
			uid, gid = users.first, users.first
		}
		if err := checkReachable(dir, cfg.SandboxUser, uid, gid); err != nil {
			return nil, fmt.Errorf("local backend: %w", err)
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lookup := opts.Lookup
	if lookup == nil {
		lookup = sandboxes.LookupHarness
	}
	searchPath := opts.SearchPath
	if searchPath == "" {
		searchPath = cfg.Path
	}
	b := &Backend{
		dir:          dir,
		cfg:          cfg,
		execDir:      opts.ExecDir,
		searchPath:   searchPath,
		log:          log,
		lookup:       lookup,
		users:        users,
		boot:         bootID(),
		sbs:          map[string]*sandboxState{},
		provisioning: map[string]string{},
		ports:        map[int]string{},
		client: &http.Client{Transport: &http.Transport{
			Proxy:               nil, // harnesses are on loopback
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     30 * time.Second,
		}},
	}
	switch users.mode {
	case perSandbox:
		log.Info("local sandboxes run as a user id of their own each", "uids", fmt.Sprintf("%d-%d", users.first, users.last))
	case asShared:
		log.Info("local sandboxes run as one user", "uid", users.uid, "gid", users.gid)
	default:
		if os.Geteuid() == 0 {
			log.Warn("local sandboxes run as root (LOCAL_SANDBOX_USER=root): no isolation between them or from lapd")
		}
	}
	// Claims lost with a wiped registry are made again before any new
	// sandbox could be handed one of their user ids.
	recs, err := b.records()
	if err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	for _, rec := range recs {
		if err := users.reclaim(rec.UID, filepath.Join(b.sandboxDir(rec.ID), workspaceDir)); err != nil {
			log.Warn("sandbox user id", "sandbox", rec.ID, "err", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.stopLoop, b.loopDone = cancel, make(chan struct{})
	go b.capLogs(ctx)
	return b, nil
}

// Name is "local".
func (b *Backend) Name() string { return "local" }

// Close ends the backend's background work. With LOCAL_STOP_ON_EXIT it
// also stops every harness, else they keep running for the next lapd to
// adopt. It returns when done or when ctx ends.
func (b *Backend) Close(ctx context.Context) error {
	b.stopLoop()
	<-b.loopDone
	if !b.cfg.StopOnExit {
		return nil
	}
	recs, err := b.records()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(recs))
	for i, rec := range recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := rec.ID
			s := b.lock(id)
			defer s.mu.Unlock()
			rec, err := readRecord(b.sandboxDir(id))
			if err == nil {
				err = b.stopHarness(ctx, s, &rec)
			}
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				errs[i] = fmt.Errorf("stop sandbox %s: %w", id, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// EnsureAgent checks that the agent's harness is known and its command
// can be found; the local backend keeps no per-agent resources.
func (b *Backend) EnsureAgent(_ context.Context, agent sandboxes.AgentSpec) error {
	if _, _, err := b.harness(agent.HarnessID); err != nil {
		return fmt.Errorf("ensure agent %s: %w", agent.Name, err)
	}
	return nil
}

// DeleteAgent destroys every sandbox of the agent, also those still being
// provisioned (it waits for them).
func (b *Backend) DeleteAgent(ctx context.Context, agent sandboxes.AgentSpec) error {
	recs, err := b.records()
	if err != nil {
		return fmt.Errorf("delete agent %s: %w", agent.Name, err)
	}
	ids := map[string]bool{}
	for _, rec := range recs {
		if rec.AgentID == agent.ID {
			ids[rec.ID] = true
		}
	}
	b.mu.Lock()
	for id, agentID := range b.provisioning {
		if agentID == agent.ID {
			ids[id] = true
		}
	}
	b.mu.Unlock()
	var errs []error
	for id := range ids {
		if err := b.Destroy(ctx, sandboxes.Sandbox{ID: id, AgentID: agent.ID}); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete agent %s: %w", agent.Name, err)
	}
	return nil
}

// Provision creates the sandbox's directory and workspace, starts its
// harness on a free loopback port and waits until GET /session answers
// 2xx. On any failure, ctx's end included, it stops the harness, removes
// the directory and returns the error; a harness that did not become
// ready gives an error wrapping sandboxes.ErrNotReady with its output's
// tail.
func (b *Backend) Provision(ctx context.Context, spec sandboxes.Spec) (sandboxes.Sandbox, error) {
	if err := checkID(spec.ID); err != nil {
		return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox: %w", err)
	}
	if _, _, err := b.harness(spec.Agent.HarnessID); err != nil {
		return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: %w", spec.ID, err)
	}
	if err := ctx.Err(); err != nil {
		return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: %w", spec.ID, err)
	}
	b.mu.Lock()
	b.provisioning[spec.ID] = spec.Agent.ID
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.provisioning, spec.ID)
		b.mu.Unlock()
	}()
	s := b.lock(spec.ID)
	defer s.mu.Unlock()

	dir := b.sandboxDir(spec.ID)
	if err := os.Mkdir(dir, sandboxDirPerm); err != nil {
		if errors.Is(err, os.ErrExist) {
			return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: it exists already", spec.ID)
		}
		return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: %w", spec.ID, err)
	}
	started := time.Now()
	rec, err := b.provision(ctx, s, dir, spec)
	if err != nil {
		b.discard(s, dir, rec)
		return sandboxes.Sandbox{}, fmt.Errorf("provision sandbox %s: %w", spec.ID, err)
	}
	b.log.Info("sandbox provisioned", "sandbox", spec.ID, "agent", spec.Agent.ID, "role", spec.Role,
		"pid", rec.PID, "port", rec.Port, "uid", rec.UID, "after", time.Since(started).Round(time.Millisecond))
	return b.sandboxOf(rec, true), nil
}

// provision does Provision's work in dir, which it may leave half done;
// the record it returns says what to clean up.
func (b *Backend) provision(ctx context.Context, s *sandboxState, dir string, spec sandboxes.Spec) (record, error) {
	rec := record{
		ID:         spec.ID,
		AgentID:    spec.Agent.ID,
		Generation: spec.Agent.Generation,
		Role:       spec.Role,
		HarnessID:  spec.Agent.HarnessID,
		CreatedAt:  time.Now().UTC(),
		UID:        -1,
		GID:        -1,
	}
	if err := os.Chmod(dir, sandboxDirPerm); err != nil {
		return rec, err
	}
	workspace := filepath.Join(dir, workspaceDir)
	uid, gid, err := b.users.makeWorkspace(workspace)
	if err != nil {
		return rec, err
	}
	rec.UID, rec.GID = uid, gid
	if err := makeHome(workspace, uid, gid); err != nil {
		return rec, err
	}
	if rec.Env, err = buildEnv(spec, workspace, b.cfg.Path); err != nil {
		return rec, err
	}
	if err := writeRecord(dir, rec); err != nil {
		return rec, err
	}
	err = b.startReady(ctx, s, dir, &rec, 0)
	return rec, err
}

// makeHome creates HOME in the workspace, owned by uid, gid (when ≥ 0),
// with a git identity: a sandbox's own user id has no passwd entry for git
// to take one from.
func makeHome(workspace string, uid, gid int) error {
	home := filepath.Join(workspace, homeDir)
	gitconfig := filepath.Join(home, ".gitconfig")
	if err := os.Mkdir(home, 0o700); err != nil {
		return fmt.Errorf("create home: %w", err)
	}
	if err := os.WriteFile(gitconfig, []byte("[user]\n\tname = lap agent\n\temail = agent@lap.invalid\n"), 0o600); err != nil {
		return fmt.Errorf("create home: %w", err)
	}
	if uid < 0 {
		return nil
	}
	for _, p := range []string{home, gitconfig} {
		if err := os.Lchown(p, uid, gid); err != nil {
			return fmt.Errorf("create home: %w", err)
		}
	}
	return nil
}

// discard undoes a failed Provision: it stops the harness if one runs and
// removes the sandbox's directory.
func (b *Backend) discard(s *sandboxState, dir string, rec record) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.StopGrace+10*time.Second)
	defer cancel()
	if err := b.stopHarness(ctx, s, &rec); err != nil {
		b.log.Warn("stop harness of failed sandbox", "sandbox", rec.ID, "err", err)
	}
	if err := removeAll(dir); err != nil {
		b.log.Warn("remove failed sandbox", "sandbox", rec.ID, "err", err)
	}
	b.users.release(rec.UID, filepath.Join(dir, workspaceDir))
	b.forget(rec.ID)
}

// Suspend stops the harness (SIGTERM to its process group, SIGKILL after
// LOCAL_STOP_GRACE, then whatever is left in its session) and keeps the
// workspace. Suspending a stopped sandbox does nothing.
func (b *Backend) Suspend(ctx context.Context, sb sandboxes.Sandbox) (sandboxes.Sandbox, error) {
	s := b.lock(sb.ID)
	defer s.mu.Unlock()
	rec, err := b.readRecord(sb.ID)
	if err != nil {
		return sb, fmt.Errorf("suspend sandbox %s: %w", sb.ID, err)
	}
	if err := b.stopHarness(ctx, s, &rec); err != nil {
		return sb, fmt.Errorf("suspend sandbox %s: %w", sb.ID, err)
	}
	b.log.Info("sandbox suspended", "sandbox", sb.ID)
	return b.sandboxOf(rec, false), nil
}

// Resume returns at once if the sandbox's harness runs and answers
// GET /session. Otherwise (suspended, crashed, hung, or left by an earlier
// lapd in any of those states) it stops what is left of it and starts the
// harness again on the same workspace, preferring the same port. The
// error wraps sandboxes.ErrGone if the workspace is gone, and
// sandboxes.ErrNotReady (with the output's tail) if the harness does not
// become ready; the workspace is kept then.
func (b *Backend) Resume(ctx context.Context, sb sandboxes.Sandbox) (sandboxes.Sandbox, error) {
	s := b.lock(sb.ID)
	defer s.mu.Unlock()
	rec, err := b.readRecord(sb.ID)
	if errors.Is(err, sandboxes.ErrNotFound) {
		err = fmt.Errorf("%w: its workspace was removed", sandboxes.ErrGone)
	}
	if err != nil {
		return sb, fmt.Errorf("resume sandbox %s: %w", sb.ID, err)
	}
	dir := b.sandboxDir(sb.ID)
	if _, err := os.Stat(filepath.Join(dir, workspaceDir)); err != nil {
		return sb, fmt.Errorf("resume sandbox %s: %w: %v", sb.ID, sandboxes.ErrGone, err)
	}
	if p := b.current(s, rec); p != nil {
		if b.healthy(ctx, rec) {
			return b.sandboxOf(rec, true), nil
		}
		b.log.Warn("sandbox harness runs but does not answer; restarting it", "sandbox", sb.ID, "pid", p.pid)
	}
	// Stop what is left: a hung harness, or the tools of a crashed one.
	if err := b.stopHarness(ctx, s, &rec); err != nil {
		return sb, fmt.Errorf("resume sandbox %s: %w", sb.ID, err)
	}
	if err := b.users.reclaim(rec.UID, filepath.Join(dir, workspaceDir)); err != nil {
		return sb, fmt.Errorf("resume sandbox %s: %w", sb.ID, err)
	}
	started := time.Now()
	if err := b.startReady(ctx, s, dir, &rec, rec.Port); err != nil {
		return b.sandboxOf(rec, false), fmt.Errorf("resume sandbox %s: %w", sb.ID, err)
	}
	b.log.Info("sandbox resumed", "sandbox", sb.ID, "pid", rec.PID, "port", rec.Port, "after", time.Since(started).Round(time.Millisecond))
	return b.sandboxOf(rec, true), nil
}

// Destroy stops the harness and removes the sandbox's directory.
// Destroying what is not there returns nil.
func (b *Backend) Destroy(ctx context.Context, sb sandboxes.Sandbox) error {
	if checkID(sb.ID) != nil {
		return nil // no such directory can exist
	}
	s := b.lock(sb.ID)
	defer s.mu.Unlock()
	dir := b.sandboxDir(sb.ID)
	rec, err := readRecord(dir)
	switch {
	case err == nil:
		if err := b.stopHarness(ctx, s, &rec); err != nil {
			return fmt.Errorf("destroy sandbox %s: %w", sb.ID, err)
		}
	case errors.Is(err, os.ErrNotExist):
		// No record: nothing was ever started, or the directory is gone.
		rec = record{ID: sb.ID, UID: -1}
		var st syscall.Stat_t
		if b.users.mode == perSandbox && syscall.Stat(filepath.Join(dir, workspaceDir), &st) == nil {
			rec.UID = int(st.Uid)
			sweep(ctx, 0, rec.UID)
		}
	default:
		b.log.Warn("destroy sandbox with an unreadable record", "sandbox", sb.ID, "err", err)
		rec = record{ID: sb.ID, UID: -1}
	}
	if err := removeAll(dir); err != nil {
		return fmt.Errorf("destroy sandbox %s: %w", sb.ID, err)
	}
	b.users.release(rec.UID, filepath.Join(dir, workspaceDir))
	b.forget(sb.ID)
	b.log.Info("sandbox destroyed", "sandbox", sb.ID)
	return nil
}

// List returns every sandbox with a directory, but those whose Provision
// has not returned yet. Running is true when its harness process is alive
// (checked by pid, start time and environment) and answers GET /session.
func (b *Backend) List(ctx context.Context) ([]sandboxes.Sandbox, error) {
	recs, err := b.records()
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	out := make([]sandboxes.Sandbox, len(recs))
	sem := make(chan struct{}, 8) // health checks in parallel, bounded
	var wg sync.WaitGroup
	for i, rec := range recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			running := b.isRunning(rec) && b.healthy(ctx, rec)
			out[i] = b.sandboxOf(rec, running)
		}()
	}
	wg.Wait()
	return out, nil
}

// Logs returns up to the last n bytes of the harness's output, with
// lapd's own lines about starts and exits.
func (b *Backend) Logs(_ context.Context, sb sandboxes.Sandbox, n int) (string, error) {
	if err := checkID(sb.ID); err != nil {
		return "", fmt.Errorf("logs of sandbox: %w", err)
	}
	dir := b.sandboxDir(sb.ID)
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("logs of sandbox %s: %w", sb.ID, sandboxes.ErrNotFound)
		}
		return "", fmt.Errorf("logs of sandbox %s: %w", sb.ID, err)
	}
	out, err := logTail(dir, n)
	if err != nil {
		return "", fmt.Errorf("logs of sandbox %s: %w", sb.ID, err)
	}
	return out, nil
}

// startReady starts the harness for rec in dir and waits until it is
// ready, trying another port if the chosen one turns out to be taken. On
// failure nothing of the attempt runs any more.
func (b *Backend) startReady(ctx context.Context, s *sandboxState, dir string, rec *record, preferPort int) error {
	const attempts = 3
	for attempt := 1; ; attempt++ {
		port, err := b.reservePort(rec.ID, preferPort)
		if err != nil {
			return err
		}
		p, err := b.start(dir, rec, port)
		if err != nil {
			b.releasePort(rec.ID, port)
			return err
		}
		s.proc = p
		err = b.waitReady(ctx, p, *rec)
		if err == nil {
			return nil
		}
		stopCtx, cancel := context.WithTimeout(context.Background(), b.cfg.StopGrace+10*time.Second)
		stopErr := b.stopHarness(stopCtx, s, rec)
		cancel()
		if stopErr != nil {
			b.log.Warn("stop harness that did not become ready", "sandbox", rec.ID, "err", stopErr)
		}
		if errors.Is(err, errPortTaken) && attempt < attempts {
			b.log.Info("harness port taken, trying another", "sandbox", rec.ID, "port", port)
			preferPort = 0
			continue
		}
		if errors.Is(err, sandboxes.ErrNotReady) {
			tail, _ := logTail(dir, 2048)
			return fmt.Errorf("%w\n--- harness output (tail) ---\n%s", err, trimToLines(tail))
		}
		return err
	}
}

// start starts rec's harness on port and records the process. The
// harness's stdout and stderr are its log file.
func (b *Backend) start(dir string, rec *record, port int) (*process, error) {
	h, path, err := b.harness(rec.HarnessID)
	if err != nil {
		return nil, err
	}
	env := environ(rec.Env, port)
	vars := func(k string) string {
		if k == "PORT" {
			return strconv.Itoa(port)
		}
		return rec.Env[k]
	}
	args := make([]string, len(h.Command)-1)
	for i, a := range h.Command[1:] {
		args[i] = os.Expand(a, vars)
	}
	logf, err := openLog(dir)
	if err != nil {
		return nil, fmt.Errorf("open harness log: %w", err)
	}
	defer logf.Close()
	who := "lapd's user"
	if rec.UID >= 0 {
		who = fmt.Sprintf("uid %d", rec.UID)
	}
	fmt.Fprintf(logf, "[lap %s] starting %s %s on port %d as %s\n", time.Now().UTC().Format(time.RFC3339), path, strings.Join(args, " "), port, who)

	nproc := 0
	// RLIMIT_NPROC counts every process of the user, so it is a
	// per-sandbox limit only when the user id is the sandbox's own.
	if b.users.mode == perSandbox && rec.UID >= 0 {
		nproc = b.cfg.MaxProcesses
	}
	// The wrapper executes the harness through this descriptor, opened
	// with lapd's rights, so the sandbox's user needs permission to
	// execute the file but not to reach its directory.
	bin, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open harness %s: %w", rec.HarnessID, err)
	}
	defer bin.Close()
	cmd := &exec.Cmd{
		Path:       selfExe,
		Args:       wrapperArgs(b.cfg.MaxOpenFiles, nproc, path, args),
		Dir:        filepath.Join(dir, workspaceDir),
		Env:        env,
		ExtraFiles: []*os.File{bin}, // fd 3 in the wrapper
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// A session of its own: the harness and its tools get no signal
	// meant for lapd or its terminal and outlive lapd; the session and
	// process group ids are the harness's pid, which stop and sweep use.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: credential(rec.UID, rec.GID)}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(logf, "[lap] start failed: %v\n", err)
		return nil, fmt.Errorf("start harness %s: %w", rec.HarnessID, err)
	}
	pid := cmd.Process.Pid
	// The child is not reaped before Wait, so its stat is readable even
	// if it already ended.
	st, statErr := readProcStat(pid)
	p := &process{pid: pid, start: st.start, exited: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.status = exitStatus(cmd.ProcessState, err)
		appendLog(dir, "harness (pid %d) exited: %s", pid, p.status)
		close(p.exited)
	}()
	if statErr != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-p.exited
		return nil, fmt.Errorf("start harness %s: %w", rec.HarnessID, statErr)
	}
	rec.Port, rec.PID, rec.Start, rec.BootID = port, pid, st.start, b.boot
	if err := writeRecord(dir, *rec); err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-p.exited
		return nil, err
	}
	return p, nil
}

// exitStatus describes how a child ended.
func exitStatus(ps *os.ProcessState, err error) string {
	if ps == nil {
		return err.Error()
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by " + unix.SignalName(ws.Signal())
	}
	return ps.String()
}

// errPortTaken: the harness exited because its port was taken meanwhile.
var errPortTaken = errors.New("harness port taken")

// waitReady polls GET /session until it answers 2xx. It gives up with an
// error wrapping sandboxes.ErrNotReady when the harness exits, reports
// that its workspace failed (GET / with an error), or LOCAL_READY_TIMEOUT
// passes; with ctx's error when ctx ends first.
func (b *Backend) waitReady(ctx context.Context, p *process, rec record) error {
	wait, cancel := context.WithTimeout(ctx, b.cfg.ReadyTimeout)
	defer cancel()
	url := endpointURL(rec.Port)
	token := rec.Env["HARNESS_AUTH_TOKEN"]
	delay := 2 * time.Millisecond
	last := "no answer yet"
	for {
		if !p.alive() {
			tail, _ := logTail(b.sandboxDir(rec.ID), 4096)
			if strings.Contains(tail, "address already in use") {
				return errPortTaken
			}
			return fmt.Errorf("%w: the harness exited (%s) before it was ready", sandboxes.ErrNotReady, p.status)
		}
		status, body, err := b.get(wait, url+"/session", token)
		switch {
		case err != nil:
			last = err.Error()
		case status/100 == 2:
			return nil
		case status == http.StatusServiceUnavailable:
			if reason := b.workspaceError(wait, url); reason != "" {
				return fmt.Errorf("%w: the harness could not prepare its workspace: %s", sandboxes.ErrNotReady, reason)
			}
			last = fmt.Sprintf("GET /session = %d %.512s", status, body)
		default:
			last = fmt.Sprintf("GET /session = %d %.512s", status, body)
		}
		select {
		case <-wait.Done():
			if err := ctx.Err(); err != nil {
				return err
			}
			return fmt.Errorf("%w: no answer to GET /session within %s (last: %s)", sandboxes.ErrNotReady, b.cfg.ReadyTimeout, last)
		case <-p.exited:
		case <-time.After(delay):
		}
		// Polls are cheap (a refused loopback connection), so keep
		// them frequent: the delay is added to every cold start.
		delay = min(delay*3/2, 20*time.Millisecond)
	}
}

// workspaceError returns the error a harness reports at GET / for a
// workspace it could not prepare (a failed clone), or "".
func (b *Backend) workspaceError(ctx context.Context, url string) string {
	status, body, err := b.get(ctx, url+"/", "")
	if err != nil || status != http.StatusOK {
		return ""
	}
	var id protocol.Identity
	if json.Unmarshal([]byte(body), &id) != nil {
		return ""
	}
	return id.Error
}

// healthy reports whether rec's harness answers GET /session with 2xx.
func (b *Backend) healthy(ctx context.Context, rec record) bool {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	status, _, err := b.get(ctx, endpointURL(rec.Port)+"/session", rec.Env["HARNESS_AUTH_TOKEN"])
	return err == nil && status/100 == 2
}

// get makes one GET and returns the status and up to 64 KiB of body.
func (b *Backend) get(ctx context.Context, url, token string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", protocol.Bearer(token))
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, strings.TrimSpace(string(body)), nil
}

// stopHarness stops rec's harness if one runs (SIGTERM to its process
// group, SIGKILL after the grace period), kills what is left in its
// session (and, with a user id per sandbox, of its user), frees its port
// and records that nothing runs.
func (b *Backend) stopHarness(ctx context.Context, s *sandboxState, rec *record) error {
	if p := b.current(s, *rec); p != nil {
		_ = syscall.Kill(-p.pid, syscall.SIGTERM)
		grace, cancel := context.WithTimeout(ctx, b.cfg.StopGrace)
		ended := p.wait(grace)
		cancel()
		if !ended {
			_ = syscall.Kill(-p.pid, syscall.SIGKILL)
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
			// Death after SIGKILL is prompt; wait for it even if ctx
			// ended, so the workspace is not handed on in use.
			kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			ended = p.wait(kctx)
			kcancel()
			if !ended {
				return fmt.Errorf("harness pid %d does not end after SIGKILL", p.pid)
			}
		}
	}
	// Kill what is left. With a user id of its own, everything of that
	// user is the sandbox's; else its session, if the session id (the
	// harness's pid) was not reused since: a pid is not handed out again
	// while a session of that id has members, and a live process under
	// it with another start time means it was.
	switch {
	case b.users.mode == perSandbox && rec.UID >= 0:
		sweep(context.WithoutCancel(ctx), 0, rec.UID)
	case rec.PID > 0 && rec.BootID == b.boot && sessionOurs(rec.PID, rec.Start):
		sweep(context.WithoutCancel(ctx), rec.PID, -1)
	}
	s.proc = nil
	b.releasePort(rec.ID, rec.Port)
	if rec.PID == 0 {
		return nil
	}
	rec.PID, rec.Start = 0, 0
	dir := b.sandboxDir(rec.ID)
	if _, err := os.Stat(dir); err != nil {
		return nil // removed meanwhile, e.g. a failed provision
	}
	return writeRecord(dir, *rec)
}

// current returns rec's harness process if it runs: the child this lapd
// started, or one started by an earlier lapd and recognised through /proc.
func (b *Backend) current(s *sandboxState, rec record) *process {
	if rec.PID <= 0 {
		return nil
	}
	if p := s.proc; p != nil && p.pid == rec.PID {
		if p.alive() {
			return p
		}
		return nil
	}
	if b.isRunning(rec) {
		return &process{pid: rec.PID, start: rec.Start}
	}
	return nil
}

// isRunning reports whether rec's latest harness process is alive, as
// /proc shows it.
func (b *Backend) isRunning(rec record) bool {
	return rec.PID > 0 && rec.BootID == b.boot &&
		isHarness(rec.PID, rec.Start, filepath.Join(b.sandboxDir(rec.ID), workspaceDir))
}

// reservePort returns a free port for sandbox id: prefer if it is free,
// else one the kernel picks, never one handed to another live harness.
func (b *Backend) reservePort(id string, prefer int) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if prefer > 0 {
		if owner, ok := b.ports[prefer]; (!ok || owner == id) && portFree(prefer) {
			b.ports[prefer] = id
			return prefer, nil
		}
	}
	for range 20 {
		port, err := freePort()
		if err != nil {
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		if _, taken := b.ports[port]; !taken {
			b.ports[port] = id
			return port, nil
		}
	}
	return 0, errors.New("find a free port: every port offered is in use by a sandbox")
}

func (b *Backend) releasePort(id string, port int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ports[port] == id {
		delete(b.ports, port)
	}
}

// freePort asks the kernel for a port free on every interface (lap's
// harness listens on all of them when it has a token).
func freePort() (int, error) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func portFree(port int) bool {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// endpointURL is the URL of a harness on port.
func endpointURL(port int) string { return "http://127.0.0.1:" + strconv.Itoa(port) }

// harness returns the registry entry for id and the resolved path of its
// command.
func (b *Backend) harness(id string) (sandboxes.Harness, string, error) {
	if id == "" {
		id = sandboxes.DefaultHarness
	}
	h, ok := b.lookup(id)
	if !ok {
		return h, "", fmt.Errorf("harness %q is unknown (known: %s)", id, strings.Join(sandboxes.HarnessIDs(), ", "))
	}
	if len(h.Command) == 0 {
		return h, "", fmt.Errorf("harness %q has no command to run locally", id)
	}
	path, err := b.resolve(h.Command[0])
	if err != nil {
		return h, "", fmt.Errorf("harness %q: %w", id, err)
	}
	return h, path, nil
}

// resolve finds a harness command: an absolute path as is, a relative
// path under ExecDir, a bare name in ExecDir and then on SearchPath.
func (b *Backend) resolve(name string) (string, error) {
	if filepath.IsAbs(name) {
		return name, checkExecutable(name)
	}
	if strings.ContainsRune(name, filepath.Separator) {
		p := filepath.Join(b.execDir, name)
		return p, checkExecutable(p)
	}
	dirs := filepath.SplitList(b.searchPath)
	if b.execDir != "" {
		dirs = append([]string{b.execDir}, dirs...)
	}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, name)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %s not found next to lapd (%s) or on PATH", name, b.execDir)
}

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

// sandboxOf is the sandboxes.Sandbox for rec.
func (b *Backend) sandboxOf(rec record, running bool) sandboxes.Sandbox {
	dir := b.sandboxDir(rec.ID)
	data := map[string]string{
		"workspace": filepath.Join(dir, workspaceDir),
		"log":       filepath.Join(dir, logFile),
		"harness":   rec.HarnessID,
	}
	if rec.UID >= 0 {
		data["uid"] = strconv.Itoa(rec.UID)
	}
	if rec.Port > 0 {
		data["port"] = strconv.Itoa(rec.Port)
	}
	if running && rec.PID > 0 {
		data["pid"] = strconv.Itoa(rec.PID)
	}
	sb := sandboxes.Sandbox{
		ID:         rec.ID,
		AgentID:    rec.AgentID,
		Generation: rec.Generation,
		Running:    running,
		Data:       data,
	}
	if rec.Port > 0 {
		sb.Endpoint.URL = endpointURL(rec.Port)
	}
	return sb
}

func (b *Backend) sandboxDir(id string) string { return filepath.Join(b.dir, id) }

// readRecord reads sandbox id's record; ErrNotFound if it has none.
func (b *Backend) readRecord(id string) (record, error) {
	if err := checkID(id); err != nil {
		return record{}, fmt.Errorf("%w: %v", sandboxes.ErrNotFound, err)
	}
	rec, err := readRecord(b.sandboxDir(id))
	if errors.Is(err, os.ErrNotExist) {
		return record{}, sandboxes.ErrNotFound
	}
	return rec, err
}

// records reads the record of every sandbox directory whose Provision has
// returned. Unreadable records are logged and skipped.
func (b *Backend) records() ([]record, error) {
	entries, err := os.ReadDir(b.dir)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	inFlight := make(map[string]bool, len(b.provisioning))
	for id := range b.provisioning {
		inFlight[id] = true
	}
	b.mu.Unlock()
	var recs []record
	for _, e := range entries {
		if !e.IsDir() || inFlight[e.Name()] || checkID(e.Name()) != nil {
			continue
		}
		rec, err := readRecord(filepath.Join(b.dir, e.Name()))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				b.log.Warn("skip sandbox with an unreadable record", "sandbox", e.Name(), "err", err)
			}
			continue
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// lock returns sandbox id's state with its mutex held.
func (b *Backend) lock(id string) *sandboxState {
	b.mu.Lock()
	s, ok := b.sbs[id]
	if !ok {
		s = &sandboxState{}
		b.sbs[id] = s
	}
	b.mu.Unlock()
	s.mu.Lock()
	return s
}

// forget drops a destroyed sandbox's state.
func (b *Backend) forget(id string) {
	b.mu.Lock()
	delete(b.sbs, id)
	b.mu.Unlock()
}

// capLogs keeps every sandbox's output under LOCAL_LOG_MAX_BYTES until
// ctx ends.
func (b *Backend) capLogs(ctx context.Context) {
	defer close(b.loopDone)
	tick := time.NewTicker(logCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		entries, err := os.ReadDir(b.dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if err := rotateLog(filepath.Join(b.dir, e.Name()), b.cfg.LogMaxBytes); err != nil && !errors.Is(err, os.ErrNotExist) {
				b.log.Warn("cap sandbox log", "sandbox", e.Name(), "err", err)
			}
		}
	}
}

// trimToLines drops a partial first line from a log tail.
func trimToLines(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 && i < len(s)-1 {
		return s[i+1:]
	}
	return s
}
