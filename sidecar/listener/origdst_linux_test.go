package listener

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOriginalDestination redirects connections to an address that does
// not exist (192.0.2.10:80, [2001:db8::10]:80, beyond a veth pair) to a listener, in a network
// namespace it creates, and checks the listener recovers that address;
// a connection made to the listener directly has none.
func TestOriginalDestination(t *testing.T) {
	ns := newVethNetns(t)

	for _, tc := range []struct {
		network, listen, target, iptables string
	}{
		{"tcp4", "127.0.0.1:0", "192.0.2.10:80", "iptables"},
		{"tcp6", "[::1]:0", "[2001:db8::10]:80", "ip6tables"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			if _, err := exec.LookPath(tc.iptables); err != nil {
				if os.Getenv("SIDEMESH_REQUIRE_NETNS") != "" {
					t.Fatalf("no %s, and make test requires the interception tests to run", tc.iptables)
				}
				t.Skipf("no %s", tc.iptables)
			}
			var ln net.Listener
			ns.do(func() (err error) { ln, err = net.Listen(tc.network, tc.listen); return err })
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			host, tport, _ := net.SplitHostPort(tc.target)
			ns.run(tc.iptables, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", host, "--dport", tport,
				"-j", "REDIRECT", "--to-ports", strconv.Itoa(port))

			check := func(dial string) (netip.AddrPort, error) {
				var c net.Conn
				ns.do(func() (err error) { c, err = net.DialTimeout(tc.network, dial, 2*time.Second); return err })
				defer c.Close()
				s, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				return OriginalDestination(s)
			}
			got, err := check(tc.target)
			if err != nil || got != netip.MustParseAddrPort(tc.target) {
				t.Errorf("redirected connection: original destination = %v, %v; want %s", got, err, tc.target)
			}
			if got, err := check(ln.Addr().String()); !errors.Is(err, ErrNoOriginalDestination) {
				t.Errorf("direct connection: original destination = %v, %v; want ErrNoOriginalDestination", got, err)
			}
		})
	}
}

// testNetns is a network namespace made for one test.
type testNetns struct {
	t    *testing.T
	name string
}

// newTestNetns creates a namespace, removed when the test ends. Without
// root or iproute2 it skips, unless SIDEMESH_REQUIRE_NETNS is set (make
// test, which CI runs as root, sets it): then it fails.
func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	need := func(why string) {
		if os.Getenv("SIDEMESH_REQUIRE_NETNS") != "" {
			t.Fatalf("network namespaces are needed (%s): run as root with iproute2 and iptables", why)
		}
		t.Skipf("network namespaces unavailable (%s); make test requires them", why)
	}
	if os.Geteuid() != 0 {
		need("not root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		need("no ip command (iproute2)")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		need("no iptables")
	}
	b := make([]byte, 3)
	rand.Read(b)
	n := &testNetns{t: t, name: "smod" + hex.EncodeToString(b)}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	return n
}

// newVethNetns is newTestNetns with loopback up and a veth pair, d0
// holding 192.0.2.1/24 and 2001:db8::1/64: the addresses beyond it
// (192.0.2.10, 2001:db8::10) route out of d0 and exist nowhere, so a
// connection to them arrives only where a REDIRECT rule sends it.
func newVethNetns(t *testing.T) *testNetns {
	t.Helper()
	ns := newTestNetns(t)
	ns.run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	ns.run("ip", "link", "set", "d1", "up")
	ns.run("ip", "addr", "add", "192.0.2.1/24", "dev", "d0")
	ns.run("ip", "addr", "add", "2001:db8::1/64", "dev", "d0", "nodad")
	ns.run("ip", "link", "set", "d0", "up")
	ns.run("ip", "link", "set", "lo", "up")
	return ns
}

// run runs a command inside the namespace.
func (n *testNetns) run(name string, args ...string) {
	n.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// do calls f on a thread inside the namespace: sockets it creates stay
// in the namespace.
func (n *testNetns) do(f func() error) {
	n.t.Helper()
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		n.t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open(filepath.Join("/run/netns", n.name))
	if err != nil {
		n.t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		n.t.Fatalf("setns %s: %v", n.name, err)
	}
	ferr := f()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// This thread is in the wrong namespace now: let it die with
		// the goroutine rather than serve others.
		n.t.Fatalf("setns back: %v", err)
	}
	runtime.UnlockOSThread()
	if ferr != nil {
		n.t.Fatal(ferr)
	}
}
