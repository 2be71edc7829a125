package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux architecture Go supports (sysconf(_SC_CLK_TCK)
// needs cgo, and the binary is built without it).
const clockTicks = 100

// procRoot is where the proc file system is mounted; tests point it at a
// folder of fixtures.
var procRoot = "/proc"

// procStat is what the harness reads of one /proc/<pid>/stat line.
type procStat struct {
	PID, PPID int
	Comm      string
	// UTime and STime are the CPU time the process has used in user and
	// kernel mode, its threads' included (those that exited too), in
	// clock ticks.
	UTime, STime int64
}

// parseStat parses the contents of /proc/<pid>/stat. The command name is
// in parentheses and may itself hold spaces and parentheses, so the
// fields are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	s := string(bytes.TrimSpace(b))
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 1 || end < open {
		return procStat{}, fmt.Errorf("stat %q: no (comm)", truncate(s, 80))
	}
	var st procStat
	var err error
	if st.PID, err = strconv.Atoi(strings.TrimSpace(s[:open])); err != nil {
		return procStat{}, fmt.Errorf("stat %q: pid: %w", truncate(s, 80), err)
	}
	st.Comm = s[open+1 : end]
	// Fields from the third (state) on; field n is rest[n-3].
	rest := strings.Fields(s[end+1:])
	if len(rest) < 13 {
		return procStat{}, fmt.Errorf("stat of pid %d: %d fields after the command name, want at least 13", st.PID, len(rest))
	}
	if st.PPID, err = strconv.Atoi(rest[1]); err != nil {
		return procStat{}, fmt.Errorf("stat of pid %d: ppid: %w", st.PID, err)
	}
	if st.UTime, err = strconv.ParseInt(rest[11], 10, 64); err != nil {
		return procStat{}, fmt.Errorf("stat of pid %d: utime: %w", st.PID, err)
	}
	if st.STime, err = strconv.ParseInt(rest[12], 10, 64); err != nil {
		return procStat{}, fmt.Errorf("stat of pid %d: stime: %w", st.PID, err)
	}
	return st, nil
}

// readStat reads /proc/<pid>/stat.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// processTree returns the PIDs of roots and of all their descendants, as
// /proc shows them now: nginx's master and its workers, say. A root that
// has exited is left out.
func processTree(roots []int) ([]int, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	children := map[int][]int{}
	alive := map[int]bool{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // exited meanwhile
		}
		alive[pid] = true
		children[st.PPID] = append(children[st.PPID], pid)
	}
	var out []int
	seen := map[int]bool{}
	var walk func(int)
	walk = func(pid int) {
		if seen[pid] {
			return
		}
		seen[pid] = true
		out = append(out, pid)
		for _, c := range children[pid] {
			walk(c)
		}
	}
	for _, r := range roots {
		if alive[r] {
			walk(r)
		}
	}
	return out, nil
}

// cpuTime returns the CPU time, user and system, used so far by the
// processes of the trees rooted at roots.
func cpuTime(roots []int) (time.Duration, error) {
	pids, err := processTree(roots)
	if err != nil {
		return 0, err
	}
	var ticks int64
	for _, pid := range pids {
		st, err := readStat(pid)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("cpu time of pid %d: %w", pid, err)
		}
		ticks += st.UTime + st.STime
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// memory is the memory of a set of processes, in bytes.
type memory struct {
	// RSS is the sum of the processes' resident set sizes (VmRSS): pages
	// shared between them (nginx's master and workers share their code)
	// count once per process.
	RSS int64
	// PSS is the sum of their proportional set sizes: each shared page
	// divided among the processes that map it, so the sum is what the
	// group costs the machine. 0 when smaps_rollup cannot be read.
	PSS int64
	// MaxRSS is the largest RSS of a single process of the set.
	MaxRSS int64
	// RSSFile is the part of RSS that is file-backed (RssFile): the
	// pages of the executable and libraries that were touched, as
	// opposed to the heap and stacks.
	RSSFile int64
}

// max returns the larger of m and o, field by field.
func (m memory) max(o memory) memory {
	return memory{RSS: max(m.RSS, o.RSS), PSS: max(m.PSS, o.PSS), MaxRSS: max(m.MaxRSS, o.MaxRSS), RSSFile: max(m.RSSFile, o.RSSFile)}
}

// parseKB returns the value, in bytes, of the line "key:   123 kB" of a
// /proc status-like file, and whether the key was there.
func parseKB(b []byte, key string) (int64, bool, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != key {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return 0, true, fmt.Errorf("%s: %q, want a count of kB", key, strings.TrimSpace(val))
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, true, fmt.Errorf("%s: %w", key, err)
		}
		return n * 1024, true, nil
	}
	return 0, false, sc.Err()
}

// memoryOf returns the memory of the trees rooted at roots.
func memoryOf(roots []int) (memory, error) {
	pids, err := processTree(roots)
	if err != nil {
		return memory{}, err
	}
	var m memory
	for _, pid := range pids {
		dir := filepath.Join(procRoot, strconv.Itoa(pid))
		status, err := os.ReadFile(filepath.Join(dir, "status"))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return memory{}, fmt.Errorf("memory of pid %d: %w", pid, err)
		}
		rss, ok, err := parseKB(status, "VmRSS")
		if err != nil || !ok {
			return memory{}, fmt.Errorf("memory of pid %d: no VmRSS in %s (%v)", pid, filepath.Join(dir, "status"), err)
		}
		m.RSS += rss
		m.MaxRSS = max(m.MaxRSS, rss)
		if file, ok, err := parseKB(status, "RssFile"); err == nil && ok {
			m.RSSFile += file
		}
		// smaps_rollup walks the page tables; reading it costs this
		// process, not the one measured.
		if rollup, err := os.ReadFile(filepath.Join(dir, "smaps_rollup")); err == nil {
			if pss, ok, err := parseKB(rollup, "Pss"); err == nil && ok {
				m.PSS += pss
			}
		}
	}
	return m, nil
}

// truncate shortens s to n bytes for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
