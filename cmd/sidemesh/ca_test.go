package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sidemesh/sidemesh/policy/identity"
)

// TestCACommands creates a CA and a leaf with the CLI, checks the files
// load as a certificate source with the right identity, and that misuse
// gets exit code 2 and an existing CA is not overwritten.
func TestCACommands(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) (int, string) {
		out, err := exec.Command(binary, args...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := run("ca", "init", "--dir", dir, "--trust-domain", "mesh.local"); code != 0 {
		t.Fatalf("ca init: %d\n%s", code, out)
	}
	if code, out := run("ca", "init", "--dir", dir, "--trust-domain", "mesh.local"); code != 1 {
		t.Fatalf("ca init over an existing CA: %d, want 1\n%s", code, out)
	}
	if code, out := run("ca", "issue", "--dir", dir, "--service", "cart", "--namespace", "shop"); code != 0 {
		t.Fatalf("ca issue: %d\n%s", code, out)
	}
	src, err := identity.NewFileSource(filepath.Join(dir, "cart.pem"), filepath.Join(dir, "cart-key.pem"),
		filepath.Join(dir, "ca.pem"), identity.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := src.Current().ID.String(); got != "spiffe://mesh.local/ns/shop/svc/cart" {
		t.Fatalf("leaf identity %q", got)
	}
	if fi, err := os.Stat(filepath.Join(dir, "cart-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	for _, args := range [][]string{{"ca"}, {"ca", "init"}, {"ca", "issue", "--dir", dir}, {"ca", "revoke"}} {
		if code, out := run(args...); code != 2 || !strings.Contains(strings.ToLower(out), "usage") {
			t.Errorf("%v: exit %d, want 2 with usage\n%s", args, code, out)
		}
	}
}

// TestIssueOwnerForImageUser: the image runs as 65532, and a key that
// ca issue wrote 0600 for root is unreadable to it; --owner hands the
// pair over so that user's sidemesh accepts the config. Changing owners
// and running as another user need root.
func TestIssueOwnerForImageUser(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("SIDEMESH_REQUIRE_NETNS") != "" {
			t.Fatal("needs root (SIDEMESH_REQUIRE_NETNS is set)")
		}
		t.Skip("needs root to chown and to run as another user")
	}
	const imageUser = 65532
	dir := t.TempDir()
	// The test's temporary folders are 0700; the image user must reach
	// the files and the binary.
	for _, d := range []string{dir, filepath.Dir(dir), filepath.Dir(binary)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run := func(asImageUser bool, args ...string) (int, string) {
		cmd := exec.Command(binary, args...)
		if asImageUser {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: imageUser, Gid: imageUser}}
		}
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := run(false, "ca", "init", "--dir", dir, "--trust-domain", "mesh.local"); code != 0 {
		t.Fatalf("ca init: %d\n%s", code, out)
	}
	config := func(service string) string {
		path := writeFile(t, dir, service+".yaml", fmt.Sprintf(`service: { name: %s, port: 8080 }
inbound: { listen: 127.0.0.1:21000 } # validate does not bind
tls: { mode: mutual, cert_file: %s.pem, key_file: %s-key.pem, ca_file: ca.pem, trust_domain: mesh.local }
`, service, service, service))
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}

	if code, out := run(false, "ca", "issue", "--dir", dir, "--service", "root-owned"); code != 0 {
		t.Fatalf("ca issue: %d\n%s", code, out)
	}
	if code, out := run(true, "validate", "-c", config("root-owned")); code != 1 || !strings.Contains(out, "root-owned-key.pem") || !strings.Contains(out, "permission denied") {
		t.Fatalf("validate as %d with a root-owned key: exit %d, want 1 naming the unreadable key\n%s", imageUser, code, out)
	}

	if code, out := run(false, "ca", "issue", "--dir", dir, "--service", "cart", "--owner", "65532:65532"); code != 0 {
		t.Fatalf("ca issue --owner: %d\n%s", code, out)
	}
	for _, f := range []string{"cart.pem", "cart-key.pem"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != imageUser || st.Gid != imageUser {
			t.Errorf("%s owned by %d:%d, want %d:%d", f, st.Uid, st.Gid, imageUser, imageUser)
		}
	}
	if code, out := run(true, "validate", "-c", config("cart")); code != 0 {
		t.Fatalf("validate as %d with --owner: exit %d\n%s", imageUser, code, out)
	}
}
