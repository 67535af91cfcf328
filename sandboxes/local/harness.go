package local

// Starting, watching and stopping harness processes, and finding their
// commands and ports.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/harnessclient"
)

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
	fmt.Fprintf(logf, "[lap %s] starting %s on port %d as %s\n", time.Now().UTC().Format(time.RFC3339), strings.Join(append([]string{path}, args...), " "), port, who)

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
	t := target(rec)
	gone := func() error {
		if p.alive() {
			return nil
		}
		tail, _ := logTail(b.sandboxDir(rec.ID), 4096)
		if strings.Contains(tail, "address already in use") {
			return errPortTaken
		}
		return fmt.Errorf("%w: the harness exited (%s) before it was ready", sandboxes.ErrNotReady, p.status)
	}
	if err := gone(); err != nil {
		return err
	}
	return b.harnesses.WaitReady(ctx, t, harnessclient.Poll{
		Timeout: b.cfg.ReadyTimeout,
		// Polls are cheap (a refused loopback connection), so keep them
		// frequent: the pause is added to every cold start.
		Interval: 2 * time.Millisecond, MaxInterval: 20 * time.Millisecond, Factor: 1.5,
		Wake: p.exited,
		Check: func(ctx context.Context, attempt error) error {
			if err := gone(); err != nil {
				return err
			}
			if harnessclient.IsStatus(attempt, http.StatusServiceUnavailable) {
				if reason := b.workspaceError(ctx, t); reason != "" {
					return fmt.Errorf("%w: the harness could not prepare its workspace: %s", sandboxes.ErrNotReady, reason)
				}
			}
			return nil
		},
	})
}

// target is how lapd reaches rec's harness.
func target(rec record) harnessclient.Target {
	return harnessclient.Target{Endpoint: sandboxes.Endpoint{URL: endpointURL(rec.Port)}, Token: rec.Env["HARNESS_AUTH_TOKEN"]}
}

// workspaceError returns the error a harness reports at GET / for a
// workspace it could not prepare (a failed clone), or "".
func (b *Backend) workspaceError(ctx context.Context, t harnessclient.Target) string {
	id, err := b.harnesses.Identity(ctx, t)
	if err != nil {
		return ""
	}
	return id.Error
}

// healthy reports whether rec's harness answers GET /session with 2xx.
func (b *Backend) healthy(ctx context.Context, rec record) bool {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	return b.harnesses.Ready(ctx, target(rec)) == nil
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
