//go:build unix && !linux

package main

import "syscall"

// sysProcAttr puts a child in its own process group, so that Ctrl-C in the
// terminal reaches only the demo, which then stops the children in order.
// Outside Linux there is no Pdeathsig: if the demo is killed with SIGKILL,
// its children keep running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
