package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
