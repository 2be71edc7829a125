package redirect

import (
	"errors"
	"strings"
	"testing"
)

func TestRedirectIPTablesRules(t *testing.T) {
	r := Default()
	r.ProxyGID = 1337
	r.AppPorts = []PortRange{{8081, 8081}}
	r.LoopbackPorts = []PortRange{{9000, 9001}}
	r.ExcludeOutboundPorts = []PortRange{{22, 22}, {8300, 8302}}
	r.ExcludeInboundPorts = []PortRange{{22, 22}}
	want := `*nat
:SIDEMESH_PREROUTING - [0:0]
:SIDEMESH_IN_REDIRECT - [0:0]
:SIDEMESH_OUTPUT - [0:0]
:SIDEMESH_REDIRECT - [0:0]
-A SIDEMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A SIDEMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 21000
-A SIDEMESH_PREROUTING -p tcp --dport 21000 -j RETURN
-A SIDEMESH_PREROUTING -p tcp --dport 22 -j RETURN
-A SIDEMESH_PREROUTING -p tcp --dport 8081 -j SIDEMESH_IN_REDIRECT
-A SIDEMESH_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A SIDEMESH_OUTPUT -p tcp --dport 22 -j RETURN
-A SIDEMESH_OUTPUT -p tcp --dport 8300:8302 -j RETURN
-A SIDEMESH_OUTPUT -o lo -p tcp --dport 9000:9001 -j SIDEMESH_REDIRECT
-A SIDEMESH_OUTPUT -o lo -j RETURN
-A SIDEMESH_OUTPUT -p tcp -j SIDEMESH_REDIRECT
COMMIT
`
	if got := r.IPTables(); got != want {
		t.Errorf("IPTables() =\n%s\nwant\n%s", got, want)
	}
}

func TestRedirectIPTablesAllInboundAndUID(t *testing.T) {
	r := Default()
	r.ProxyUID = 5678
	got := r.IPTables()
	for _, line := range []string{
		"-A SIDEMESH_PREROUTING -p tcp -j SIDEMESH_IN_REDIRECT\n",
		"-A SIDEMESH_OUTPUT -m owner --uid-owner 5678 -j RETURN\n",
		"-A SIDEMESH_PREROUTING -p tcp --dport 19000 -j RETURN\n",
		"-A SIDEMESH_OUTPUT -p tcp --dport 7946 -j RETURN\n",
	} {
		if !strings.Contains(got, line) {
			t.Errorf("IPTables() lacks %q:\n%s", line, got)
		}
	}
	r.InboundDisabled = true
	if got := r.IPTables(); strings.Contains(got, "-A SIDEMESH_PREROUTING") {
		t.Errorf("inbound disabled but rules in %s:\n%s", ChainInbound, got)
	}
}

func TestRedirectNFTablesRules(t *testing.T) {
	r := Default()
	r.ProxyUID = 1337
	r.AppPorts = []PortRange{{8081, 8081}}
	r.ExcludeOutboundPorts = []PortRange{{8500, 8502}, {22, 22}, {8501, 8503}}
	r.ExcludeInboundPorts = nil
	r.IPv6 = true
	want := `add table ip sidemesh
delete table ip sidemesh
add table inet sidemesh
delete table inet sidemesh
table inet sidemesh {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 21000 return
		tcp dport { 8081 } redirect to :21000
	}
	chain output {
		type nat hook output priority -100; policy accept;
		meta skuid 1337 return
		tcp dport { 22, 8500-8503 } return
		oifname "lo" return
		meta l4proto tcp redirect to :15001
	}
}
`
	if got := r.NFTables(); got != want {
		t.Errorf("NFTables() =\n%s\nwant\n%s", got, want)
	}
}

func TestRedirectNFTablesIPv4Only(t *testing.T) {
	r := Default()
	r.ProxyUID = 1
	if got := r.NFTables(); !strings.Contains(got, "\ntable ip sidemesh {\n") {
		t.Errorf("without IPv6, not a table of family ip:\n%s", got)
	}
}

func TestRedirectParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "", want: ""},
		{in: "22, 8300-8302,7946", want: "22 8300-8302 7946"},
		{in: "0", err: `port "0": not a port number`},
		{in: "22,x", err: `port "x"`},
		{in: "10-5", err: "end before start"},
		{in: "10-70000", err: "not a port number"},
	} {
		got, err := ParsePorts(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePorts(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		var s []string
		for _, p := range got {
			s = append(s, p.String())
		}
		if err != nil || strings.Join(s, " ") != tc.want {
			t.Errorf("ParsePorts(%q) = %v, %v; want %s", tc.in, s, err, tc.want)
		}
	}
}

func TestRedirectValidate(t *testing.T) {
	r := Default()
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "--proxy-uid or --proxy-gid") {
		t.Errorf("no proxy user: %v", err)
	}
	r.ProxyUID, r.OutboundPort = 1, 0
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "outbound port 0") {
		t.Errorf("port 0: %v", err)
	}
}

func TestRedirectResolve(t *testing.T) {
	installed := map[string]bool{}
	old := lookPath
	t.Cleanup(func() { lookPath = old })
	lookPath = func(cmd string) (string, error) {
		if installed[cmd] {
			return "/sbin/" + cmd, nil
		}
		return "", errors.New("not found")
	}
	if _, err := Resolve(BackendAuto); err == nil {
		t.Error("auto with nothing installed: no error")
	}
	installed["nft"] = true
	if b, err := Resolve(BackendAuto); b != BackendNFTables || err != nil {
		t.Errorf("auto with nft only = %q, %v", b, err)
	}
	installed["iptables"], installed["iptables-restore"] = true, true
	if b, err := Resolve(""); b != BackendIPTables || err != nil {
		t.Errorf("auto with both = %q, %v", b, err)
	}
	if _, err := Resolve("ipfw"); err == nil || !strings.Contains(err.Error(), `unknown backend "ipfw"`) {
		t.Errorf("ipfw: %v", err)
	}
}
