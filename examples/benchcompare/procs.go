//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// stopTimeout bounds the wait for a child after SIGTERM; then its whole
// process group is killed. The sidecars' drain_timeout is 1 s.
const stopTimeout = 5 * time.Second

// proc is one child process: a proxy, or the backend.
type proc struct {
	name string
	log  string // the file that gets its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and been reaped
	err  error         // cmd.Wait's result; read it only after done is closed
}

// startProc starts exe with args and env added to the harness's
// environment, its output written to the file logPath, in its own process
// group (nginx's workers join it), and set to be killed if the harness
// dies.
func startProc(name, logPath string, env []string, exe string, args ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	// Pdeathsig fires when the thread that started the child exits; the
	// Go runtime keeps its threads unless a goroutine exits locked to one,
	// which the harness never does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, exe, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// pid returns the child's process ID.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited returns an error describing p's exit with the end of its log, or
// nil while it runs.
func (p *proc) exited() error {
	select {
	case <-p.done:
	default:
		return nil
	}
	status := "exit status 0"
	if p.err != nil {
		status = p.err.Error()
	}
	return fmt.Errorf("%s exited (%s); the end of its log, %s:\n%s", p.name, status, p.log, tail(p.log, 15))
}

// stop sends SIGTERM to p, waits up to stopTimeout, and then kills its
// process group: what is left of it (an nginx worker whose master died
// first) goes too. It returns an error only when p had already exited
// by itself.
func (p *proc) stop() error {
	if err := p.exited(); err != nil {
		return err
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
	}
	// The group is p's own (Setpgid): its ID is p's PID. ESRCH means
	// nothing of it is left.
	if err := syscall.Kill(-p.pid(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill the process group of %s: %w", p.name, err)
	}
	<-p.done
	return nil
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

// pids returns the process IDs of ps.
func pids(ps []*proc) []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = p.pid()
	}
	return out
}
