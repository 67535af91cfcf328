// Package proc runs the processes of Knative in a box — the Kubernetes and
// Knative components and the containers of pods — each in its own process
// group, optionally inside a network namespace, with its output in a log
// file, and stops them: SIGTERM, a grace period, SIGKILL.
//
// Every process gets the box's slot in its environment (boxnet.SlotEnv)
// and dies with the process that started it (the parent-death signal), so
// neither a finished nor a crashed box leaves one behind that a sweep
// cannot find.
package proc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"lap.dev/lap/e2e/box/boxnet"
)

// Spec describes one process.
type Spec struct {
	// Argv is the program and its arguments; a program without a slash is
	// looked up on PATH.
	Argv []string
	// Env is the complete environment (nil = none); the slot is added.
	Env []string
	// Dir is the working directory; "" = the caller's.
	Dir string
	// Netns runs the process inside that network namespace (through
	// `ip netns exec`, which also mounts /etc/netns/NETNS/hosts as
	// /etc/hosts); "" = the host's.
	Netns string
	// Slot is the box's slot, recorded in the environment.
	Slot int
	// Log receives stdout and stderr, appended; "" = discarded.
	Log string
}

// Process is a started process.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File

	mu    sync.Mutex
	state *os.ProcessState
	err   error
}

// Start starts the process.
func Start(spec Spec) (*Process, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("start process: no program")
	}
	argv := spec.Argv
	if spec.Netns != "" {
		argv = boxnet.Exec(spec.Netns, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append([]string{}, spec.Env...), fmt.Sprintf("%s=%d", boxnet.SlotEnv, spec.Slot))
	cmd.Dir = spec.Dir
	// A group of its own, so a signal reaches what it starts too, and
	// death with the box: a crashed test leaves nothing running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	if spec.Log != "" {
		if err := os.MkdirAll(filepath.Dir(spec.Log), 0o755); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(spec.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		p.log = f
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		if p.log != nil {
			p.log.Close()
		}
		return nil, fmt.Errorf("start %s: %w", strings.Join(spec.Argv, " "), err)
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.state, p.err = cmd.ProcessState, err
		p.mu.Unlock()
		if p.log != nil {
			p.log.Close()
		}
		close(p.done)
	}()
	return p, nil
}

// Pid is the process's id (also its process group's).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and how.
func (p *Process) Exited() (state *os.ProcessState, exited bool) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.state, true
	default:
		return nil, false
	}
}

// ExitCode is the exit code of an exited process: 128+n for a process
// killed by signal n, as a shell and Kubernetes report it; -1 while it
// runs.
func (p *Process) ExitCode() int {
	state, ok := p.Exited()
	if !ok || state == nil {
		return -1
	}
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return state.ExitCode()
}

// Signal sends sig to the process's group.
func (p *Process) Signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs the group and
// waits for the exit.
func (p *Process) Stop(grace time.Duration) {
	p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	p.Kill()
}

// Kill SIGKILLs the group and waits for the exit.
func (p *Process) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}
