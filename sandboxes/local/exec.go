package local

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Harnesses are started through lapd's own executable run under the name
// execName: it lowers its resource limits and then replaces itself with
// the harness (execve keeps the pid, the start time and the environment).
// Limits set this way hold before the harness runs a single instruction.
// Setting them from lapd after the start (prlimit) would leave a window
// and, for a harness of another user id, needs CAP_SYS_RESOURCE, which
// containers commonly drop.
//
// The wrapper runs from this package's init, so every binary that links
// the local backend (lapd, and the tests of any package using it) can
// serve as it without help from its main.
const execName = "lap-sandbox-exec"

// harnessFD names the harness executable lapd passes the wrapper as its
// fd 3.
const harnessFD = "/proc/self/fd/3"

// selfExe is lapd's own executable; the link stays valid even if the file
// was replaced on disk since lapd started.
const selfExe = "/proc/self/exe"

func init() {
	if len(os.Args) > 0 && os.Args[0] == execName {
		os.Exit(execWrapper(os.Args[1:]))
	}
}

// wrapperArgs is the argv that makes lapd's executable apply the limits
// and execute the harness (fd 3, named path) with args: nproc 0 leaves
// RLIMIT_NPROC as it is.
func wrapperArgs(nofile, nproc int, path string, args []string) []string {
	return append([]string{execName, strconv.Itoa(nofile), strconv.Itoa(nproc), path}, args...)
}

// execWrapper is the wrapper's whole life: args are nofile, nproc, the
// harness's path and its arguments. It returns only on failure, after
// telling why on stderr (the sandbox's log).
func execWrapper(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, execName+": "+format+"\n", a...)
		return 127
	}
	if len(args) < 3 {
		return fail("usage: %s nofile nproc path [arg…]", execName)
	}
	nofile, err1 := strconv.ParseUint(args[0], 10, 64)
	nproc, err2 := strconv.ParseUint(args[1], 10, 64)
	if err1 != nil || err2 != nil {
		return fail("bad limits %q %q", args[0], args[1])
	}
	// syscall.Setrlimit, not unix's: it also stops Go from restoring its
	// original open-file limit at exec.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fail("get open-file limit: %v", err)
	}
	n := min(nofile, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
		return fail("limit open files to %d: %v", n, err)
	}
	if nproc > 0 {
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NPROC, &lim); err != nil {
			return fail("get process limit: %v", err)
		}
		n := min(nproc, lim.Max)
		if err := unix.Setrlimit(unix.RLIMIT_NPROC, &unix.Rlimit{Cur: n, Max: n}); err != nil {
			return fail("limit processes to %d: %v", n, err)
		}
	}
	// The harness is fd 3, opened by lapd; path is only its name. The
	// descriptor stays open in the harness: an interpreted harness (#!)
	// is read by its interpreter through it.
	path := args[2]
	err := syscall.Exec(harnessFD, append([]string{path}, args[3:]...), os.Environ())
	return fail("exec %s: %v", path, err)
}
