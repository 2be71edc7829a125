package consultest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStartRestart(t *testing.T) {
	a := Start(t)
	if !strings.HasPrefix(a.Addr(), "127.0.0.1:") {
		t.Errorf("Addr() = %q", a.Addr())
	}
	reg := &api.AgentServiceRegistration{ID: "x-1", Name: "x", Port: 1}
	if err := a.Client().Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	addr := a.Addr()
	a.Restart()
	if a.Addr() != addr {
		t.Errorf("Addr() after restart = %s, want %s", a.Addr(), addr)
	}
	// A restarted dev agent has lost its state.
	svcs, err := a.Client().Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 0 {
		t.Errorf("services after restart = %v, want none", svcs)
	}
	a.Stop()
	if _, err := a.Client().Agent().Services(); err == nil {
		t.Error("the stopped agent answers")
	}
	a.Stop() // idempotent
}

func TestBinary(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Errorf("moduleRoot() = %s: %v", root, err)
	}

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(BinaryEnv, self)
	if got, err := Binary(); err != nil || got != self {
		t.Errorf("Binary() with %s=%s = %s, %v", BinaryEnv, self, got, err)
	}

	missing := filepath.Join(t.TempDir(), "consul")
	t.Setenv(BinaryEnv, missing)
	if _, err := Binary(); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Binary() with a missing %s = %v", BinaryEnv, err)
	}

	// Outside the module, the error says how to get the binary.
	t.Setenv(BinaryEnv, "")
	t.Chdir(t.TempDir())
	if _, err := Binary(); err == nil || !strings.Contains(err.Error(), "make consul") {
		t.Errorf("Binary() outside the module = %v, want a hint to run make consul", err)
	}
}

func TestModulePathOf(t *testing.T) {
	for in, want := range map[string]string{
		"module github.com/sidemesh/sidemesh\n\ngo 1.26\n":   "github.com/sidemesh/sidemesh",
		"// c\nmodule \"github.com/sidemesh/sidemesh\"\n":    "github.com/sidemesh/sidemesh",
		"module github.com/sidemesh/sidemesh/deploy/tools\n": "github.com/sidemesh/sidemesh/deploy/tools",
		"go 1.26\n": "",
	} {
		if got := modulePathOf(strings.NewReader(in)); got != want {
			t.Errorf("modulePathOf(%q) = %q, want %q", in, got, want)
		}
	}
}
