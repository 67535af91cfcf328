// Package boxnet is the network of Knative in a box: a private layer-2
// segment of network namespaces, one per Knative component and one per pod,
// with addresses from 198.18.0.0/15 (RFC 2544's benchmarking range, which
// no real network routes).
//
// Each box takes a slot, a /20 of that range, so boxes of parallel test
// packages never meet. Its namespaces hang off a bridge that lives in a
// "hub" namespace of its own; the host joins the segment through a single
// veth pair whose host end carries the box's host address (.1 of the slot).
// Nothing else on the host changes: no bridge, route or sysctl in the
// host's namespace, no forwarding, no default route inside the box — a pod
// reaches its own segment and the host address, nothing more.
//
// Every name the package creates starts with "lbx<slot>", and a slot is
// held by an flock on a file under /run/lap-box, which the kernel releases
// when the holder dies. Open sweeps whatever a crashed box left in the
// slots nobody holds: processes, namespaces, veths, /etc/netns files.
package boxnet

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// Slots is how many boxes can run on one machine at once.
	Slots = 32
	// Bits is the prefix length of a slot's segment.
	Bits = 20
	// blockSize is the number of addresses of one slot.
	blockSize = 1 << (32 - Bits)
	// firstDynamic is the first host offset handed to namespaces; the
	// ones below are for the box's fixed parts (offset 1: the host).
	firstDynamic = 2
	// SlotEnv is set in the environment of every process the box starts
	// (to the slot number), so that a sweep finds them by /proc/*/environ.
	SlotEnv = "LAP_BOX_SLOT"
)

// Range is the address range boxes use.
var Range = netip.MustParsePrefix("198.18.0.0/15")

// LockDir holds the slot locks.
var LockDir = "/run/lap-box"

// Net is one box's network. Its methods are safe for concurrent use.
type Net struct {
	// Slot is the box's slot, 0 ≤ Slot < Slots.
	Slot int
	// HostIP is the host's address on the box's segment: the apiserver,
	// the kubelet and lapd listen there, and pods reach it.
	HostIP netip.Addr
	// Prefix is the box's segment.
	Prefix netip.Prefix

	log  *slog.Logger
	lock *os.File

	mu     sync.Mutex
	used   map[int]string // host offset → namespace
	next   int
	closed bool
}

// Namespace is a network namespace on the box's segment.
type Namespace struct {
	// Name is the namespace's name (`ip netns`).
	Name string
	// IP is its address on eth0.
	IP     netip.Addr
	offset int
}

// Check reports what this machine lacks to run a box: root and iproute2.
func Check() error {
	if os.Geteuid() != 0 {
		return errors.New("knative in a box needs root: it creates network namespaces and veth pairs (run the tests as root; CI does)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("knative in a box needs the ip command (Debian: apt-get install iproute2; .ci/run installs it)")
	}
	return nil
}

// Open takes a free slot, sweeps the leftovers of crashed boxes from
// every free slot, and builds the hub and the host's link.
func Open(ctx context.Context, log *slog.Logger) (*Net, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(LockDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", LockDir, err)
	}
	if err := SweepFree(ctx, log); err != nil {
		return nil, err
	}
	var n *Net
	for slot := range Slots {
		f, ok, err := tryLock(slot)
		if err != nil {
			return nil, err
		}
		if ok {
			n = newNet(slot, f, log)
			break
		}
	}
	if n == nil {
		return nil, fmt.Errorf("all %d box slots are taken (see %s)", Slots, LockDir)
	}
	// A leftover of this very slot, from a crash between the sweep and
	// our lock, is swept now that we hold it.
	if err := sweepSlot(ctx, n.Slot, log); err != nil {
		n.unlock()
		return nil, err
	}
	if err := n.buildHub(ctx); err != nil {
		_ = sweepSlot(context.WithoutCancel(ctx), n.Slot, log)
		n.unlock()
		return nil, err
	}
	return n, nil
}

func newNet(slot int, lock *os.File, log *slog.Logger) *Net {
	base := Range.Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(slot * blockSize)
	prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), Bits)
	return &Net{
		Slot:   slot,
		Prefix: prefix,
		HostIP: prefix.Addr().Next(),
		log:    log,
		lock:   lock,
		used:   map[int]string{},
		next:   firstDynamic,
	}
}

