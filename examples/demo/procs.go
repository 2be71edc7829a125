package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// stopTimeout bounds the wait for children after SIGTERM; the rest are
// killed. The sidecars need drainTimeout at most.
const stopTimeout = drainTimeout + 5*time.Second

// proc is one child process of the demo.
type proc struct {
	name     string
	log      string // the file that gets its stdout and stderr
	cmd      *exec.Cmd
	expected atomic.Bool   // its exit is part of the script: no error
	done     chan struct{} // closed once it has exited and been reaped
	err      error         // cmd.Wait's result; read it only after done is closed
}

// procs are the children of the demo, and the first one that exited
// when it should not have.
type procs struct {
	mu     sync.Mutex
	all    []*proc
	failed chan *proc // capacity 1: the first unexpected exit
}

func newProcs() *procs { return &procs{failed: make(chan *proc, 1)} }

// start starts exe with args, its output appended to the file logPath, in
// its own process group and set to die with the demo.
func (ps *procs) start(name, logPath, exe string, args ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	ps.mu.Lock()
	ps.all = append(ps.all, p)
	ps.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		if !p.expected.Load() {
			select {
			case ps.failed <- p:
			default:
			}
		}
	}()
	return p, nil
}

// signal sends sig to p, as part of the script: its exit is no error.
func (p *proc) signal(sig syscall.Signal) error {
	p.expected.Store(true)
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", p.name, err)
	}
	return nil
}

// wait waits up to d for p to exit.
func (p *proc) wait(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("%s still running %v after it was signalled", p.name, d)
	}
}

// exitError describes a process that exited when it should not have,
// with the end of its log.
func (p *proc) exitError() error {
	status := "exit status 0"
	if p.err != nil {
		status = p.err.Error()
	}
	return fmt.Errorf("%s exited (%s); the end of its log, %s:\n%s", p.name, status, p.log, tail(p.log, 20))
}

// tail returns the last n lines of the file at path, indented.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "    (" + err.Error() + ")"
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return "    (empty)"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	lines = lines[max(0, len(lines)-n):]
	return "    " + strings.Join(lines, "\n    ")
}

// logSize returns the size of p's log now, 0 if it cannot be read.
func (p *proc) logSize() int64 {
	fi, err := os.Stat(p.log)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// problems returns the lines of p's log from offset on that were logged
// at level WARN or ERROR.
func (p *proc) problems(offset int64) []string {
	f, err := os.Open(p.log)
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return []string{err.Error()}
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for line := range strings.Lines(string(b)) {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// stopAll sends SIGTERM to every child still running, waits up to
// stopTimeout for them all to exit, kills any that remain, and reports
// how it went: how long it took, and any child that did not exit 0 or
// logged a warning or an error while stopping (with the line).
func (ps *procs) stopAll(out *printer) {
	ps.mu.Lock()
	running := slices.DeleteFunc(slices.Clone(ps.all), func(p *proc) bool {
		select {
		case <-p.done:
			return true
		default:
			return false
		}
	})
	ps.mu.Unlock()
	if len(running) == 0 {
		return
	}
	out.line("stopping %d processes (SIGTERM; the sidecars drain for up to %v)...", len(running), drainTimeout)
	start := time.Now()
	offsets := make([]int64, len(running))
	for i, p := range running {
		offsets[i] = p.logSize()
		if err := p.signal(syscall.SIGTERM); err != nil {
			p.cmd.Process.Kill()
		}
	}
	kill := time.After(stopTimeout)
	var killed bool
	for _, p := range running {
		select {
		case <-p.done:
		case <-kill:
			killed = true
			for _, q := range running {
				q.cmd.Process.Kill() // an error means it has already exited
			}
			<-p.done
		}
	}
	took := time.Since(start)
	clean := true
	for i, p := range running {
		if p.err != nil {
			clean = false
			out.line("warning: %s did not exit cleanly: %v; the end of its log:\n%s", p.name, p.err, tail(p.log, 10))
		}
		for _, l := range p.problems(offsets[i]) {
			clean = false
			out.line("warning: %s logged while stopping: %s", p.name, l)
		}
	}
	if killed {
		out.line("warning: killed what was still running after %v", stopTimeout)
	}
	if clean {
		out.line("all %d stopped cleanly in %v", len(running), took.Round(10*time.Millisecond))
	}
}
