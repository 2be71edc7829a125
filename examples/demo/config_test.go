package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

// TestSidecarConfig checks that the configs the demo writes are valid and
// say what the demo means.
func TestSidecarConfig(t *testing.T) {
	m := mesh{
		{name: "catalog-1", service: "catalog", app: 1001, inbound: 1002, outbound: 1003, gossip: 1004, admin: 1005, keyFile: "/k"},
		{name: "frontend", service: "frontend", app: 2001, inbound: 2002, outbound: 2003, gossip: 2004, admin: 2005, seed: 1004,
			calls: "catalog", keyFile: "/k"},
	}
	for _, in := range m {
		var b strings.Builder
		if err := sidecarConfig.Execute(&b, in.templateData()); err != nil {
			t.Fatal(err)
		}
		c, err := config.Parse(in.name+".yaml", []byte(b.String()))
		if err != nil {
			t.Fatalf("%s:\n%s\n%v", in.name, b.String(), err)
		}
		if c.Service.Name != in.service || c.Service.Port != in.app ||
			c.Inbound.Listen != addr(in.inbound) || c.Outbound.Listen != addr(in.outbound) {
			t.Errorf("%s: got service %+v inbound %q outbound %q", in.name, c.Service, c.Inbound.Listen, c.Outbound.Listen)
		}
		g := c.Discovery.Gossip
		if g == nil || g.Bind != addr(in.gossip) || g.KeyFile != "/k" || g.Insecure {
			t.Fatalf("%s: gossip %+v, want an encrypted member on %s", in.name, g, addr(in.gossip))
		}
		if in.seed != 0 && (len(g.Join) != 1 || g.Join[0] != addr(in.seed)) {
			t.Errorf("%s: join %v, want the seed %s", in.name, g.Join, addr(in.seed))
		}
		var ups []string
		for i := range c.Upstreams {
			u := &c.Upstreams[i]
			ups = append(ups, u.Service+"="+strings.Join(c.Sources(u), "+"))
		}
		want := ""
		if in.calls != "" {
			want = "catalog=gossip"
		}
		if got := strings.Join(ups, " "); got != want {
			t.Errorf("%s: upstreams %q, want %q", in.name, got, want)
		}
	}
}

// TestQuickstartConfigs checks that the quickstart's configs load.
func TestQuickstartConfigs(t *testing.T) {
	files, err := filepath.Glob("../quickstart/*.yaml")
	if err != nil || len(files) != 2 {
		t.Fatalf("quickstart configs: %v %v", files, err)
	}
	for _, f := range files {
		if _, err := config.Load(f); err != nil {
			t.Errorf("%v", err)
		}
	}
}
