//go:build !unix

package main

import "syscall"

// sysProcAttr returns nil: without process groups the children share the
// demo's console and see its Ctrl-C themselves.
func sysProcAttr() *syscall.SysProcAttr { return nil }
