//go:build unix

// Package quickstart holds the tests of the quick start: its configs
// validate, and the README's shell block works when pasted.
package quickstart

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// root is the repository root, from this package's folder.
const root = "../.."

// quickstartPorts are the loopback ports the quick start uses: the two
// apps, the sidecars' inbound and outbound listeners.
var quickstartPorts = []int{8080, 8081, 21000, 21001, 15001, 15002}

// TestConfigsValidate runs `sidemesh validate -c` on every config of the
// quick start.
func TestConfigsValidate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sidemesh")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	sidemesh := filepath.Join(t.TempDir(), "sidemesh")
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", sidemesh, "github.com/sidemesh/sidemesh/cmd/sidemesh").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) != 2 {
		t.Fatalf("quick start configs: %v %v", files, err)
	}
	for _, f := range files {
		out, err := exec.CommandContext(ctx, sidemesh, "validate", "-c", f).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ok") {
			t.Errorf("sidemesh validate -c %s: %v\n%s", f, err, out)
		}
	}
}

// TestREADMEQuickstart runs the shell block of the README's "Quick start:
// two services" with bash, as pasted, in a copy of the repository whose
// quick start uses free ports instead of the fixed ones. It checks what
// the two curls print, that bash ends by itself, and that nothing it
// started is left running or listening.
func TestREADMEQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sidemesh and runs the quick start")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("SIDEMESH_REQUIRE_NETNS") != "" {
			t.Fatal("the quick start needs curl (`make test` installs it; SIDEMESH_REQUIRE_NETNS is set)")
		}
		t.Skip("the quick start needs curl")
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	block, err := shellBlock(string(readme), "## Quick start: two services")
	if err != nil {
		t.Fatal(err)
	}

	// A copy of the tree, so that the block's builds and its bin/ stay out
	// of the working tree, with every fixed port replaced by a free one.
	tree := t.TempDir()
	if err := copyTree(root, tree); err != nil {
		t.Fatal(err)
	}
	ports := map[int]int{}
	for _, p := range quickstartPorts {
		ports[p] = meshtest.FreePort(t)
	}
	block = replacePorts(block, ports)
	for _, f := range []string{"examples/quickstart/catalog.yaml", "examples/quickstart/frontend.yaml"} {
		path := filepath.Join(tree, f)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(replacePorts(string(b), ports)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []int{8080, 8081, 21000, 15001} {
		if !strings.Contains(block, ":"+strconv.Itoa(ports[p])) {
			t.Fatalf("the quick start no longer uses port %d; update quickstartPorts:\n%s", p, block)
		}
	}
	t.Logf("quick start block, ports moved:\n%s", block)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", block)
	cmd.Dir = tree
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// If the test gives up, take down the whole group: bash and whatever
	// the block started in the background.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err = cmd.Run()
	text := out.String()
	t.Logf("bash ran the block in %v; its output:\n%s", time.Since(start).Round(time.Millisecond), text)
	if err != nil {
		t.Fatalf("bash: %v", err)
	}

	// The first curl: the frontend's JSON, the catalog's answer inside.
	var page struct {
		Frontend       string `json:"frontend"`
		RequestID      string `json:"request_id"`
		UpstreamStatus int    `json:"upstream_status"`
		Catalog        struct {
			Instance  string `json:"instance"`
			RequestID string `json:"request_id"`
		} `json:"catalog"`
	}
	var found bool
	for line := range strings.Lines(text) {
		if strings.HasPrefix(line, `{"frontend"`) {
			found = json.Unmarshal([]byte(line), &page) == nil
			break
		}
	}
	if !found || page.Frontend != "frontend" || page.UpstreamStatus != 200 || page.Catalog.Instance != "catalog-1" ||
		page.RequestID == "" || page.Catalog.RequestID != page.RequestID {
		t.Errorf("the first curl did not print the frontend's page through both sidecars: %+v (found %v)", page, found)
	}
	// The second: a 502 from the sidecar for a service it does not know.
	if !regexp.MustCompile(`(?m)^HTTP/1\.1 502 `).MatchString(text) || !strings.Contains(text, "X-Sidemesh-Error: no_route") {
		t.Error("the second curl did not print a 502 with X-Sidemesh-Error: no_route")
	}

	// bash has returned: everything in its process group must be gone and
	// every port free again.
	pgid := cmd.Process.Pid
	meshtest.Eventually(t, 10*time.Second, "the quick start's processes to be gone and its ports free", func() error {
		if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("a process of the block is still running (kill -0 -%d: %v)", pgid, err)
		}
		for _, p := range ports {
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err != nil {
				return fmt.Errorf("port %d still bound: %w", p, err)
			}
			ln.Close()
		}
		return nil
	})
}

// shellBlock returns the first fenced shell block (```bash or ```sh) after
// the line heading in markdown.
func shellBlock(markdown, heading string) (string, error) {
	_, rest, ok := strings.Cut(markdown, "\n"+heading+"\n")
	if !ok {
		return "", fmt.Errorf("README.md has no %q", heading)
	}
	if next := strings.Index(rest, "\n## "); next >= 0 {
		rest = rest[:next]
	}
	m := regexp.MustCompile("(?s)\n```(?:bash|sh)\n(.*?)\n```").FindStringSubmatch(rest)
	if m == nil {
		return "", fmt.Errorf("%q has no shell block", heading)
	}
	return m[1], nil
}

// replacePorts replaces each port from ports, where it stands as a whole
// number, by its new value.
func replacePorts(s string, ports map[int]int) string {
	return regexp.MustCompile(`\b\d{4,5}\b`).ReplaceAllStringFunc(s, func(n string) string {
		p, _ := strconv.Atoi(n)
		if q, ok := ports[p]; ok {
			return strconv.Itoa(q)
		}
		return n
	})
}

// copyTree copies the source tree at src to dst: every regular file but
// those under .git, .cache, bin and demo-run, and large files (built
// binaries).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch rel {
			case ".git", ".cache", "bin", "demo-run":
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Size() > 4<<20 {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, info.Mode().Perm())
	})
}
