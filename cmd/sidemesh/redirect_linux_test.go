package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/policy/identity"
)

// proxyGID is the group the intercepting sidecar runs as in
// TestRedirect: its own connections are not redirected.
const proxyGID = 1337

// answer is what the test's apps reply: who they are and the identity
// their sidecar saw (empty when the call did not come through the mesh).
type answer struct {
	Instance string
	Identity string
	// Passthrough is the header the sidecar marks a request with that it
	// passed through to an address outside the mesh.
	Passthrough string `json:",omitempty"`
}

// TestRedirect: an app in its own network namespace (host 0), which
// knows nothing of sidemesh, calls http://10.77.0.2:8081/, the address of
// one instance of catalog (hosts 1 and 2, each a sidecar in front of its
// app). With `sidemesh redirect` applied in host 0 and a sidecar running
// there as group proxyGID, the calls are balanced over both instances and
// arrive over mutual TLS: the callee apps see web's SPIFFE ID. A call to
// an address the mesh does not know (host 3), over IPv4 or IPv6, passes
// through the sidecar to that address.
//
// Other TCP too: the app (bash, over /dev/tcp) speaks a line protocol to
// 10.77.0.5:9000, the address of one instance of ledger, a tcp service
// (hosts 4 and 5). Its connections are balanced over both instances and
// arrive over mutual TLS: the ledger apps listen on loopback only, behind
// sidecars whose inbound listeners take mutual TLS from web alone (a
// plain connection gets nothing). Opaque bytes to an instance of catalog,
// an HTTP service, are refused; to host 3 they pass through, whether the
// client speaks first or waits for the server (a server-first protocol,
// after outbound.detect_timeout, or at once on an opaque port); after a
// reload with original_destination: refuse, they are refused.
//
// Applying again changes nothing; `sidemesh redirect --remove` restores
// direct connectivity and leaves no rule behind.
// It runs once with each backend: iptables and nftables.
func TestRedirect(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		needNetns(t, "no curl, the app of this test")
	}
	for _, backend := range []struct{ name, command string }{
		{"iptables", "iptables-restore"},
		{"nftables", "nft"},
	} {
		t.Run(backend.name, func(t *testing.T) {
			if _, err := exec.LookPath(backend.command); err != nil {
				needNetns(t, "no "+backend.command)
			}
			testRedirect(t, backend.name)
		})
	}
}

