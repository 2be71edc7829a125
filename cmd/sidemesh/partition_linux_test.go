package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// netnsRequired makes a missing network-namespace capability (not root,
// no ip command) a failure rather than a skip: make test, which CI runs as
// root, sets it.
const netnsRequired = "SIDEMESH_REQUIRE_NETNS"

// lan is a set of network namespaces on one bridge, made for one test:
// host i is namespace <prefix>-<i> with 10.77.0.<i+1>/24 on eth0, its veth
// peer in the hub namespace's bridge. Nothing outside these namespaces is
// touched.
type lan struct {
	t      *testing.T
	prefix string
	hub    string
}

func newLAN(t *testing.T, hosts int) *lan {
	t.Helper()
	if os.Geteuid() != 0 {
		needNetns(t, "not root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		needNetns(t, "no ip command (iproute2)")
	}
	b := make([]byte, 3)
	rand.Read(b)
	l := &lan{t: t, prefix: "sm" + hex.EncodeToString(b)}
	l.hub = l.prefix + "-hub"
	t.Cleanup(l.remove)
	l.ip("netns", "add", l.hub)
	l.ip("-n", l.hub, "link", "add", "br0", "type", "bridge")
	l.ip("-n", l.hub, "link", "set", "br0", "up")
	for i := range hosts {
		ns := l.ns(i)
		l.ip("netns", "add", ns)
		l.ip("link", "add", l.port(i), "netns", l.hub, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip("-n", l.hub, "link", "set", l.port(i), "master", "br0", "up")
		l.ip("-n", ns, "addr", "add", l.addr(i)+"/24", "dev", "eth0")
		l.ip("-n", ns, "link", "set", "eth0", "up")
		l.ip("-n", ns, "link", "set", "lo", "up")
	}
	return l
}

func needNetns(t *testing.T, why string) {
	t.Helper()
	if os.Getenv(netnsRequired) != "" {
		t.Fatalf("network namespaces are needed (%s): run as root with iproute2", why)
	}
	t.Skipf("network namespaces unavailable (%s); make test requires them", why)
}

func (l *lan) ns(i int) string   { return fmt.Sprintf("%s-%d", l.prefix, i) }
func (l *lan) port(i int) string { return fmt.Sprintf("%sv%d", l.prefix, i) } // 10 bytes: names stop at 15
func (l *lan) addr(i int) string { return fmt.Sprintf("10.77.0.%d", i+1) }

func (l *lan) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// cut takes host i off the bridge (its packets are dropped), heal puts it
// back.
func (l *lan) cut(i int)  { l.ip("-n", l.hub, "link", "set", l.port(i), "down") }
func (l *lan) heal(i int) { l.ip("-n", l.hub, "link", "set", l.port(i), "up") }

func (l *lan) remove() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for line := range strings.Lines(string(out)) {
		if name, _, _ := strings.Cut(strings.TrimSpace(line), " "); strings.HasPrefix(name, l.prefix+"-") {
			exec.Command("ip", "netns", "del", name).Run()
		}
	}
}

// command returns cmd run inside host i's namespace.
func (l *lan) command(i int, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", l.ns(i), name}, args...)...)
}

// client returns an HTTP client whose connections are opened inside host
// i's namespace (a socket stays in the namespace it was created in).
func (l *lan) client(i int) *http.Client {
	ns := l.ns(i)
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return nil, err
		}
		defer self.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			return nil, err
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			return nil, fmt.Errorf("setns %s: %w", ns, err)
		}
		c, dialErr := (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			// This thread is in the wrong namespace now: never reuse it.
			runtime.Goexit()
		}
		return c, dialErr
	}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 4}}
}

// partitionLength is how long the test keeps host 3 cut off.
const partitionLength = 30 * time.Second

// member is a host of the partition test: an app that answers with its
// name and a sidemesh in front of it, in the pool with every other.
type member struct {
	i    int
	name string
	proc *exec.Cmd
	done chan struct{}
	log  string
}

