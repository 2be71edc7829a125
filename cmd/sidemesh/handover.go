package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/sidecar"
)

// A handover (SIGUSR2) replaces the running sidemesh process with a new
// one — the binary at the same path, so this is how an upgrade rolls out —
// without refusing or dropping a connection, as Envoy's hot restart and
// HAProxy's seamless reload do: the old process starts the new one with
// its listening sockets, the new one starts serving on them (both accept
// from the same sockets meanwhile) and says it is ready, and only then the
// old one drains and exits.
const (
	// envInherited lists the addresses of the listening sockets a new
	// process inherits, in the order of their descriptors from 3 on.
	envInherited = "SIDEMESH_INHERITED_LISTENERS"
	// envReadyFD is the descriptor the new process writes one byte to
	// once it serves, and then closes.
	envReadyFD = "SIDEMESH_READY_FD"
	// handoverTimeout bounds how long the old process waits for the new
	// one to be ready before it gives up, stops it and keeps serving.
	handoverTimeout = 30 * time.Second
)

// inherited returns the listeners the process that started this one
// handed over, and a function to call once this process serves; both are
// empty for a process started normally.
func inherited() ([]net.Listener, func(), error) {
	addrs := os.Getenv(envInherited)
	readyFD := os.Getenv(envReadyFD)
	os.Unsetenv(envInherited)
	os.Unsetenv(envReadyFD)
	var lns []net.Listener
	if addrs != "" {
		for i, addr := range strings.Split(addrs, ",") {
			f := os.NewFile(uintptr(3+i), addr)
			ln, err := net.FileListener(f)
			f.Close() // FileListener holds its own duplicate
			if err != nil {
				for _, ln := range lns {
					ln.Close()
				}
				return nil, nil, fmt.Errorf("inherited listener %s: %w", addr, err)
			}
			lns = append(lns, ln)
		}
	}
	ready := func() {}
	if readyFD != "" {
		fd, err := strconv.Atoi(readyFD)
		if err != nil {
			return lns, nil, fmt.Errorf("%s=%q: %w", envReadyFD, readyFD, err)
		}
		pipe := os.NewFile(uintptr(fd), "ready")
		ready = func() {
			pipe.Write([]byte{1})
			pipe.Close()
		}
	}
	return lns, ready, nil
}

// handover starts a new sidemesh process with sc's listening sockets and
// waits until it is ready. It reports whether the new process took over;
// if not, sc keeps serving and the new process, if any, is stopped.
func handover(sc *sidecar.Sidecar, log *slog.Logger) bool {
	if sc.Config().Discovery.Gossip != nil {
		log.Error("handover refused: the gossip pool's port cannot be handed over; restart instead")
		return false
	}
	exe, err := executable()
	if err != nil {
		log.Error("handover failed", "err", err)
		return false
	}
	files, err := sc.ListenerFiles()
	if err != nil {
		log.Error("handover failed", "err", err)
		return false
	}
	addrs := make([]string, 0, len(files))
	for addr := range files {
		addrs = append(addrs, addr)
	}
	slices.Sort(addrs)
	extra := make([]*os.File, 0, len(files)+1)
	for _, addr := range addrs {
		extra = append(extra, files[addr])
	}
	defer func() {
		for _, f := range extra {
			f.Close()
		}
	}()
	r, w, err := os.Pipe()
	if err != nil {
		log.Error("handover failed", "err", err)
		return false
	}
	defer r.Close()
	extra = append(extra, w)

	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = extra
	cmd.Env = append(os.Environ(),
		envInherited+"="+strings.Join(addrs, ","),
		envReadyFD+"="+strconv.Itoa(3+len(addrs)))
	if err := cmd.Start(); err != nil {
		w.Close()
		log.Error("handover failed: cannot start the new process", "binary", exe, "err", err)
		return false
	}
	w.Close() // the new process holds the write end now
	log.Info("handover: new process started", "pid", cmd.Process.Pid, "binary", exe, "listeners", len(addrs))

	readyc := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := r.Read(b)
		readyc <- err // EOF: the new process exited or closed the pipe unready
	}()
	select {
	case err := <-readyc:
		if err == nil {
			log.Info("handover: the new process serves; draining this one", "pid", cmd.Process.Pid)
			go cmd.Wait() // reap it if it exits before this process does
			return true
		}
		log.Error("handover failed: the new process exited before it was ready; keeping this one", "pid", cmd.Process.Pid)
	case <-time.After(handoverTimeout):
		log.Error("handover failed: the new process was not ready in time; stopping it and keeping this one",
			"pid", cmd.Process.Pid, "waited", handoverTimeout.String())
	}
	cmd.Process.Kill()
	cmd.Wait()
	return false
}

// executable returns the path this process was started as, resolved: a
// new binary installed at that path is the one a handover starts (not
// /proc/self/exe, which is the old one).
func executable() (string, error) {
	name := os.Args[0]
	if !strings.Contains(name, string(filepath.Separator)) {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", err
		}
		name = p
	}
	abs, err := filepath.Abs(name)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", errors.New("the binary this process was started as is gone: " + err.Error())
	}
	return abs, nil
}

// writePIDFile writes this process's PID to path atomically (a new file
// renamed into place), so a supervisor that follows it (systemd's
// PIDFile=) sees the new process after a handover.
func writePIDFile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
