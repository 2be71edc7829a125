package main

import "syscall"

// sysProcAttr puts a child in its own process group, so that Ctrl-C in the
// terminal reaches only the demo, which then stops the children in order,
// and has the kernel kill the child if the demo dies first.
//
// Pdeathsig fires when the thread that started the child exits; the Go
// runtime keeps its threads alive unless a goroutine exits while locked to
// one, which the demo never does.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
