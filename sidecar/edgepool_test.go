package sidecar

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// edgePool starts edges, in process, that share one encrypted gossip
// pool on loopback (profile local), each joining through the first.
type edgePool struct {
	t       *testing.T
	keyFile string
	seed    string
	// config returns the config of an edge listening at addr, without
	// its discovery section.
	config func(addr string) string
	edges  []*Sidecar
	addrs  []string
}

// newEdgePool starts n edges named edge-0 and on, each with config, and
// waits until each sees all n members.
func newEdgePool(t *testing.T, n int, config func(addr string) string) *edgePool {
	t.Helper()
	gkey, _ := gossip.GenerateKey()
	p := &edgePool{t: t, keyFile: filepath.Join(t.TempDir(), "gossip.key"), config: config}
	if err := os.WriteFile(p.keyFile, []byte(gkey), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		p.add(fmt.Sprintf("edge-%d", i))
	}
	meshtest.WaitFor(t, 15*time.Second, fmt.Sprintf("%d edges in the pool", n), func() bool {
		for _, e := range p.edges {
			if e.GossipMembers() != n {
				return false
			}
		}
		return true
	})
	return p
}

// add starts one more edge, named name, joining the pool.
func (p *edgePool) add(name string) *Sidecar {
	t := p.t
	t.Helper()
	addr := listenAddr(t)
	bind := fmt.Sprintf("127.0.0.1:%d", meshtest.FreeUDPAndTCPPort(t))
	join := "[]"
	if p.seed == "" {
		p.seed = bind
	} else {
		join = "[" + p.seed + "]"
	}
	e := start(t, parse(t, p.config(addr)+fmt.Sprintf(
		"discovery: { gossip: { bind: %s, join: %s, key_file: %s, profile: local, node_name: %s } }\n", bind, join, p.keyFile, name)))
	p.edges = append(p.edges, e)
	p.addrs = append(p.addrs, addr)
	return e
}