// TestGossipPartition: four sidecars on four hosts in one gossip pool,
// each fronting an app of the service "echo". A client on host 0 sends
// through its sidecar all along. Host 3 is cut off: both sides keep
// serving (host 0 through the others, host 3 through itself). Host 2 is
// killed while host 3 is cut off, so host 3 still believes in it. The cut
// heals, after longer than memberlist alone would heal it: the pool
// merges back, host 3 is in rotation again, and nothing is sent to the
// dead host 2, which host 3's stale view must not revive.
func TestGossipPartition(t *testing.T) {
	l := newLAN(t, 4)
	dir := t.TempDir()
	key := keygen(t, dir, "gossip.key")
	app := filepath.Join(dir, "echo-app")
	if out, err := exec.Command("go", "build", "-o", app, "../../examples/catalog").CombinedOutput(); err != nil {
		t.Fatalf("building the example app: %v\n%s", err, out)
	}
	members := make([]*member, 4)
	for i := range members {
		members[i] = startMember(t, l, i, app, key)
	}
	clients := []*http.Client{l.client(0), l.client(3)}
	defer clients[0].CloseIdleConnections()
	defer clients[1].CloseIdleConnections()

	ask := func(c *http.Client) (string, error) {
		req, _ := http.NewRequest("GET", "http://127.0.0.1:15001/items", nil)
		req.Host = "echo"
		resp, err := c.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var body struct{ Instance string }
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 {
			return "", fmt.Errorf("%d %v", resp.StatusCode, err)
		}
		return body.Instance, nil
	}
	// reaches sends n requests from host 0 and returns who answered.
	reaches := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			if who, err := ask(clients[0]); err == nil {
				got[who]++
			}
		}
		return got
	}
	meshtest.Eventually(t, 30*time.Second, "host 0 reaching all four apps", func() error {
		if got := reaches(40); len(got) != 4 {
			return fmt.Errorf("answered: %v", got)
		}
		return nil
	})

	// The client on host 0 keeps sending through everything that follows.
	var sent, failed atomic.Int64
	var answeredBy sync.Map // name -> *atomic.Int64, since the last reset
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 100000 { // bounded; stop ends it sooner
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			who, err := ask(clients[0])
			if err != nil {
				failed.Add(1)
				continue
			}
			n, _ := answeredBy.LoadOrStore(who, new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
			time.Sleep(5 * time.Millisecond) // a steady trickle: the load's shape, not a wait
		}
	})
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	})
	count := func(name string) int64 {
		if n, ok := answeredBy.Load(name); ok {
			return n.(*atomic.Int64).Load()
		}
		return 0
	}

	l.cut(3)
	cutAt := time.Now()
	// Host 3's side keeps serving: its own app, through its own sidecar.
	meshtest.Eventually(t, 30*time.Second, "host 3 serving on its side of the cut", func() error {
		who, err := ask(clients[1])
		if err != nil || who != "m3" {
			return fmt.Errorf("host 3 got %q, %v", who, err)
		}
		return nil
	})
	// Host 0's side stops sending to host 3.
	meshtest.Eventually(t, 30*time.Second, "host 0 leaving host 3 out", func() error {
		before := count("m3")
		got := reaches(30)
		if got["m3"] > 0 || count("m3") != before {
			return fmt.Errorf("still answered by m3: %v", got)
		}
		return nil
	})
	t.Logf("host 3 left out %v after the cut", time.Since(cutAt).Round(time.Millisecond))

	// Host 2 dies while host 3 cannot see it.
	members[2].proc.Process.Kill()
	<-members[2].done

	// The cut lasts well beyond the time memberlist gossips to members it
	// declared dead (GossipToTheDeadTime, 15s in the local profile, counted
	// from the death): past that, only the pool's own reconnect loop can
	// merge the two sides again (without it, a 30s cut never healed). This
	// is the scenario's length, not a wait for a result.
	time.Sleep(time.Until(cutAt.Add(partitionLength)))
	l.heal(3)
	healAt := time.Now()
	meshtest.Eventually(t, 60*time.Second, "host 3 back in rotation after the heal", func() error {
		if got := reaches(40); got["m3"] == 0 {
			return fmt.Errorf("answered: %v", got)
		}
		return nil
	})
	t.Logf("host 3 back %v after the heal", time.Since(healAt).Round(time.Millisecond))
	// Nothing goes to the dead host 2 once the pool has settled.
	meshtest.Eventually(t, 60*time.Second, "host 0 leaving the dead host 2 out", func() error {
		if got := reaches(40); got["m2"] > 0 || len(got) != 3 {
			return fmt.Errorf("answered: %v", got)
		}
		return nil
	})
	settled := count("m2")
	got := reaches(100)
	if got["m2"] > 0 || count("m2") != settled {
		t.Errorf("the dead host 2 answered again after the pool settled: %v", got)
	}
	close(stop)
	wg.Wait()
	t.Logf("partition and heal: %d requests sent from host 0, %d failed", sent.Load(), failed.Load())
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed", n, sent.Load())
	}
}

// startMember starts host i's app and sidemesh.
func startMember(t *testing.T, l *lan, i int, app, key string) *member {
	t.Helper()
	m := &member{i: i, name: fmt.Sprintf("m%d", i), done: make(chan struct{})}
	appCmd := l.command(i, app, "-listen", "127.0.0.1:8081", "-instance", m.name)
	if err := appCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { appCmd.Process.Kill(); appCmd.Wait() })
	join := "[]"
	if i > 0 {
		join = "[" + l.addr(0) + ":7946]"
	}
	dir := t.TempDir()
	cfg := writeFile(t, dir, "sidemesh.yaml", fmt.Sprintf(`
service: { name: echo, id: %s, port: 8081 }
inbound: { listen: %s:21000 }
outbound: { listen: 127.0.0.1:15001 }
admin: { listen: 127.0.0.1:19000 }
discovery:
  gossip: { bind: %s:7946, join: %s, key_file: %s, profile: local }
upstreams:
  - service: echo
    retries: { attempts: 3, on: [connect_failure, reset, timeout, 502, 503], min_retries_per_second: 100 }
    connect_timeout: 500ms
drain_timeout: 2s
`, m.name, l.addr(i), l.addr(i), join, key))
	logf, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	m.log = logf.Name()
	m.proc = l.command(i, binary, "run", "-c", cfg)
	m.proc.Stderr = logf
	if err := m.proc.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.proc.Wait(); close(m.done) }()
	t.Cleanup(func() {
		select {
		case <-m.done:
		default:
			m.proc.Process.Kill()
			<-m.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(m.log)
			t.Logf("%s's sidemesh log:\n%s", m.name, lastLines(string(b), 40))
		}
	})
	meshtest.WaitFor(t, 20*time.Second, m.name+" running", func() bool {
		b, _ := os.ReadFile(m.log)
		return strings.Contains(string(b), "sidemesh running")
	})
	return m
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
