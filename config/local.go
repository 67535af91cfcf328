package config

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// LocalConfig holds the settings of the local sandbox backend (sandboxes/local).
type LocalConfig struct {
	// ReadyTimeout bounds how long a harness may take to answer
	// GET /session after it was started (a clone included).
	ReadyTimeout time.Duration // LOCAL_READY_TIMEOUT
	// StopGrace is the wait between SIGTERM and SIGKILL when a sandbox is
	// suspended or destroyed.
	StopGrace time.Duration // LOCAL_STOP_GRACE
	// StopOnExit stops every sandbox when lapd exits instead of leaving
	// them running for the next lapd to adopt.
	StopOnExit bool // LOCAL_STOP_ON_EXIT
	// SandboxUser is who harnesses run as when lapd runs as root:
	// "isolated" (a user id of its own per sandbox, from UIDFirst..UIDLast,
	// or refuse to start), "auto" (the same, but lapd's own user with a
	// warning when those users cannot reach the workspaces),
	// "root" (no isolation), or a user name or uid[:gid] shared by all.
	SandboxUser string // LOCAL_SANDBOX_USER
	// UIDFirst and UIDLast bound the user ids "auto" hands out.
	UIDFirst, UIDLast int // LOCAL_SANDBOX_UIDS
	// UIDRegistry is the machine-wide directory where "auto" records
	// which user id belongs to which workspace, so that several lapds
	// (or test runs) on one machine never share one.
	UIDRegistry string // LOCAL_SANDBOX_UID_REGISTRY
	// MaxOpenFiles is RLIMIT_NOFILE of every harness.
	MaxOpenFiles int // LOCAL_MAX_OPEN_FILES
	// MaxProcesses is RLIMIT_NPROC (processes and threads) of a sandbox's
	// own user id; it applies only with SandboxUser "auto", since the
	// limit counts every process of the user.
	MaxProcesses int // LOCAL_MAX_PROCESSES
	// LogMaxBytes caps a sandbox's kept output (current file plus one
	// rotated file).
	LogMaxBytes int64 // LOCAL_LOG_MAX_BYTES
	// Path is the PATH harnesses and their tools get.
	Path string // LOCAL_SANDBOX_PATH
}

var localSettings = []Setting{
	{"LOCAL_READY_TIMEOUT", "5m", "local sandboxes: how long a harness may take to become ready (clone included)", func(c *Config, v string) error {
		return parseDuration(&c.Local.ReadyTimeout, v)
	}},
	{"LOCAL_STOP_GRACE", "10s", "local sandboxes: wait between SIGTERM and SIGKILL when a harness is stopped", func(c *Config, v string) error {
		return parseDuration(&c.Local.StopGrace, v)
	}},
	{"LOCAL_STOP_ON_EXIT", "false", "local sandboxes: stop every harness when lapd exits (default: they keep running and the next lapd adopts them)", func(c *Config, v string) error {
		return parseBool(&c.Local.StopOnExit, v)
	}},
	{"LOCAL_SANDBOX_USER", "auto", "local sandboxes, when lapd runs as root: isolated (an own user id per sandbox from LOCAL_SANDBOX_UIDS), auto (isolated where the data dir is reachable by other users, else lapd's user with a warning), a user name or uid[:gid] for all, or root (no isolation)", func(c *Config, v string) error {
		return parseSandboxUser(&c.Local.SandboxUser, v)
	}},
	{"LOCAL_SANDBOX_UIDS", "1000000-1099999", "local sandboxes: range of user ids LOCAL_SANDBOX_USER=auto hands out", func(c *Config, v string) error {
		return parseUIDRange(&c.Local.UIDFirst, &c.Local.UIDLast, v)
	}},
	{"LOCAL_SANDBOX_UID_REGISTRY", "/var/lib/lap/sandbox-uids", "local sandboxes: machine-wide directory recording which user id LOCAL_SANDBOX_USER=auto gave to which workspace", func(c *Config, v string) error {
		return parseAbsPath(&c.Local.UIDRegistry, v)
	}},
	{"LOCAL_MAX_OPEN_FILES", "4096", "local sandboxes: open-file limit (RLIMIT_NOFILE) of every harness", func(c *Config, v string) error {
		return parseInt(&c.Local.MaxOpenFiles, v, 64, 1<<20)
	}},
	{"LOCAL_MAX_PROCESSES", "1024", "local sandboxes: process and thread limit (RLIMIT_NPROC) of each sandbox's user id (LOCAL_SANDBOX_USER=auto)", func(c *Config, v string) error {
		return parseInt(&c.Local.MaxProcesses, v, 32, 1<<20)
	}},
	{"LOCAL_LOG_MAX_BYTES", "8MiB", "local sandboxes: output kept per harness (older output is dropped, the tail kept); e.g. 512KiB, 8MiB", func(c *Config, v string) error {
		return parseSize(&c.Local.LogMaxBytes, v, 4<<10)
	}},
	{"LOCAL_SANDBOX_PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "local sandboxes: PATH of harnesses and their tools", func(c *Config, v string) error {
		return nonEmpty(&c.Local.Path, v)
	}},
}

// parseSandboxUser accepts auto, root, a user name or uid[:gid]. Whether
// a name exists is checked by the backend, which is the one to use it.
func parseSandboxUser(dst *string, v string) error {
	if v == "" || strings.ContainsAny(v, " \t/") {
		return want("auto, isolated, root, a user name or uid[:gid]")
	}
	if uid, gid, ok := strings.Cut(v, ":"); ok {
		if _, err := strconv.ParseUint(uid, 10, 32); err != nil {
			return want("uid:gid as two numbers, e.g. 65534:65534")
		}
		if _, err := strconv.ParseUint(gid, 10, 32); err != nil {
			return want("uid:gid as two numbers, e.g. 65534:65534")
		}
	}
	*dst = v
	return nil
}

// parseUIDRange accepts first-last with 1000 ≤ first ≤ last < 2³²−1, so
// the range stays clear of system accounts and of the invalid id −1.
func parseUIDRange(first, last *int, v string) error {
	const bad = want("a range of user ids first-last, e.g. 1000000-1099999, from 1000 up to 4294967294")
	a, b, ok := strings.Cut(v, "-")
	if !ok {
		return bad
	}
	lo, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 32)
	hi, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 32)
	if err1 != nil || err2 != nil || lo < 1000 || lo > hi || hi >= 1<<32-1 {
		return bad
	}
	*first, *last = int(lo), int(hi)
	return nil
}

// parseAbsPath accepts an absolute file path.
func parseAbsPath(dst *string, v string) error {
	if !filepath.IsAbs(v) {
		return want("an absolute path")
	}
	*dst = filepath.Clean(v)
	return nil
}

// sizeUnits are the suffixes parseSize accepts, longest first within a
// unit so "MiB" is not read as "B" after "Mi".
var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"GiB", 1 << 30}, {"GB", 1 << 30}, {"G", 1 << 30},
	{"MiB", 1 << 20}, {"MB", 1 << 20}, {"M", 1 << 20},
	{"KiB", 1 << 10}, {"KB", 1 << 10}, {"K", 1 << 10},
}

// parseSize accepts a byte count with an optional KiB/MiB/GiB (or K/M/G,
// KB/MB/GB, all powers of 1024) suffix, at least min.
func parseSize(dst *int64, v string, min int64) error {
	s, mult := strings.TrimSpace(v), int64(1)
	for _, u := range sizeUnits {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult || n*mult < min {
		return want(fmt.Sprintf("a size of at least %d bytes, e.g. 512KiB or 8MiB", min))
	}
	*dst = n * mult
	return nil
}
