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
		{name: "catalog-1", service: "catalog", app: 1001, inbound: 1002, outbound: 1003},
		{name: "frontend", service: "frontend", app: 2001, inbound: 2002, outbound: 2003, endpoints: []int{1002, 3002}},
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
		var eps []string
		for _, u := range c.Upstreams {
			for _, e := range u.Endpoints {
				eps = append(eps, u.Service+"="+e.Address)
			}
		}
		want := ""
		if in.endpoints != nil {
			want = "catalog=127.0.0.1:1002 catalog=127.0.0.1:3002"
		}
		if got := strings.Join(eps, " "); got != want {
			t.Errorf("%s: upstream endpoints %q, want %q", in.name, got, want)
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