func testRedirect(t *testing.T, backend string) {
	start := time.Now()
	l := newLAN(t, 6)
	for i := range 4 {
		l.ip("-n", l.ns(i), "addr", "add", fmt.Sprintf("fd77::%d/64", i+1), "dev", "eth0", "nodad")
	}
	dir := t.TempDir()
	ca, err := identity.NewTestCA("mesh.local")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	tlsLine := func(service string) string {
		cert, key, err := ca.WriteLeaf(dir, service, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("tls: { cert_file: %s, key_file: %s, ca_file: %s, trust_domain: mesh.local }", cert, key, caFile)
	}

	// The callee: catalog on hosts 1 and 2, its app on every address so
	// that it can also be called directly. Host 3 runs a plain server
	// outside the mesh.
	for i, name := range map[int]string{1: "c1", 2: "c2", 3: "outsider"} {
		serveIn(t, l, i, ":8081", name)
	}
	serveLinesIn(t, l, 3, ":9000", "outsider")
	serveLinesIn(t, l, 3, ":9001", "outsider")
	catalogTLS := tlsLine("catalog")
	for _, i := range []int{1, 2} {
		startInNetns(t, l, i, nil, fmt.Sprintf(`
service: { name: catalog, id: c%d, port: 8081 }
inbound: { listen: %s:21000 }
outbound: { listen: 127.0.0.1:15001 }
%s
policy: { rules: [{ from: [web], action: allow }] }
drain_timeout: 1s
`, i, l.addr(i), catalogTLS))
	}

	// ledger, a tcp service, on hosts 4 and 5: its app on loopback only,
	// reachable through its sidecar alone.
	ledgerTLS := tlsLine("ledger")
	for _, i := range []int{4, 5} {
		serveLinesIn(t, l, i, "127.0.0.1:9000", fmt.Sprintf("l%d", i-3))
		startInNetns(t, l, i, nil, fmt.Sprintf(`
service: { name: ledger, id: l%d, port: 9000, protocol: tcp }
inbound: { listen: %s:21000 }
outbound: { listen: 127.0.0.1:15001 }
%s
policy: { rules: [{ from: [web], action: allow }] }
drain_timeout: 1s
`, i-3, l.addr(i), ledgerTLS))
	}
	if got := lineCall(t, l, 3, "10.77.0.5:21000", talk); strings.Contains(got, "ping") {
		t.Errorf("a plain connection to ledger's inbound listener was answered: %q", got)
	}

	// Before interception: the app reaches the one instance it names.
	if got := appCall(t, l, "http://10.77.0.2:8081/"); got != (answer{Instance: "c1"}) {
		t.Fatalf("direct call before redirect: %+v, want c1 with no identity", got)
	}

	redirectArgs := []string{"redirect", "--backend", backend, "--ipv6", "--proxy-gid", fmt.Sprint(proxyGID), "--inbound-ports", "8080"}
	runIn(t, l, 0, redirectArgs...)
	runIn(t, l, 0, redirectArgs...) // idempotent: replaces, does not add
	// One copy of the outbound redirect, with either backend.
	list, once := []string{"iptables-save", "-t", "nat"}, "-A OUTPUT -p tcp -j SIDEMESH_OUTPUT"
	if backend == "nftables" {
		list, once = []string{"nft", "list", "table", "inet", "sidemesh"}, "meta l4proto tcp redirect to :15001"
	}
	if rules := rulesIn(t, l, list...); strings.Count(rules, once) != 1 {
		t.Errorf("after applying twice, not one %q:\n%s", once, rules)
	}
	webConfig := func(originalDestination string) string {
		return fmt.Sprintf(`
service: { name: web, port: 8080 }
inbound: { listen: %s:21000 }
outbound: # IPv6 is redirected to [::1]
  listen: "[::]:15001"
  detect_timeout: 300ms
  opaque_ports: [9001]
  original_destination: %s
%s
upstreams:
  - service: catalog
    endpoints: [{ address: %s:21000 }, { address: %s:21000 }]
  - service: ledger
    protocol: tcp
    listen: 127.0.0.1:9191
    endpoints: [{ address: %s:21000 }, { address: %s:21000 }]
drain_timeout: 1s
`, l.addr(0), originalDestination, tlsLine("web"), l.addr(1), l.addr(2), l.addr(4), l.addr(5))
	}
	web := startInNetns(t, l, 0, &syscall.Credential{Uid: 0, Gid: proxyGID, NoSetGroups: true}, webConfig("passthrough"))

	const calls = 20
	answered := map[string]int{}
	for range calls {
		got := appCall(t, l, "http://10.77.0.2:8081/")
		if got.Identity != "spiffe://mesh.local/ns/default/svc/web" {
			t.Fatalf("intercepted call reached %s with identity %q, want web's SPIFFE ID", got.Instance, got.Identity)
		}
		answered[got.Instance]++
	}
	if answered["c1"] == 0 || answered["c2"] == 0 || len(answered) != 2 {
		t.Errorf("%d intercepted calls answered by %v, want both c1 and c2", calls, answered)
	}
	for _, url := range []string{"http://10.77.0.4:8081/", "http://[fd77::4]:8081/"} {
		if got := appCall(t, l, url); got != (answer{Instance: "outsider", Passthrough: "1"}) {
			t.Errorf("call to %s, outside the mesh: %+v, want it passed through to outsider", url, got)
		}
	}

	// Other TCP: to ledger's instances over the mesh, balanced; the apps
	// see their sidecar (127.0.0.1) connect.
	opaque := map[string]int{}
	for range calls {
		got := lineCall(t, l, 0, "10.77.0.5:9000", talk)
		instance, _, _ := strings.Cut(got, " ")
		if got != instance+" 127.0.0.1|"+instance+" ping" {
			t.Fatalf("intercepted TCP to a ledger instance: %q, want an instance greeting its sidecar and echoing", got)
		}
		opaque[instance]++
	}
	if opaque["l1"] == 0 || opaque["l2"] == 0 || len(opaque) != 2 {
		t.Errorf("%d intercepted TCP connections answered by %v, want both l1 and l2", calls, opaque)
	}
	if got := lineCall(t, l, 0, "10.77.0.2:8081", talk); strings.Trim(got, "|") != "" {
		t.Errorf("TCP that is not HTTP to an instance of catalog, an HTTP service: %q, want it refused", got)
	}
	// Outside the mesh: passed through from host 0's own address, to a
	// client that speaks first, one that waits for the server (after the
	// detect timeout), and one on an opaque port (at once).
	for _, tc := range []struct {
		addr, mode, want string
	}{
		{"10.77.0.4:9000", talk, "outsider 10.77.0.1|outsider ping"},
		{"[fd77::4]:9000", talk, "outsider fd77::1|outsider ping"},
		{"10.77.0.4:9000", listen, "outsider 10.77.0.1"},
		{"10.77.0.4:9001", listen, "outsider 10.77.0.1"},
	} {
		if got := lineCall(t, l, 0, tc.addr, tc.mode); got != tc.want {
			t.Errorf("TCP (%s) to %s, outside the mesh: %q, want %q", tc.mode, tc.addr, got, tc.want)
		}
	}
	// With original_destination: refuse, a reload later, outside the mesh
	// is closed to TCP; ledger is not.
	writeFile(t, filepath.Dir(web.config), filepath.Base(web.config), webConfig("refuse"))
	if err := web.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	meshtest.WaitFor(t, 10*time.Second, "TCP outside the mesh refused after the reload", func() bool {
		return strings.Trim(lineCall(t, l, 0, "10.77.0.4:9000", talk), "|") == ""
	})
	if got := lineCall(t, l, 0, "10.77.0.6:9000", talk); !strings.HasSuffix(got, " ping") {
		t.Errorf("intercepted TCP to a ledger instance after the reload: %q, want it answered", got)
	}

	runIn(t, l, 0, "redirect", "--backend", backend, "--remove")
	if rules := natRules(t, l); strings.Contains(rules, "SIDEMESH") || strings.Contains(rules, "sidemesh") {
		t.Errorf("rules left after --remove:\n%s", rules)
	}
	for _, url := range []string{"http://10.77.0.2:8081/", "http://[fd77::2]:8081/", "http://10.77.0.2:8081/"} {
		if got := appCall(t, l, url); got != (answer{Instance: "c1"}) {
			t.Fatalf("direct call to %s after --remove: %+v, want c1 with no identity", url, got)
		}
	}
	t.Logf("%s: intercepted calls answered by %v, TCP connections by %v; whole test %v", backend, answered, opaque, time.Since(start).Round(time.Millisecond))
}

// appCall runs the app, curl in host 0, against url and decodes its
// answer.
func appCall(t *testing.T, l *lan, url string) answer {
	t.Helper()
	out, err := l.command(0, "curl", "-sS", "--fail-with-body", "--max-time", "10", url).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s in host 0: %v\n%s", url, err, out)
	}
	var a answer
	if err := json.Unmarshal(out, &a); err != nil {
		t.Fatalf("curl %s: %v: %s", url, err, out)
	}
	return a
}

