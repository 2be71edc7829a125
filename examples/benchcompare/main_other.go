//go:build !linux

// Command benchcompare compares sidemesh with nginx, HAProxy and Go's
// ReverseProxy; it reads CPU time and memory from /proc, so it runs on
// Linux only.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "benchcompare: runs on Linux only (it reads the proxies' CPU time and memory from /proc)")
	os.Exit(1)
}
