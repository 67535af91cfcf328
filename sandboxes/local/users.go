package local

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"lap.dev/lap/config"
)

// userMode is how harnesses get their user id.
type userMode int

const (
	// asLapd: harnesses run as lapd's own user (lapd is not root, or
	// LOCAL_SANDBOX_USER=root).
	asLapd userMode = iota
	// asShared: every harness runs as one configured user.
	asShared
	// perSandbox: every sandbox gets a user id of its own, so sandboxes
	// can neither read each other's workspaces nor signal or inspect
	// each other's processes (/proc/<pid>/environ holds the secrets).
	perSandbox
)

// users hands out the user ids harnesses run as.
//
// With a user id per sandbox, the ids are claimed in a registry shared by
// every lapd on the machine (LOCAL_SANDBOX_UID_REGISTRY): one symlink per
// id, named by the id and pointing at the workspace that owns it, made
// under an flock of the registry. A claim is stale, and its id free again,
// once its workspace is gone or no longer owned by that id, so a data
// directory removed without destroying its sandboxes leaks nothing. An
// id that still runs a process, or that names an account in the user
// database, is never handed out.
type users struct {
	mode        userMode
	uid, gid    int    // asShared
	first, last int    // perSandbox
	registry    string // perSandbox
}

// newUsers decides from cfg and lapd's own user id how harnesses run.
func newUsers(cfg config.LocalConfig, euid int) (*users, error) {
	u := &users{mode: asLapd, uid: -1, gid: -1, first: cfg.UIDFirst, last: cfg.UIDLast, registry: cfg.UIDRegistry}
	name := cfg.SandboxUser
	if euid != 0 {
		if name != "auto" && name != "isolated" && name != "root" && name != "" {
			return nil, fmt.Errorf("LOCAL_SANDBOX_USER=%s: switching users needs lapd to run as root", name)
		}
		return u, nil
	}
	switch name {
	case "root":
		return u, nil
	case "auto", "isolated", "":
		if u.first <= 0 || u.last < u.first {
			return nil, fmt.Errorf("LOCAL_SANDBOX_UIDS: empty range %d-%d", u.first, u.last)
		}
		if !filepath.IsAbs(u.registry) {
			return nil, fmt.Errorf("LOCAL_SANDBOX_UID_REGISTRY=%q: want an absolute path", u.registry)
		}
		if err := os.MkdirAll(u.registry, 0o700); err != nil {
			return nil, fmt.Errorf("LOCAL_SANDBOX_UID_REGISTRY: %w", err)
		}
		u.mode = perSandbox
		return u, nil
	}
	uid, gid, err := lookupUser(name)
	if err != nil {
		return nil, fmt.Errorf("LOCAL_SANDBOX_USER=%s: %w", name, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("LOCAL_SANDBOX_USER=%s: that is root; say root to run harnesses unisolated", name)
	}
	u.mode, u.uid, u.gid = asShared, uid, gid
	return u, nil
}

// lookupUser resolves a user name, a uid or uid:gid.
func lookupUser(name string) (uid, gid int, err error) {
	if a, b, ok := strings.Cut(name, ":"); ok {
		uid, err1 := strconv.Atoi(a)
		gid, err2 := strconv.Atoi(b)
		if err := errors.Join(err1, err2); err != nil || uid < 0 || gid < 0 {
			return 0, 0, fmt.Errorf("want uid:gid as two numbers")
		}
		return uid, gid, nil
	}
	var u *user.User
	if n, err := strconv.Atoi(name); err == nil {
		if u, err = user.LookupId(name); err != nil {
			return n, n, nil // a bare uid without an account: its own group id
		}
	} else if u, err = user.Lookup(name); err != nil {
		return 0, 0, err
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("user %s has non-numeric ids %s:%s", name, u.Uid, u.Gid)
	}
	return uid, gid, nil
}

// switches reports whether harnesses run as another user than lapd.
func (u *users) switches() bool { return u.mode != asLapd }

// makeWorkspace creates the workspace directory (0700), owned by the
// user its harness will run as, and returns that user: -1, -1 for lapd's
// own.
func (u *users) makeWorkspace(workspace string) (uid, gid int, err error) {
	if u.mode != perSandbox {
		if err := os.Mkdir(workspace, 0o700); err != nil {
			return 0, 0, fmt.Errorf("create workspace: %w", err)
		}
		if u.mode == asShared {
			if err := os.Lchown(workspace, u.uid, u.gid); err != nil {
				return 0, 0, fmt.Errorf("create workspace: %w", err)
			}
		}
		return u.uid, u.gid, nil
	}
	unlock, err := u.lock()
	if err != nil {
		return 0, 0, err
	}
	defer unlock()
	busy := processUIDs()
	for n := u.first; n <= u.last; n++ {
		if u.claimed(n) || busy[n] {
			continue
		}
		// Skip ids of real accounts, in case the range covers some.
		if _, err := user.LookupId(strconv.Itoa(n)); err == nil {
			continue
		}
		if err := os.Mkdir(workspace, 0o700); err != nil {
			return 0, 0, fmt.Errorf("create workspace: %w", err)
		}
		if err := os.Lchown(workspace, n, n); err != nil {
			os.Remove(workspace)
			return 0, 0, fmt.Errorf("create workspace: %w", err)
		}
		if err := os.Symlink(workspace, u.claimPath(n)); err != nil {
			os.Remove(workspace)
			return 0, 0, fmt.Errorf("claim user id %d: %w", n, err)
		}
		return n, n, nil
	}
	return 0, 0, fmt.Errorf("no free user id in LOCAL_SANDBOX_UIDS %d-%d", u.first, u.last)
}

// reclaim makes sure uid is claimed for workspace again, e.g. after the
// registry was wiped. It fails if another workspace holds a valid claim.
func (u *users) reclaim(uid int, workspace string) error {
	if u.mode != perSandbox || uid < 0 {
		return nil
	}
	unlock, err := u.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if target, err := os.Readlink(u.claimPath(uid)); err == nil && target == workspace {
		return nil
	}
	if u.claimed(uid) {
		target, _ := os.Readlink(u.claimPath(uid))
		return fmt.Errorf("user id %d of %s is claimed by %s", uid, workspace, target)
	}
	return os.Symlink(workspace, u.claimPath(uid))
}

// release gives up workspace's claim on uid.
func (u *users) release(uid int, workspace string) {
	if u.mode != perSandbox || uid < 0 {
		return
	}
	unlock, err := u.lock()
	if err != nil {
		return
	}
	defer unlock()
	if target, err := os.Readlink(u.claimPath(uid)); err == nil && target == workspace {
		os.Remove(u.claimPath(uid))
	}
}

func (u *users) claimPath(uid int) string { return filepath.Join(u.registry, strconv.Itoa(uid)) }

// claimed reports whether uid has a valid claim, removing a stale one.
// The registry lock must be held.
func (u *users) claimed(uid int) bool {
	target, err := os.Readlink(u.claimPath(uid))
	if err != nil {
		return false
	}
	var st syscall.Stat_t
	if syscall.Lstat(target, &st) == nil && int(st.Uid) == uid {
		return true
	}
	os.Remove(u.claimPath(uid))
	return false
}

// lock takes the registry's flock, which excludes other lapds and other
// goroutines of this one (each call opens its own file description).
func (u *users) lock() (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(u.registry, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock user id registry: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock user id registry: %w", err)
	}
	return func() { f.Close() }, nil
}

// processUIDs returns the user ids that own a process now.
func processUIDs() map[int]bool {
	uids := map[int]bool{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name(), &st) == nil {
			uids[int(st.Uid)] = true
		}
	}
	return uids
}