// runIn runs sidemesh with args in host i and fails the test if it fails.
func runIn(t *testing.T, l *lan, i int, args ...string) {
	t.Helper()
	if out, err := l.command(i, binary, args...).CombinedOutput(); err != nil {
		t.Fatalf("sidemesh %s in host %d: %v\n%s", strings.Join(args, " "), i, err, out)
	}
}

// natRules returns host 0's nat rules: what iptables-save, ip6tables-save
// (IPv4 only) and nft list ruleset print, those that are installed.
func natRules(t *testing.T, l *lan) string {
	t.Helper()
	var b strings.Builder
	for _, save := range [][]string{{"iptables-save", "-t", "nat"}, {"ip6tables-save", "-t", "nat"}, {"nft", "list", "ruleset"}} {
		if _, err := exec.LookPath(save[0]); err != nil {
			continue
		}
		b.WriteString(rulesIn(t, l, save...))
	}
	return b.String()
}

// rulesIn returns what list (a command listing rules) prints in host 0.
func rulesIn(t *testing.T, l *lan, list ...string) string {
	t.Helper()
	out, err := l.command(0, list[0], list[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(list, " "), err, out)
	}
	return string(out)
}

// netnsSidecar is a `sidemesh run` started by startInNetns.
type netnsSidecar struct {
	cmd    *exec.Cmd
	config string // the config file's path
}

