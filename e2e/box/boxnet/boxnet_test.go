package boxnet_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/e2e/box/boxnet"
	"lap.dev/lap/internal/waitfor"
)

func TestHostsFile(t *testing.T) {
	t.Parallel()
	got := string(boxnet.HostsFile(map[string]netip.Addr{
		"b.svc":       netip.MustParseAddr("198.18.0.3"),
		"a.svc":       netip.MustParseAddr("198.18.0.3"),
		"autoscaler":  netip.MustParseAddr("198.18.0.2"),
		"other.local": netip.MustParseAddr("198.18.0.10"),
	}))
	want := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"198.18.0.2\tautoscaler\n198.18.0.3\ta.svc b.svc\n198.18.0.10\tother.local\n"
	assert.Equal(t, want, got)
}

// TestNetworkAndSweep builds a box network, reaches a namespace from the
// host, then leaves it as a crashed box would — slot lock released,
// namespaces, link and a process left — and checks that the next Open
// sweeps all of it.
func TestNetworkAndSweep(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	n, err := boxnet.Open(ctx, log)
	require.NoError(t, err)
	t.Cleanup(func() { _ = n.Close(context.Background()) })
	assert.True(t, n.Prefix.Contains(n.HostIP))
	assert.True(t, boxnet.Range.Contains(n.HostIP), "%s in %s", n.HostIP, boxnet.Range)
	assert.Equal(t, boxnet.Bits, n.Prefix.Bits())

	a, err := n.AddNamespace(ctx, "a", map[string]netip.Addr{"peer.test": n.HostIP})
	require.NoError(t, err)
	b, err := n.AddNamespace(ctx, "b", nil)
	require.NoError(t, err)
	assert.NotEqual(t, a.IP, b.IP)
	assert.True(t, n.Prefix.Contains(a.IP) && n.Prefix.Contains(b.IP))
	hosts, err := os.ReadFile("/etc/netns/" + a.Name + "/hosts")
	require.NoError(t, err)
	assert.Contains(t, string(hosts), n.HostIP.String()+"\tpeer.test")

	// A process in namespace a reaches a server on the host address:
	// bash's /dev/tcp dials through the veth and the hub's bridge.
	ln, err := net.Listen("tcp", net.JoinHostPort(n.HostIP.String(), "0"))
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", a.Name, "bash", "-c",
		"exec 3<>/dev/tcp/peer.test/"+strconv.Itoa(port)).CombinedOutput()
	require.NoError(t, err, "%s", out)
	select {
	case from := <-accepted:
		assert.Equal(t, a.IP.String(), from, "the connection comes from the namespace's address")
	case <-ctx.Done():
		t.Fatal("no connection from the namespace")
	}

	// A "crashed" box: a process marked with the slot, in namespace b.
	sleeper := exec.Command("ip", "netns", "exec", b.Name, "sleep", "600")
	sleeper.Env = append(os.Environ(), boxnet.SlotEnv+"="+strconv.Itoa(n.Slot))
	require.NoError(t, sleeper.Start())
	reaped := make(chan struct{})
	go func() { _ = sleeper.Wait(); close(reaped) }()
	// The process is seen once `ip netns exec` has become sleep; on a
	// busy machine its /proc entry can be unreadable for a moment while
	// it execs, so the listing is asked until it shows the process.
	var joined string
	waitfor.Cond(t, "the marked process among the leftovers", func() bool {
		left, err := boxnet.Leftovers(ctx, n.Slot)
		require.NoError(t, err)
		joined = strings.Join(left, "\n")
		return strings.Contains(joined, "process")
	})
	for _, want := range []string{"netns " + a.Name, "netns " + b.Name, "link lbx", "address", "process"} {
		assert.Contains(t, joined, want)
	}

	// Release the slot as a dead process would, and start over.
	slot := n.Slot
	crash(t, n)
	m, err := boxnet.Open(ctx, log)
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	select {
	case <-reaped:
	case <-ctx.Done():
		t.Fatal("the leftover process was not killed")
	}
	if m.Slot != slot {
		left, err := boxnet.Leftovers(ctx, slot)
		require.NoError(t, err)
		assert.Empty(t, left, "the crashed slot is swept")
	}
	require.NoError(t, m.Close(ctx))
	left, err := boxnet.Leftovers(ctx, m.Slot)
	require.NoError(t, err)
	assert.Empty(t, left, "Close leaves nothing")
}

// crash drops the slot lock without cleaning up, as the kernel does for a
// killed box.
func crash(t *testing.T, n *boxnet.Net) {
	t.Helper()
	boxnet.ReleaseForTest(n)
}
