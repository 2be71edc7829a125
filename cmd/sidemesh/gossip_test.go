package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// gossipMember is one sidemesh process of the gossip test: an app that
// answers with its name, and its sidecar, which also calls the service
// "echo" through the pool.
type gossipMember struct {
	name     string
	outbound string
	gossip   string
	admin    string
	proc     *process
}

func startGossipMember(t *testing.T, name, keyFile, seed string) *gossipMember {
	t.Helper()
	app := startBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
	m := &gossipMember{name: name, outbound: meshtest.FreeAddr(t), gossip: meshtest.FreeAddr(t), admin: meshtest.FreeAddr(t)}
	join := "[]"
	if seed != "" {
		join = "[" + seed + "]"
	}
	m.proc = startSidemesh(t, fmt.Sprintf(`
service: { name: echo, id: %s, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
admin: { listen: %s }
discovery:
  gossip: { bind: %s, join: %s, key_file: %s, profile: local }
upstreams:
  - service: echo
    retries: { attempts: 2, on: [connect_failure, reset, 502, 503] }
drain_timeout: 2s
`, name, app.port, meshtest.FreeAddr(t), m.outbound, m.admin, m.gossip, join, keyFile))
	return m
}

// seen sends n requests to echo through m and returns which members
// answered.
func (m *gossipMember) seen(n int) (map[string]int, error) {
	c := newClient()
	got := map[string]int{}
	for range n {
		req, _ := http.NewRequest("GET", "http://"+m.outbound+"/", nil)
		req.Host = "echo"
		resp, err := c.Do(req)
		if err != nil {
			return got, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return got, fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		got[string(b)]++
	}
	return got, nil
}

// metrics returns the member's /metrics page.
func (m *gossipMember) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + m.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// logged reports whether one line of the process log holds every part.
func (p *process) logged(parts ...string) bool {
	for line := range strings.Lines(p.log()) {
		all := true
		for _, part := range parts {
			all = all && strings.Contains(line, part)
		}
		if all {
			return true
		}
	}
	return false
}

func keygen(t *testing.T, dir, name string) string {
	t.Helper()
	out, err := exec.Command(binary, "keygen").Output()
	if err != nil {
		t.Fatalf("sidemesh keygen: %v", err)
	}
	return writeFile(t, dir, name, string(out))
}

// TestGossipMesh runs three sidemesh processes that find each other over
// gossip with no server, route to each other, lose one gracefully and one
// by SIGKILL, and refuse a fourth that has the wrong key.
func TestGossipMesh(t *testing.T) {
	dir := t.TempDir()
	key := keygen(t, dir, "gossip.key")
	m1 := startGossipMember(t, "m1", key, "")
	m2 := startGossipMember(t, "m2", key, m1.gossip)
	m3 := startGossipMember(t, "m3", key, m1.gossip)

	start := time.Now()
	meshtest.WaitFor(t, 30*time.Second, "every member reachable through m2", func() bool {
		got, _ := m2.seen(9)
		return got["m1"] > 0 && got["m2"] > 0 && got["m3"] > 0
	})
	t.Logf("three members routing to each other after %v", time.Since(start).Round(time.Millisecond))
	meshtest.WaitFor(t, 10*time.Second, "m1's metrics to count three gossip members", func() bool {
		return strings.Contains(m1.metrics(t), "\nsidemesh_gossip_members 3\n")
	})

	// A member with another key cannot join: its instance never shows.
	bad := startGossipMember(t, "intruder", keygen(t, dir, "other.key"), m1.gossip)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		got, err := m1.seen(6)
		if err != nil {
			t.Fatal(err)
		}
		if got["intruder"] > 0 {
			t.Fatal("a member with the wrong key joined the pool")
		}
	}
	bad.proc.signal(t, syscall.SIGTERM)
	bad.proc.wait(t, 20*time.Second)

	// Killed, while m3 can still confirm the suspicion (with two members
	// left, memberlist's Lifeguard waits its longest, 6x the minimum).
	// Failure detection removes it; until then, retries (and m2's
	// breaker) hide the refused connections from clients.
	if err := m2.proc.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	meshtest.WaitFor(t, 30*time.Second, "m1 to declare m2 gone", func() bool {
		if _, err := m1.seen(3); err != nil {
			t.Errorf("request failed while m2 was being detected dead: %v", err)
		}
		return m1.proc.logged(`msg="gossip: member gone"`, "member=m2")
	})
	t.Logf("killed member declared gone after %v", time.Since(start).Round(time.Millisecond))
	if got, err := m1.seen(6); err != nil || got["m2"] > 0 {
		t.Fatalf("after m2 died: %v %v, want no m2", got, err)
	}

	// Graceful leave: gone from the others' snapshots at once (about
	// 0.1 s; the deadline allows for a loaded CI machine losing the leave
	// message and falling back to failure detection), and no client
	// request fails meanwhile.
	m3.proc.signal(t, syscall.SIGTERM)
	start = time.Now()
	meshtest.WaitFor(t, 30*time.Second, "m3 gone after leaving", func() bool {
		got, err := m1.seen(6)
		if err != nil {
			t.Errorf("request failed while m3 left: %v", err)
		}
		return got["m3"] == 0 && got["m1"] > 0 &&
			m1.proc.logged(`msg="gossip: member gone"`, "member=m3")
	})
	t.Logf("graceful leave seen after %v", time.Since(start).Round(time.Millisecond))
	if code := m3.proc.wait(t, 20*time.Second); code != 0 {
		t.Errorf("m3 exit code %d", code)
	}
}

// TestKeygen checks the key is 32 random bytes in base64, different each time.
func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	a, _ := os.ReadFile(keygen(t, dir, "a"))
	b, _ := os.ReadFile(keygen(t, dir, "b"))
	if len(strings.TrimSpace(string(a))) != 44 || string(a) == string(b) {
		t.Fatalf("keys %q and %q: want two different base64 keys of 32 bytes", a, b)
	}
}