// prefixName is the start of every name of slot's objects.
func prefixName(slot int) string { return "lbx" + strconv.Itoa(slot) }

// hubName is the namespace holding slot's bridge.
func hubName(slot int) string { return prefixName(slot) + "-hub" }

// hostLink is slot's one interface in the host's namespace.
func hostLink(slot int) string { return prefixName(slot) }

func (n *Net) buildHub(ctx context.Context) error {
	hub, link := hubName(n.Slot), hostLink(n.Slot)
	steps := [][]string{
		{"netns", "add", hub},
		{"-n", hub, "link", "set", "lo", "up"},
		{"-n", hub, "link", "add", "br0", "type", "bridge"},
		{"-n", hub, "link", "set", "br0", "up"},
		{"link", "add", link, "type", "veth", "peer", "name", "uplink", "netns", hub},
		{"-n", hub, "link", "set", "uplink", "master", "br0", "up"},
		{"addr", "add", netip.PrefixFrom(n.HostIP, Bits).String(), "dev", link},
		{"link", "set", link, "up"},
	}
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			return fmt.Errorf("build the box network (slot %d): %w", n.Slot, err)
		}
	}
	return nil
}

// AddNamespace creates a namespace on the segment with a fresh address.
// name must be unique in the box; hosts, if not nil, become the
// namespace's /etc/hosts (`ip netns exec` mounts /etc/netns/NAME/hosts),
// a map of names to the address each resolves to.
func (n *Net) AddNamespace(ctx context.Context, name string, hosts map[string]netip.Addr) (Namespace, error) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return Namespace{}, errors.New("box network is closed")
	}
	off, err := n.allocate()
	if err != nil {
		n.mu.Unlock()
		return Namespace{}, err
	}
	ns := Namespace{Name: prefixName(n.Slot) + "-" + name, IP: n.addr(off), offset: off}
	n.used[off] = ns.Name
	n.mu.Unlock()

	if err := n.createNamespace(ctx, ns, hosts); err != nil {
		_ = n.RemoveNamespace(context.WithoutCancel(ctx), ns)
		return Namespace{}, err
	}
	return ns, nil
}

