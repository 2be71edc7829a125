// Package systemd holds the systemd unit of deploy/systemd and, in this
// test, its checks: systemd's own (systemd-analyze verify and security,
// where systemd is installed) and, always, the settings the docs promise.
package systemd

import (
	"bufio"
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

const (
	unitFile    = "sidemesh.service"
	sysusers    = "sidemesh.sysusers"
	installPath = "/usr/local/bin/sidemesh"
	// maxExposure bounds systemd-analyze security's score (0 is locked
	// down, 10 is unprotected); the unit scores 1.7 with systemd 252.
	maxExposure = 2.5
)

// unit is a parsed unit file: section, then key, then every value in
// file order (a key may repeat; an empty value is kept, as it resets).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case strings.HasSuffix(line, "\\"):
			t.Fatalf("%s:%d: line continuations are not used in this unit; this parser does not join them", path, n)
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not key=value in a section: %q", path, n, line)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// get returns the last value of key in section, as systemd reads it.
func (u unit) get(section, key string) (string, bool) {
	vs := u[section][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

// parseTimespan reads the systemd time spans this unit uses: "30s",
// "1min 30s", or a bare number of seconds.
func parseTimespan(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	s = strings.NewReplacer(" ", "", "min", "m", "sec", "s").Replace(s)
	return time.ParseDuration(s)
}

func TestUnitSettings(t *testing.T) {
	u := parseUnit(t, unitFile)
	svc := u["Service"]
	if svc == nil {
		t.Fatal("no [Service] section")
	}
	want := func(key, value string) {
		t.Helper()
		if got, _ := u.get("Service", key); got != value {
			t.Errorf("%s=%q, want %q", key, got, value)
		}
	}

	// Type=notify only if sidemesh sends sd_notify's READY=1.
	notify := sourceMentions(t, "NOTIFY_SOCKET")
	if typ, _ := u.get("Service", "Type"); notify && typ != "notify" {
		t.Errorf("Type=%s, but sidemesh reads NOTIFY_SOCKET: want notify", typ)
	} else if !notify && typ != "exec" {
		t.Errorf("Type=%s: sidemesh does not speak sd_notify (no NOTIFY_SOCKET in its source): want exec", typ)
	}

	start, _ := u.get("Service", "ExecStart")
	args := strings.Fields(start)
	if len(args) < 2 || args[0] != installPath || args[1] != "run" {
		t.Fatalf("ExecStart=%q: want %s run ...", start, installPath)
	}
	cfgPath := flagValue(args, "-c")
	if cfgPath == "" || !filepath.IsAbs(cfgPath) {
		t.Errorf("ExecStart=%q: want -c with an absolute config path", start)
	}
	if pre, ok := u.get("Service", "ExecStartPre"); ok && flagValue(strings.Fields(pre), "-c") != cfgPath {
		t.Errorf("ExecStartPre=%q does not validate the config ExecStart runs, %s", pre, cfgPath)
	}
	pidFile := flagValue(args, "--pid-file")
	want("PIDFile", pidFile)
	if rd, _ := u.get("Service", "RuntimeDirectory"); pidFile == "" || filepath.Dir(pidFile) != "/run/"+rd {
		t.Errorf("--pid-file %q is not in the RuntimeDirectory /run/%s", pidFile, rd)
	}

	reload, _ := u.get("Service", "ExecReload")
	if !regexp.MustCompile(`^/bin/kill (-HUP|-s HUP|-SIGHUP|-s SIGHUP) \$MAINPID$`).MatchString(reload) {
		t.Errorf("ExecReload=%q, want it to send SIGHUP to $MAINPID", reload)
	}
	want("KillSignal", "SIGTERM")
	stop, _ := u.get("Service", "TimeoutStopSec")
	if d, err := parseTimespan(stop); err != nil || d <= config.DefaultDrainTimeout {
		t.Errorf("TimeoutStopSec=%q: want more than the default drain_timeout, %s", stop, config.DefaultDrainTimeout)
	}
	want("Restart", "on-failure")

	for key, value := range map[string]string{
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"ProtectHome":     "yes",
		"PrivateTmp":      "yes",
		"PrivateDevices":  "yes",
	} {
		want(key, value)
	}
	if caps, ok := u.get("Service", "CapabilityBoundingSet"); !ok || (caps != "" && caps != "CAP_NET_BIND_SERVICE") {
		t.Errorf("CapabilityBoundingSet=%q (set: %v): want it empty, or CAP_NET_BIND_SERVICE alone", caps, ok)
	}
	if v, _ := u.get("Service", "LimitNOFILE"); v == "" {
		t.Error("no LimitNOFILE")
	}
	user, _ := u.get("Service", "User")
	if dyn, _ := u.get("Service", "DynamicUser"); user == "" && dyn != "yes" {
		t.Error("neither User= nor DynamicUser=yes: it would run as root")
	}
	if user != "" {
		b, err := os.ReadFile(sysusers)
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`(?m)^u\s+` + regexp.QuoteMeta(user) + `\s`).Match(b) {
			t.Errorf("%s does not create the user %s", sysusers, user)
		}
	}
	if _, ok := u["Install"]["WantedBy"]; !ok {
		t.Error("no [Install] WantedBy: systemctl enable would do nothing")
	}
}

// TestSystemdAnalyze runs systemd's own checks on the unit: verify (which
// only warns on an unknown key or a bad value, so any output fails) and
// the security exposure score. The unit's binary is replaced by a stub,
// since verify wants the executable to exist.
func TestSystemdAnalyze(t *testing.T) {
	bin, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (it comes with systemd): only the parsed settings are checked")
	}
	dir := t.TempDir()
	stub := filepath.Join(dir, "sidemesh")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	unitPath := filepath.Join(dir, unitFile)
	if err := os.WriteFile(unitPath, bytes.ReplaceAll(data, []byte(installPath), []byte(stub)), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	out, err := run("verify", "--man=no", unitPath)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	out, err = run("security", "--offline=yes", "--no-pager", unitPath)
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Logf("systemd-analyze security --offline gave no score (systemd older than 250?): %v\n%s", err, out)
		return
	}
	score, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("systemd-analyze security: exposure %.1f", score)
	if score > maxExposure {
		t.Errorf("exposure %.1f > %.1f: a hardening option was lost\n%s", score, maxExposure, out)
	}
}

// TestSysusers has systemd-sysusers read the sysusers.d file in a
// scratch root, creating nothing on this host.
func TestSysusers(t *testing.T) {
	bin, err := exec.LookPath("systemd-sysusers")
	if err != nil {
		t.Skip("systemd-sysusers is not installed (it comes with systemd)")
	}
	abs, err := filepath.Abs(sysusers)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--root="+root, "--dry-run", abs).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Creating user 'sidemesh'") {
		t.Errorf("systemd-sysusers --dry-run %s: %v\n%s", sysusers, err, out)
	}
}

// sourceMentions reports whether a non-test Go file of the module holds s.
func sourceMentions(t *testing.T, s string) bool {
	t.Helper()
	found := false
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || found {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); p != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "deploy") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		found = bytes.Contains(b, []byte(s))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// flagValue returns the value after flag in args ("--flag v" or
// "--flag=v").
func flagValue(args []string, flag string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
