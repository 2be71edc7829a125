//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// commandPath returns the path of the command name: on the PATH, or in
// /usr/sbin, where Debian puts nginx and HAProxy and which a user's PATH
// often lacks.
func commandPath(name string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	p := filepath.Join("/usr/sbin", name)
	if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return p, true
	}
	return "", false
}

// ensureCommands returns the path of every command in names (each is the
// name of its Debian package too), installing the missing ones with
// apt-get (through sudo when not root) unless install is false.
// Installing does not start the packages' services where Debian's
// policy-rc.d forbids it (containers); where it does not, the service
// runs beside the harness's own nginx and HAProxy, which use ports and
// folders of their own.
func ensureCommands(ctx context.Context, names []string, install bool, w io.Writer) (map[string]string, error) {
	paths := map[string]string{}
	var missing []string
	for _, n := range names {
		if p, ok := commandPath(n); ok {
			paths[n] = p
		} else if !slices.Contains(missing, n) {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return paths, nil
	}
	if !install {
		return nil, fmt.Errorf("missing %s: install the Debian package(s) (apt-get install %s), drop -no-install, or leave the rows that need them out with -only",
			strings.Join(missing, ", "), strings.Join(missing, " "))
	}
	var sudo []string
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("sudo"); err != nil {
			return nil, fmt.Errorf("missing %s, and not root and no sudo to install them with apt-get", strings.Join(missing, ", "))
		}
		sudo = []string{"sudo"}
	}
	fmt.Fprintf(w, "installing %s from Debian's packages (apt-get)...\n", strings.Join(missing, ", "))
	aptGet := func(args ...string) error {
		argv := append(append(sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"), args...)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, tailBytes(out, 20))
		}
		return nil
	}
	if err := aptGet("update"); err != nil {
		return nil, err
	}
	if err := aptGet(append([]string{"install", "-y", "--no-install-recommends"}, missing...)...); err != nil {
		return nil, err
	}
	var still []string
	for _, n := range missing {
		if p, ok := commandPath(n); ok {
			paths[n] = p
		} else {
			still = append(still, n)
		}
	}
	if len(still) > 0 {
		return nil, errors.New("apt-get installed the packages, but these commands are still not found: " + strings.Join(still, ", "))
	}
	return paths, nil
}

// tailBytes returns the last n lines of b.
func tailBytes(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
