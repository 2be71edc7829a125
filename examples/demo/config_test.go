package main

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/policy/identity"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

// TestSidecarConfigs checks that the configs the demo writes load and say
// what the demo means: an encrypted gossip pool joined through catalog-1,
// mutual TLS with the service's own leaf, the policies, and upstreams fed
// by gossip alone.
func TestSidecarConfigs(t *testing.T) {
	dir := t.TempDir()
	l, err := newLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.ports.freeAll)
	// The files the configs name, as the demo makes them.
	if err := identity.InitCA(l.certs, trustDomain, 0); err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"catalog", "frontend", "visitor", "edge"} {
		if _, _, err := identity.IssueLeaf(l.certs, svc, "", 0); err != nil {
			t.Fatal(err)
		}
	}
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	for _, f := range []string{l.keyFile, l.stickyKey} {
		if err := os.WriteFile(f, []byte(key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	seed := l.get("catalog-1").gossip
	for _, name := range l.order {
		in := l.get(name)
		if err := l.writeConfig(in); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load(in.configPath(dir))
		if err != nil {
			b, _ := os.ReadFile(in.configPath(dir))
			t.Fatalf("%s:\n%s\n%v", name, b, err)
		}

		switch {
		case in.edge:
			if c.Service != nil || c.Edge == nil || len(c.Edge.Listeners) != 1 || c.Edge.Listeners[0].Listen != in.appAddr() ||
				len(c.Edge.Routes) != 1 || c.Edge.Routes[0].Sticky == nil || c.Edge.Sticky == nil || c.Edge.Sticky.KeyFile != l.stickyKey {
				t.Errorf("%s: service %+v edge %+v, want an edge with one sticky route on %s", name, c.Service, c.Edge, in.appAddr())
			}
		case in.client:
			if c.Service != nil {
				t.Errorf("%s: service %+v, want a client-only sidecar", name, c.Service)
			}
		case c.Service == nil || c.Service.Name != in.service || c.Service.ID != name || c.Service.Port != in.app ||
			c.Inbound.Listen != in.inboundAddr():
			t.Errorf("%s: service %+v inbound %q", name, c.Service, c.Inbound.Listen)
		}
		if in.edge == c.OutboundEnabled() || !in.edge && c.Outbound.Listen != in.outboundAddr() || c.Admin == nil || c.Admin.Listen != in.adminAddr() || c.DrainTimeout != drainTimeout {
			t.Errorf("%s: outbound %q admin %+v drain %v", name, c.Outbound.Listen, c.Admin, c.DrainTimeout)
		}

		g := c.Discovery.Gossip
		if g == nil || g.Bind != addr(in.gossip) || g.KeyFile != l.keyFile || g.Insecure || g.Profile != "local" {
			t.Fatalf("%s: gossip %+v, want an encrypted member on %s", name, g, addr(in.gossip))
		}
		wantJoin := []string{addr(seed)}
		if name == "catalog-1" {
			wantJoin = nil
		}
		if !slices.Equal(g.Join, wantJoin) {
			t.Errorf("%s: join %v, want %v", name, g.Join, wantJoin)
		}

		tls := c.TLS
		if !tls.Enabled() || tls.Source != config.TLSSourceFiles || tls.TrustDomain != trustDomain ||
			tls.CertFile != filepath.Join(l.certs, in.service+".pem") || tls.CAFile != filepath.Join(l.certs, "ca.pem") {
			t.Errorf("%s: tls %+v, want mutual TLS with the %s leaf", name, tls, in.service)
		}

		var rules []string
		for _, r := range c.Policy.Rules {
			rules = append(rules, r.Action+" "+strings.Join(r.From, ",")+" "+strings.Join(r.Paths, ","))
		}
		wantRules := map[string][]string{
			"catalog":  {"allow frontend,visitor,edge ", "deny frontend,visitor,edge /admin/"},
			"frontend": {"allow visitor "},
		}[in.service]
		if !slices.Equal(rules, wantRules) {
			t.Errorf("%s: policy rules %q, want %q", name, rules, wantRules)
		}

		var ups []string
		for i := range c.Upstreams {
			u := &c.Upstreams[i]
			ups = append(ups, u.Service+"="+u.Balancer+"@"+strings.Join(c.Sources(u), "+"))
		}
		wantUps := map[string]string{
			"frontend": "catalog=round_robin@gossip",
			"visitor":  "frontend=round_robin@gossip catalog=round_robin@gossip",
			"edge":     "catalog=round_robin@gossip",
		}[in.service]
		if got := strings.Join(ups, " "); got != wantUps {
			t.Errorf("%s: upstreams %q, want %q", name, got, wantUps)
		}
	}

	// The reload the demo does: the frontend's balancer, and nothing else.
	fe := l.get("frontend")
	fe.balancer = "least_response_time"
	if err := l.writeConfig(fe); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(fe.configPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if u := c.Upstreams[0]; u.Balancer != "least_response_time" || u.CircuitBreaker.ConsecutiveFailures != 3 || u.Outlier.Consecutive5xx != 3 ||
		!slices.Contains(u.Retries.On, "gateway_error") {
		t.Errorf("frontend after the switch: %+v", u)
	}
}

// TestPrepareDir: the demo's folder is created, emptied when a previous
// run made it, and refused when it holds anything else.
func TestPrepareDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo-run")
	if err := prepareDir(dir); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, "catalog-1.log")
	if err := os.WriteFile(old, []byte("last run"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := prepareDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("a file of the last run survived: %v", err)
	}

	mine := t.TempDir()
	keep := filepath.Join(mine, "notes.txt")
	if err := os.WriteFile(keep, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := prepareDir(mine); err == nil || !strings.Contains(err.Error(), "not made by the demo") {
		t.Errorf("prepareDir of a folder the demo did not make: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("prepareDir touched a folder it did not make: %v", err)
	}
}