func (n *Net) createNamespace(ctx context.Context, ns Namespace, hosts map[string]netip.Addr) error {
	if hosts != nil {
		dir := filepath.Join("/etc/netns", ns.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts"), HostsFile(hosts), 0o644); err != nil {
			return err
		}
	}
	peer := "v" + strconv.Itoa(ns.offset)
	steps := [][]string{
		{"netns", "add", ns.Name},
		{"-n", ns.Name, "link", "set", "lo", "up"},
		{"-n", ns.Name, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", hubName(n.Slot)},
		{"-n", hubName(n.Slot), "link", "set", peer, "master", "br0", "up"},
		{"-n", ns.Name, "addr", "add", netip.PrefixFrom(ns.IP, Bits).String(), "dev", "eth0"},
		{"-n", ns.Name, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			return fmt.Errorf("create namespace %s: %w", ns.Name, err)
		}
	}
	return nil
}

// HostsFile renders an /etc/hosts: localhost, then one line per address.
func HostsFile(hosts map[string]netip.Addr) []byte {
	byAddr := map[netip.Addr][]string{}
	for name, a := range hosts {
		byAddr[a] = append(byAddr[a], name)
	}
	addrs := make([]netip.Addr, 0, len(byAddr))
	for a := range byAddr {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	var b bytes.Buffer
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, a := range addrs {
		names := byAddr[a]
		slices.Sort(names)
		fmt.Fprintf(&b, "%s\t%s\n", a, strings.Join(names, " "))
	}
	return b.Bytes()
}

// RemoveNamespace kills every process left in the namespace, deletes it
// (and with it its veth pair) and frees its address. Removing what is
// gone is no error.
func (n *Net) RemoveNamespace(ctx context.Context, ns Namespace) error {
	err := removeNamespace(ctx, ns.Name)
	n.mu.Lock()
	delete(n.used, ns.offset)
	n.mu.Unlock()
	return err
}

func removeNamespace(ctx context.Context, name string) error {
	var errs []error
	if exists, err := namespaceExists(ctx, name); err != nil {
		errs = append(errs, err)
	} else if exists {
		if err := killNamespace(ctx, name); err != nil {
			errs = append(errs, err)
		}
		if err := ip(ctx, "netns", "del", name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(filepath.Join("/etc/netns", name)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killNamespace SIGKILLs every process in the namespace and waits (a
// bounded while) until none is left; a namespace with processes in it
// outlives `ip netns del`.
func killNamespace(ctx context.Context, name string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := namespacePids(ctx, name)
		if err != nil || len(pids) == 0 {
			return err
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in namespace %s survive SIGKILL", pids, name)
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// namespacePids lists the live processes in a namespace; zombies, which
// only wait for their parent to reap them, are not counted.
func namespacePids(ctx context.Context, name string) ([]int, error) {
	out, err := ipOutput(ctx, "netns", "pids", name)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil || zombie(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // gone
	}
	// The state follows the command name in parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

func namespaceExists(ctx context.Context, name string) (bool, error) {
	names, err := namespaces(ctx)
	if err != nil {
		return false, err
	}
	return slices.Contains(names, name), nil
}

// namespaces lists the names of every network namespace `ip netns` knows.
func namespaces(ctx context.Context) ([]string, error) {
	out, err := ipOutput(ctx, "netns", "list")
	if err != nil {
		return nil, err
	}
	var names []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}

func (n *Net) allocate() (int, error) {
	for range blockSize {
		off := n.next
		n.next++
		if n.next >= blockSize-1 { // the last address is the broadcast
			n.next = firstDynamic
		}
		if _, taken := n.used[off]; !taken {
			return off, nil
		}
	}
	return 0, fmt.Errorf("box slot %d has no free address", n.Slot)
}

func (n *Net) addr(off int) netip.Addr {
	a := n.Prefix.Addr()
	for range off {
		a = a.Next()
	}
	return a
}

// Close removes everything of the box's network — every namespace (and
// the processes still in them), the hub, the host's link — and gives the
// slot back.
func (n *Net) Close(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	err := sweepSlot(ctx, n.Slot, n.log)
	n.unlock()
	return err
}

func (n *Net) unlock() {
	if n.lock != nil {
		_ = syscall.Flock(int(n.lock.Fd()), syscall.LOCK_UN)
		_ = n.lock.Close()
		n.lock = nil
	}
}

// tryLock takes slot's lock without waiting.
func tryLock(slot int) (*os.File, bool, error) {
	path := filepath.Join(LockDir, fmt.Sprintf("slot-%d.lock", slot))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("open slot lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = fmt.Fprintf(f, "%d\n", os.Getpid())
	return f, true, nil
}

var slotName = regexp.MustCompile(`^lbx([0-9]+)(-|$)`)

// Leftovers lists what of slot exists on this machine: namespaces, the
// host link, host addresses in the slot's segment, /etc/netns
// directories and processes marked with the slot. A box that was closed,
// or swept, leaves none.
func Leftovers(ctx context.Context, slot int) ([]string, error) {
	var out []string
	names, err := namespaces(ctx)
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		if m := slotName.FindStringSubmatch(name); m != nil && m[1] == strconv.Itoa(slot) {
			out = append(out, "netns "+name)
		}
	}
	links, err := ipOutput(ctx, "-o", "link", "show")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if name == hostLink(slot) {
				out = append(out, "link "+name)
			}
		}
	}
	n := newNet(slot, nil, nil)
	addrs, err := ipOutput(ctx, "-o", "addr", "show", "to", n.Prefix.String())
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(strings.TrimSpace(addrs), "\n") {
		if l != "" {
			out = append(out, "address "+strings.Join(strings.Fields(l)[1:4], " "))
		}
	}
	dirs, _ := filepath.Glob(filepath.Join("/etc/netns", prefixName(slot)+"-*"))
	for _, d := range dirs {
		out = append(out, "dir "+d)
	}
	for _, pid := range slotProcesses(slot) {
		out = append(out, fmt.Sprintf("process %d (%s)", pid, cmdline(pid)))
	}
	return out, nil
}

// SweepFree sweeps every slot that no running box holds but that has
// leftovers.
func SweepFree(ctx context.Context, log *slog.Logger) error {
	dirty, err := dirtySlots(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, slot := range dirty {
		f, ok, err := tryLock(slot)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue // a live box
		}
		log.Info("sweeping leftovers of a crashed box", "slot", slot)
		errs = append(errs, sweepSlot(ctx, slot, log))
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}
	return errors.Join(errs...)
}

// dirtySlots lists the slots with namespaces, links, /etc/netns entries
// or processes on this machine.
func dirtySlots(ctx context.Context) ([]int, error) {
	seen := map[int]bool{}
	add := func(name string) {
		if m := slotName.FindStringSubmatch(name); m != nil {
			if s, err := strconv.Atoi(m[1]); err == nil && s < Slots {
				seen[s] = true
			}
		}
	}
	names, err := namespaces(ctx)
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		add(name)
	}
	links, err := ipOutput(ctx, "-o", "link", "show")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(links, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			add(name)
		}
	}
	dirs, _ := filepath.Glob("/etc/netns/lbx*")
	for _, d := range dirs {
		add(filepath.Base(d))
	}
	for slot := range slotsWithProcesses() {
		seen[slot] = true
	}
	out := make([]int, 0, len(seen))
	for s := range seen {
		out = append(out, s)
	}
	slices.Sort(out)
	return out, nil
}

// sweepSlot removes everything of slot: its processes, its namespaces,
// its host link, its /etc/netns entries.
func sweepSlot(ctx context.Context, slot int, log *slog.Logger) error {
	var errs []error
	for _, pid := range slotProcesses(slot) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	names, err := namespaces(ctx)
	if err != nil {
		return err
	}
	hub := hubName(slot)
	for _, name := range names {
		m := slotName.FindStringSubmatch(name)
		if m == nil || m[1] != strconv.Itoa(slot) || name == hub {
			continue
		}
		errs = append(errs, removeNamespace(ctx, name))
	}
	// The hub last: deleting it takes the host link's peer, and so the
	// host link, with it.
	errs = append(errs, removeNamespace(ctx, hub))
	if err := ip(ctx, "link", "del", hostLink(slot)); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		errs = append(errs, err)
	}
	dirs, _ := filepath.Glob(filepath.Join("/etc/netns", prefixName(slot)+"-*"))
	for _, d := range dirs {
		errs = append(errs, os.RemoveAll(d))
	}
	deadline := time.Now().Add(10 * time.Second)
	for pids := slotProcesses(slot); len(pids) > 0; pids = slotProcesses(slot) {
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("processes %v of box slot %d survive SIGKILL", pids, slot))
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			errs = append(errs, err)
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sweep box slot %d: %w", slot, err)
	}
	if log != nil {
		log.Debug("swept box slot", "slot", slot)
	}
	return nil
}

// slotProcesses lists the live processes whose environment marks them as
// slot's (SlotEnv), excluding this process.
func slotProcesses(slot int) []int { return slotsWithProcesses()[slot] }

// slotsWithProcesses maps each slot to the live processes marked with it.
func slotsWithProcesses() map[int][]int {
	out := map[int][]int{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	key := []byte(SlotEnv + "=")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			v, ok := bytes.CutPrefix(kv, key)
			if !ok {
				continue
			}
			if slot, err := strconv.Atoi(string(v)); err == nil && !zombie(pid) {
				out[slot] = append(out[slot], pid)
			}
			break
		}
	}
	return out
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// Exec returns the argv that runs argv inside namespace ns.
func Exec(ns string, argv ...string) []string {
	return append([]string{"ip", "netns", "exec", ns}, argv...)
}

func ip(ctx context.Context, args ...string) error {
	_, err := ipOutput(ctx, args...)
	return err
}

func ipOutput(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
