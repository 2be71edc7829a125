package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestStartupAndShutdownLog: at start, sidemesh logs each address it
// listens on once, by role (the admin API with its URL, gossip too), and
// each startup event once; a normal shutdown logs no warning or error.
// Read from the JSON log, where durations are strings.
func TestStartupAndShutdownLog(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"ca", "init", "--dir", filepath.Join(dir, "certs"), "--trust-domain", "mesh.local"},
		{"ca", "issue", "--dir", filepath.Join(dir, "certs"), "--service", "web"},
	} {
		if out, err := exec.Command(binary, args...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	key, err := exec.Command(binary, "keygen").Output()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "gossip.key", string(key))
	in, out, admin, db := meshtest.FreeAddr(t), meshtest.FreeAddr(t), meshtest.FreeAddr(t), meshtest.FreeAddr(t)
	gossip := fmt.Sprintf("127.0.0.1:%d", meshtest.FreeUDPAndTCPPort(t))
	p := startSidemesh(t, fmt.Sprintf(`
service: { name: web, port: 8080 }
admin: { listen: %s }
inbound: { listen: %s }
outbound: { listen: %s }
upstreams:
  - { service: db, protocol: tcp, listen: %s, mtls: false, endpoints: [{ address: 127.0.0.1:5432 }] }
tls: { mode: mutual, cert_file: %[6]s/certs/web.pem, key_file: %[6]s/certs/web-key.pem, ca_file: %[6]s/certs/ca.pem, trust_domain: mesh.local }
discovery: { gossip: { bind: %[5]s, key_file: %[6]s/gossip.key, profile: local } }
log: { format: json }
drain_timeout: 2s
`, admin, in, out, db, gossip, dir))
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM\n%s", code, p.log())
	}

	type line struct {
		Level, Msg, Role, Addr, URL string
		Deadline                    any
	}
	var lines []line
	for _, raw := range strings.Split(strings.TrimSpace(p.log()), "\n") {
		var l line
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			t.Fatalf("log line %q is not JSON: %v", raw, err)
		}
		lines = append(lines, l)
	}
	listening := map[string]string{}
	seen := map[string]int{}
	for _, l := range lines {
		if l.Level == "WARN" || l.Level == "ERROR" {
			t.Errorf("a normal start and stop logged %s %q\n%s", l.Level, l.Msg, p.log())
		}
		if l.Msg == "listening" {
			if prev, dup := listening[l.Role]; dup {
				t.Errorf("role %s logged twice (%s, %s)", l.Role, prev, l.Addr)
			}
			listening[l.Role] = l.Addr
			if l.Role == "admin" && l.URL != "http://"+admin+"/" {
				t.Errorf("admin URL = %q", l.URL)
			}
			continue
		}
		if !strings.HasPrefix(l.Msg, "gossip: member") { // one per member and change
			seen[l.Msg]++
		}
		if l.Msg == "draining" && l.Deadline != "2s" {
			t.Errorf("draining deadline = %#v, want the string \"2s\"", l.Deadline)
		}
	}
	want := map[string]string{"inbound": in, "outbound": out, "admin": admin, "upstream/db": db, "gossip": gossip}
	for role, addr := range want {
		if listening[role] != addr {
			t.Errorf("listening role=%s addr=%q, want %s", role, listening[role], addr)
		}
	}
	if len(listening) != len(want) {
		t.Errorf("listening lines for %v, want exactly %v", listening, want)
	}
	for msg, n := range seen {
		if n > 1 {
			t.Errorf("%q logged %d times", msg, n)
		}
	}
	for _, msg := range []string{"identity: loaded certificates", "sidemesh running", "draining", "sidecar stopped"} {
		if seen[msg] != 1 {
			t.Errorf("%q logged %d times, want once\n%s", msg, seen[msg], p.log())
		}
	}
}
