// Package buildinfo says which build of sidemesh is running. It is the one
// source of the version: the command line prints it and telemetry puts it
// in service.version.
package buildinfo

import (
	"runtime/debug"
	"sync"
)

// version is stamped at build time by the Makefile:
//
//	-ldflags "-X github.com/sidemesh/sidemesh/sidecar/buildinfo.version=$(git describe)"
var version string

// read is the build's embedded information, read once.
var read = sync.OnceValues(func() (*debug.BuildInfo, bool) { return debug.ReadBuildInfo() })

// Version returns the version sidemesh was built as: the stamped one
// (make build stamps `git describe`), else the module version (go
// install), else "devel" followed by the commit when it is known.
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := read(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	if c := Commit(); c != "" {
		return "devel-" + c
	}
	return "devel"
}

// Commit returns the VCS revision the build was made from, shortened to
// 12 hex digits, with "+dirty" when the work tree had changes; "" when
// the build does not record one (go test, a build outside a checkout).
func Commit() string {
	bi, ok := read()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}