// startInNetns runs `sidemesh run` with cfg in host i, with cred when set,
// and waits until it runs.
func startInNetns(t *testing.T, l *lan, i int, cred *syscall.Credential, cfg string) netnsSidecar {
	t.Helper()
	dir := t.TempDir()
	path := writeFile(t, dir, "sidemesh.yaml", cfg)
	logf, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := l.command(i, binary, "run", "-c", path)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	log := func() string { b, _ := os.ReadFile(logf.Name()); return string(b) }
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("host %d's sidemesh log:\n%s", i, lastLines(log(), 30))
		}
	})
	meshtest.WaitFor(t, 20*time.Second, fmt.Sprintf("host %d's sidemesh running", i), func() bool {
		select {
		case <-done:
			t.Fatalf("host %d's sidemesh exited:\n%s", i, log())
		default:
		}
		return strings.Contains(log(), "sidemesh running")
	})
	return netnsSidecar{cmd: cmd, config: path}
}

// serveIn serves an app answering with name and the identity header on
// addr inside host i.
func serveIn(t *testing.T, l *lan, i int, addr, name string) {
	t.Helper()
	ln := listenIn(t, l, i, addr)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(answer{Instance: name, Identity: r.Header.Get("X-Sidemesh-Peer-Identity"),
			Passthrough: r.Header.Get("X-Sidemesh-Passthrough")})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// serveLinesIn serves a line protocol on addr inside host i, server
// first: it greets each connection with "<name> <client's IP address>",
// then answers each line with "<name> <line>".
func serveLinesIn(t *testing.T, l *lan, i int, addr, name string) {
	t.Helper()
	meshtest.Serve(t, listenIn(t, l, i, addr), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
		lines := bufio.NewScanner(c)
		for lines.Scan() {
			fmt.Fprintf(c, "%s %s\n", name, lines.Text())
		}
	})
}

// How lineCall's client speaks: first (talk: it sends "ping" and reads
// the greeting and the answer), or not at all (listen: it reads the
// greeting, as the client of a server-first protocol does).
const (
	talk   = "talk"
	listen = "listen"
)

// lineCallScript is lineCall's client: bash over /dev/tcp, an app that
// knows nothing of sidemesh. It prints "<greeting>|<answer>" (talk) or
// "<greeting>" (listen); what it could not read is empty.
const lineCallScript = `exec 3<>"/dev/tcp/$1/$2" || exit 0
if [ "$3" = talk ]; then
	printf 'ping\n' >&3
	IFS= read -r -t 10 greeting <&3
	IFS= read -r -t 10 answer <&3
	printf '%s|%s' "$greeting" "$answer"
else
	IFS= read -r -t 10 greeting <&3
	printf '%s' "$greeting"
fi`

// lineCall opens a TCP connection from host i to addr and speaks the line
// protocol as mode says; it returns what lineCallScript prints.
func lineCall(t *testing.T, l *lan, i int, addr, mode string) string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	// A refused connection may end the script with an error: what it
	// printed is the answer.
	out, _ := l.command(i, "bash", "-c", lineCallScript, "app", host, port, mode).Output()
	return string(out)
}

// listenIn listens on addr inside host i (the listening socket stays in
// the namespace it was created in).
func listenIn(t *testing.T, l *lan, i int, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var listenErr error
	func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		defer self.Close()
		target, err := os.Open(filepath.Join("/run/netns", l.ns(i)))
		if err != nil {
			t.Fatal(err)
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			t.Fatalf("setns %s: %v", l.ns(i), err)
		}
		ln, listenErr = net.Listen("tcp", addr)
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			t.Fatalf("setns back: %v", err) // the thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
	}()
	if listenErr != nil {
		t.Fatalf("listen on %s in host %d: %v", addr, i, listenErr)
	}
	return ln
}
