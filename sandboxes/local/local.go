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
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"lap.dev/lap/config"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/harnessclient"
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
	// harnesses asks the harnesses whether they are ready.
	harnesses *harnessclient.Client
	boot      string

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
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if users.switches() {
		uid, gid := users.uid, users.gid
		if users.mode == perSandbox {
			uid, gid = users.first, users.first
		}
		// Harness binaries need not be reachable: they are passed to the
		// sandbox's user as an open file (exec.go).
		err := checkReachable(dir, cfg.SandboxUser, uid, gid)
		switch {
		case err != nil && cfg.SandboxUser == "auto":
			// A newcomer's `make run` as root in a private home directory
			// still works, loudly without isolation.
			log.Warn("local sandboxes run as lapd's own user, without isolation: " + err.Error())
			users.mode = asLapd
		case err != nil:
			return nil, fmt.Errorf("local backend: %w", err)
		}
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
		harnesses:    harnessclient.New(),
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
