//go:build linux

package main

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name, in   string
		want       procStat
		wantErr    bool
		wantErrSub string
	}{
		{name: "plain", in: "3329 (cat) R 3327 3327 8537 0 -1 4194304 98 0 0 0 7 3 0 0 20 0 1 0 670553 3133440 381\n",
			want: procStat{PID: 3329, PPID: 3327, Comm: "cat", UTime: 7, STime: 3}},
		{name: "spaces and parentheses in the name", in: "42 (nginx: worker (x) ) S 41 41 41 0 -1 0 0 0 0 0 1200 34 0 0 20 0 1 0 1 1 1",
			want: procStat{PID: 42, PPID: 41, Comm: "nginx: worker (x) ", UTime: 1200, STime: 34}},
		{name: "large counters", in: "7 (sidemesh) S 1 7 7 0 -1 0 0 0 0 0 123456789012 98765432109 0 0 20 0 12 0 1 1 1",
			want: procStat{PID: 7, PPID: 1, Comm: "sidemesh", UTime: 123456789012, STime: 98765432109}},
		{name: "no name", in: "7 sidemesh S 1", wantErr: true},
		{name: "too few fields", in: "7 (sidemesh) S 1 7 7 0", wantErr: true},
		{name: "bad utime", in: "7 (x) S 1 7 7 0 -1 0 0 0 0 0 abc 3 0 0 20 0 1 0 1 1 1", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.in))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parseStat(%q) = %+v, want an error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseStat(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("parseStat(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseKB(t *testing.T) {
	status := []byte("Name:\tnginx\nVmHWM:\t    9000 kB\nVmRSS:\t    2016 kB\nThreads:\t1\n")
	if v, ok, err := parseKB(status, "VmRSS"); err != nil || !ok || v != 2016*1024 {
		t.Errorf("VmRSS = %d, %v, %v; want %d", v, ok, err, 2016*1024)
	}
	if _, ok, err := parseKB(status, "Pss"); ok || err != nil {
		t.Errorf("Pss: found %v, %v; want not found", ok, err)
	}
	if _, _, err := parseKB([]byte("VmRSS:\t12 pages\n"), "VmRSS"); err == nil {
		t.Error("VmRSS in pages: no error")
	}
}

// fakeProc writes a process's stat, status and smaps_rollup under root.
func fakeProc(t *testing.T, root string, pid, ppid int, utime, stime, rssKB, pssKB int64) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stat := strconv.Itoa(pid) + " (proc " + strconv.Itoa(pid) + ") S " + strconv.Itoa(ppid) +
		" 1 1 0 -1 0 0 0 0 0 " + strconv.FormatInt(utime, 10) + " " + strconv.FormatInt(stime, 10) + " 0 0 20 0 1 0 1 1 1\n"
	files := map[string]string{
		"stat":         stat,
		"status":       "Name:\tproc\nVmRSS:\t" + strconv.FormatInt(rssKB, 10) + " kB\nRssAnon:\t1 kB\nRssFile:\t" + strconv.FormatInt(rssKB-1, 10) + " kB\n",
		"smaps_rollup": "00400000-7ffe0000 ---p 00000000 00:00 0 [rollup]\nRss:\t1 kB\nPss:\t" + strconv.FormatInt(pssKB, 10) + " kB\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestProcessTree builds a /proc of an nginx-like tree (a master, two
// workers, a grandchild), an unrelated process and a file that is not a
// process, and checks what the harness reads of the master's tree.
func TestProcessTree(t *testing.T) {
	root := t.TempDir()
	old := procRoot
	procRoot = root
	t.Cleanup(func() { procRoot = old })
	fakeProc(t, root, 100, 1, 10, 5, 6000, 2000)      // master
	fakeProc(t, root, 101, 100, 300, 200, 9000, 4000) // worker
	fakeProc(t, root, 102, 100, 250, 150, 9000, 4000) // worker
	fakeProc(t, root, 103, 101, 1, 1, 1000, 1000)     // a worker's child
	fakeProc(t, root, 200, 1, 9999, 9999, 50000, 50000)
	if err := os.WriteFile(filepath.Join(root, "loadavg"), []byte("0.1 0.2 0.3 1/1 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	got, err := processTree([]int{100})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []int{100, 101, 102, 103}; !slices.Equal(got, want) {
		t.Errorf("processTree(100) = %v, want %v", got, want)
	}
	if got, _ := processTree([]int{999}); len(got) != 0 {
		t.Errorf("processTree of a process that is gone = %v, want none", got)
	}

	cpu, err := cpuTime([]int{100})
	if err != nil {
		t.Fatal(err)
	}
	// (10+5 + 300+200 + 250+150 + 1+1) ticks of 10 ms.
	if want := 917 * 10 * time.Millisecond; cpu != want {
		t.Errorf("cpuTime(100) = %v, want %v", cpu, want)
	}
	if cpu, _ := cpuTime([]int{100, 200}); cpu != 917*10*time.Millisecond+19998*10*time.Millisecond {
		t.Errorf("cpuTime(100, 200) = %v, want both trees", cpu)
	}

	m, err := memoryOf([]int{100})
	if err != nil {
		t.Fatal(err)
	}
	want := memory{RSS: (6000 + 9000 + 9000 + 1000) * 1024, PSS: (2000 + 4000 + 4000 + 1000) * 1024, MaxRSS: 9000 * 1024,
		RSSFile: (6000 + 9000 + 9000 + 1000 - 4) * 1024}
	if m != want {
		t.Errorf("memoryOf(100) = %+v, want %+v", m, want)
	}
}

// TestCPUTimeOfSelf checks the real /proc: this process's CPU time grows
// as it spins.
func TestCPUTimeOfSelf(t *testing.T) {
	self := []int{os.Getpid()}
	before, err := cpuTime(self)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		after, err := cpuTime(self)
		if err != nil {
			t.Fatal(err)
		}
		if after > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU time stayed at %v for 10 s of spinning", before)
		}
		for i := 0; i < 1e6; i++ { // spin: burn a little CPU
			_ = strconv.Itoa(i)
		}
	}
	m, err := memoryOf(self)
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS <= 0 || m.MaxRSS != m.RSS {
		t.Errorf("memoryOf(self) = %+v, want a positive RSS, the largest process's being all of it", m)
	}
}
