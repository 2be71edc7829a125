package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// edgeProc is one edge process of a test pool.
type edgeProc struct {
	name, listen, admin, gossip string
	proc                        *process
}

// startEdgeProc runs an edge named name in the gossip pool of gossipKey,
// joining seed (none: it starts the pool). cfg is the rest of its config:
// an "edge:" section without listeners (they are added) and any other
// top-level section but admin, discovery and drain_timeout (added too);
// "{name}" in it becomes the edge's name.
func startEdgeProc(t *testing.T, name, seed, gossipKey, cfg string) *edgeProc {
	t.Helper()
	e := &edgeProc{name: name, listen: meshtest.FreeAddr(t), admin: meshtest.FreeAddr(t), gossip: meshtest.FreeAddr(t)}
	join := "[]"
	if seed != "" {
		join = "[" + seed + "]"
	}
	cfg = strings.ReplaceAll(cfg, "{name}", name)
	cfg = strings.Replace(cfg, "edge:\n", fmt.Sprintf("edge:\n  listeners: [{ listen: %s }]\n", e.listen), 1)
	e.proc = startSidemesh(t, cfg+fmt.Sprintf(`
admin: { listen: %s }
discovery: { gossip: { bind: %s, join: %s, key_file: %s, profile: local, node_name: %s } }
drain_timeout: 1s
`, e.admin, e.gossip, join, gossipKey, name))
	return e
}
