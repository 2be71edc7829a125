package edge

import (
	"strings"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

// ReplacePrefix replaces prefix, the normalized prefix a route matched
// ("" for "/"), at the start of path with repl, as the Gateway API's
// ReplacePrefixMatch does: whole segments, a trailing "/" of repl
// ignored, an empty result made "/".
//
//	/foo/bar  /foo  /xyz   -> /xyz/bar
//	/foo/     /foo  /xyz   -> /xyz/
//	/foo/bar  /foo  ""     -> /bar
//	/foo      /foo  /      -> /
func ReplacePrefix(path, prefix, repl string) string {
	rest := strings.TrimPrefix(path, prefix)
	out := strings.TrimSuffix(repl, "/") + rest
	if out == "" {
		return "/"
	}
	if !strings.HasPrefix(out, "/") {
		out = "/" + out
	}
	return out
}

// modifyPath applies m to path, which the route matched with prefix.
func modifyPath(m *config.PathModifier, path, prefix string) string {
	if m.Prefix != nil {
		return ReplacePrefix(path, prefix, *m.Prefix)
	}
	return m.Full
}