// credential is the SysProcAttr credential for uid, gid, or nil to run
// as lapd. Supplementary groups are cleared.
func credential(uid, gid int) *syscall.Credential {
	if uid < 0 {
		return nil
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
}

// checkReachable makes sure a harness running as uid, gid can reach
// directories under root: root itself is made 0711 and its parent (lapd's
// data directory) gets search permission for others if it lacks it —
// search only, nothing there becomes readable; every further ancestor
// must already allow it.
func checkReachable(root, userSetting string, uid, gid int) error {
	if err := os.Chmod(root, sandboxDirPerm); err != nil {
		return err
	}
	parent := filepath.Dir(root)
	if fi, err := os.Stat(parent); err == nil && !searchable(fi, uid, gid) {
		if err := os.Chmod(parent, fi.Mode().Perm()|0o001); err != nil {
			return err
		}
	}
	return checkSearchable(parent, "their workspaces in "+root+":", userSetting, uid, gid)
}

// checkSearchable makes sure uid, gid may enter dir and every ancestor of
// it; what names what is behind dir in the error.
func checkSearchable(dir, what, userSetting string, uid, gid int) error {
	for ; ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if !searchable(fi, uid, gid) {
			return fmt.Errorf("harnesses run as their own users (LOCAL_SANDBOX_USER=%s), which cannot reach %s %s is %v; "+
				"give it search permission (chmod o+x %s), put LAP_DATA_DIR elsewhere (e.g. /var/lib/lap), or set LOCAL_SANDBOX_USER=root to run harnesses without isolation",
				userSetting, what, dir, fi.Mode().Perm(), dir)
		}
		if next := filepath.Dir(dir); next == dir {
			return nil
		}
	}
}

// searchable reports whether uid, gid (with no supplementary groups) may
// enter the directory fi.
func searchable(fi os.FileInfo, uid, gid int) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	perm := fi.Mode().Perm()
	switch {
	case int(st.Uid) == uid:
		return perm&0o100 != 0
	case int(st.Gid) == gid:
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}
