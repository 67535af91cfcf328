package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is one harness process: a child this lapd started (exited is
// closed when it ends, and Wait reaps it) or one adopted from an earlier
// lapd (exited is nil; it is watched through /proc).
type process struct {
	pid int
	// start is the process's start time in clock ticks after boot
	// (/proc/<pid>/stat field 22). A pid is reused; pid and start are not.
	start  uint64
	exited chan struct{}
	// status describes how a child ended, once exited is closed.
	status string
}

// alive reports whether the process still runs (a zombie does not).
func (p *process) alive() bool {
	if p.exited != nil {
		select {
		case <-p.exited:
			return false
		default:
			return true
		}
	}
	return procAlive(p.pid, p.start)
}

// wait blocks until the process has ended or ctx ends, and reports
// whether it ended.
func (p *process) wait(ctx context.Context) bool {
	if p.exited != nil {
		select {
		case <-p.exited:
			return true
		case <-ctx.Done():
			return false
		}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for procAlive(p.pid, p.start) {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// procStat is what lap reads from /proc/<pid>/stat.
type procStat struct {
	state   byte // R, S, D, Z, X, …
	session int
	start   uint64
}

// readProcStat parses /proc/<pid>/stat. The command name (field 2) may
// hold spaces and parentheses, so fields are counted after its last ')'.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	// After ")": state ppid pgrp session tty_nr tpgid flags minflt
	// cminflt majflt cmajflt utime stime cutime cstime priority nice
	// num_threads itrealvalue starttime …
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	session, err1 := strconv.Atoi(f[3])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err := errors.Join(err1, err2); err != nil || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: %q", pid, b)
	}
	return procStat{state: f[0][0], session: session, start: start}, nil
}

// procAlive reports whether pid is still the process that started at
// start and has not ended (zombies count as ended).
func procAlive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := readProcStat(pid)
	return err == nil && st.start == start && st.state != 'Z' && st.state != 'X'
}

// sessionOurs reports whether the session id pid still names the session
// of the harness started at start: no process has that pid any more (its
// members keep the id from reuse), or the harness itself still does.
func sessionOurs(pid int, start uint64) bool {
	st, err := readProcStat(pid)
	return err != nil || st.start == start
}

// procEnviron returns the initial environment of pid, as the kernel keeps
// it in /proc/<pid>/environ.
func procEnviron(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// isHarness reports whether the live process pid (started at start) is
// the harness of the sandbox whose workspace is workspace: its start time
// matches and, where lapd may read it, its environment names the
// workspace. The environment check guards against a pid and start time
// recorded before a reboot.
func isHarness(pid int, start uint64, workspace string) bool {
	if !procAlive(pid, start) {
		return false
	}
	env, err := procEnviron(pid)
	if err != nil {
		// Not ours to read (lapd is not root and the harness is not
		// its user): pid and start time have to do.
		return errors.Is(err, os.ErrPermission)
	}
	for _, kv := range env {
		if kv == "WORKSPACE="+workspace {
			return true
		}
	}
	return false
}

// bootID identifies the current boot; pids and start times recorded under
// another boot name nothing.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// sweep kills every process left in the session of a stopped harness
// (its tools run in process groups of their own, but in its session) and,
// when uid ≥ 0, every process of that user id (only a sandbox owns it).
// It repeats until none is found, so a process forked during the sweep is
// caught by the next round; the rounds are bounded.
func sweep(ctx context.Context, session, uid int) {
	for range 50 {
		if killMatching(session, uid) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// killMatching sends SIGKILL to every live process in session (if > 0)
// or owned by uid (if ≥ 0) and returns how many it found.
func killMatching(session, uid int) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	self := os.Getpid()
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		st, err := readProcStat(pid)
		if err != nil || st.state == 'Z' || st.state == 'X' {
			continue
		}
		match := session > 0 && st.session == session
		if !match && uid >= 0 {
			var fs syscall.Stat_t
			match = syscall.Stat("/proc/"+e.Name(), &fs) == nil && int(fs.Uid) == uid
		}
		if match {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			n++
		}
	}
	return n
}

// rssBytes is the resident memory of pid and all its descendants in the
// same session, from /proc/<pid>/status VmRSS.
func rssBytes(session int) (int64, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var total int64
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readProcStat(pid)
		if err != nil || st.session != session {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err == nil {
					total += kb << 10
				}
			}
		}
	}
	return total, nil
}
