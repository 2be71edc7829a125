package policy

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// Edge callers: JWT holders, API key holders and anonymous clients, each
// with a client address.
var (
	alice = Source{JWT: true, Subject: "alice", Addr: netip.MustParseAddr("10.1.2.3"), Claims: map[string]any{
		"sub": "alice", "groups": []any{"admin", "dev"}, "scope": "orders.read orders.write", "tenant": "acme", "level": 3.0,
	}}
	bob     = Source{JWT: true, Subject: "bob", Addr: netip.MustParseAddr("203.0.113.9"), Claims: map[string]any{"sub": "bob", "tenant": "globex", "scope": "orders.read"}}
	noSub   = Source{JWT: true, Addr: netip.MustParseAddr("10.9.9.9"), Claims: map[string]any{"groups": []string{"admin"}}}
	acmeKey = Source{APIKeySet: "partners", APIKeyID: "acme", Addr: netip.MustParseAddr("2001:db8::1")}
	anon10  = Source{Addr: netip.MustParseAddr("10.1.2.3")}
	anonV6  = Source{Addr: netip.MustParseAddr("::ffff:10.1.2.3")} // IPv4-mapped: matches as 10.1.2.3
	anonNet = Source{Addr: netip.MustParseAddr("198.51.100.1")}
)

func edgeGet(src Source, path string) Request {
	return Request{Source: src, Destination: "shop", Method: "GET", Path: path}
}

func TestAuthorizeEdge(t *testing.T) {
	cases := []struct {
		name      string
		rules     []Rule
		def       Action
		req       Request
		wantAllow bool
		wantRule  string
	}{
		// Each form matches its callers.
		{"jwt:sub= allows its subject", []Rule{allow("a", "shop", "jwt:sub=alice")}, Deny, edgeGet(alice, "/"), true, "a"},
		{"jwt:sub= is not another subject", []Rule{allow("a", "shop", "jwt:sub=alice")}, Deny, edgeGet(bob, "/"), false, "default"},
		{"jwt:sub= on one route only", []Rule{allow("a", "shop", "jwt:sub=alice")}, Deny,
			Request{Source: alice, Destination: "admin", Method: "GET", Path: "/"}, false, "default"},
		{"claim: string equal", []Rule{allow("c", "shop", "jwt:tenant=acme")}, Deny, edgeGet(alice, "/"), true, "c"},
		{"claim: string not equal", []Rule{allow("c", "shop", "jwt:tenant=acme")}, Deny, edgeGet(bob, "/"), false, "default"},
		{"claim: list holds it", []Rule{allow("c", "shop", "jwt:groups=dev")}, Deny, edgeGet(alice, "/"), true, "c"},
		{"claim: []string list holds it", []Rule{allow("c", "shop", "jwt:groups=admin")}, Deny, edgeGet(noSub, "/"), true, "c"},
		{"claim: list lacks it", []Rule{allow("c", "shop", "jwt:groups=ops")}, Deny, edgeGet(alice, "/"), false, "default"},
		{"claim: scope holds the word", []Rule{allow("c", "shop", "jwt:scope=orders.write")}, Deny, edgeGet(alice, "/"), true, "c"},
		{"claim: scope lacks the word", []Rule{allow("c", "shop", "jwt:scope=orders.write")}, Deny, edgeGet(bob, "/"), false, "default"},
		{"claim: scope is not matched by a part of a word", []Rule{allow("c", "shop", "jwt:scope=orders")}, Deny, edgeGet(alice, "/"), false, "default"},
		{"claim: a number never matches", []Rule{allow("c", "shop", "jwt:level=3")}, Deny, edgeGet(alice, "/"), false, "default"},
		{"claim: an absent claim never matches", []Rule{allow("c", "shop", "jwt:team=x")}, Deny, edgeGet(alice, "/"), false, "default"},
		{"claim: an API key holder has no claims", []Rule{allow("c", "shop", "jwt:tenant=acme")}, Deny, edgeGet(acmeKey, "/"), false, "default"},
		{"jwt:* matches a token without sub", []Rule{allow("j", "shop", "jwt:*")}, Deny, edgeGet(noSub, "/"), true, "j"},
		{"jwt:* is not an API key", []Rule{allow("j", "shop", "jwt:*")}, Deny, edgeGet(acmeKey, "/"), false, "default"},
		{"apikey exact", []Rule{allow("k", "shop", "apikey:partners/acme")}, Deny, edgeGet(acmeKey, "/"), true, "k"},
		{"apikey exact, other id", []Rule{allow("k", "shop", "apikey:partners/globex")}, Deny, edgeGet(acmeKey, "/"), false, "default"},
		{"apikey exact, other set", []Rule{allow("k", "shop", "apikey:others/acme")}, Deny, edgeGet(acmeKey, "/"), false, "default"},
		{"apikey set", []Rule{allow("k", "shop", "apikey:partners/*")}, Deny, edgeGet(acmeKey, "/"), true, "k"},
		{"apikey set is not a JWT", []Rule{allow("k", "shop", "apikey:partners/*")}, Deny, edgeGet(alice, "/"), false, "default"},
		{"cidr v4", []Rule{allow("n", "shop", "cidr:10.0.0.0/8")}, Deny, edgeGet(alice, "/"), true, "n"},
		{"cidr v4, outside", []Rule{allow("n", "shop", "cidr:10.0.0.0/8")}, Deny, edgeGet(bob, "/"), false, "default"},
		{"cidr v6", []Rule{allow("n", "shop", "cidr:2001:db8::/32")}, Deny, edgeGet(acmeKey, "/"), true, "n"},
		{"cidr v6 does not match v4", []Rule{allow("n", "shop", "cidr:::/0")}, Deny, edgeGet(alice, "/"), false, "default"},
		{"cidr single address", []Rule{deny("n", "shop", "cidr:203.0.113.9/32")}, Allow, edgeGet(bob, "/"), false, "n"},
		{"cidr: IPv4-mapped client matches the IPv4 prefix", []Rule{allow("n", "shop", "cidr:10.0.0.0/8")}, Deny, edgeGet(anonV6, "/"), true, "n"},
		{"* is any JWT", []Rule{allow("any", "shop", "*")}, Deny, edgeGet(noSub, "/"), true, "any"},
		{"* is any API key", []Rule{allow("any", "shop", "*")}, Deny, edgeGet(acmeKey, "/"), true, "any"},

		// Anonymous callers: cidr entries only, else the default.
		{"anonymous is not *", []Rule{allow("any", "shop", "*")}, Deny, edgeGet(anon10, "/"), false, "default"},
		{"anonymous is not jwt:*", []Rule{allow("j", "*", "jwt:*")}, Deny, edgeGet(anon10, "/"), false, "default"},
		{"anonymous gets default allow past * deny", []Rule{deny("any", "*", "*")}, Allow, edgeGet(anon10, "/"), true, "default"},
		{"anonymous allowed by cidr", []Rule{allow("n", "shop", "cidr:10.0.0.0/8")}, Deny, edgeGet(anon10, "/"), true, "n"},
		{"anonymous denied by cidr", []Rule{deny("n", "*", "cidr:10.0.0.0/8")}, Allow, edgeGet(anon10, "/"), false, "n"},
		{"anonymous outside every cidr", []Rule{allow("n", "shop", "cidr:10.0.0.0/8")}, Deny, edgeGet(anonNet, "/"), false, "default"},
		{"anonymous: exact-route cidr beats any-route cidr",
			[]Rule{deny("all", "*", "cidr:10.0.0.0/8"), allow("shop", "shop", "cidr:10.0.0.0/8")}, Deny, edgeGet(anon10, "/"), true, "shop"},
		{"anonymous: cidr rule's conditions apply",
			[]Rule{with(allow("n", "shop", "cidr:10.0.0.0/8"), func(r *Rule) { r.Paths = []PathMatch{{Prefix: "/public/"}} })}, Deny,
			edgeGet(anon10, "/admin"), false, "default"},

		// Precedence: exact principals, then names, then the pattern row
		// in its order, then *.
		{"jwt:sub allow beats cidr deny", []Rule{deny("net", "shop", "cidr:10.0.0.0/8"), allow("sub", "shop", "jwt:sub=alice")}, Deny, edgeGet(alice, "/"), true, "sub"},
		{"apikey allow beats cidr deny", []Rule{deny("net", "shop", "cidr:2001:db8::/32"), allow("key", "shop", "apikey:partners/acme")}, Deny, edgeGet(acmeKey, "/"), true, "key"},
		{"jwt:sub and SPIFFE rank together: deny wins",
			[]Rule{allow("id", "shop", "spiffe://mesh.local/ns/prod/svc/web"), deny("sub", "shop", "jwt:sub=alice")}, Allow,
			edgeGet(Source{Service: "web", SPIFFE: "spiffe://mesh.local/ns/prod/svc/web", JWT: true, Subject: "alice"}, "/"), false, "sub"},
		{"jwt:sub and apikey rank together: rule order among allows",
			[]Rule{allow("key", "shop", "apikey:partners/acme"), allow("sub", "shop", "jwt:sub=alice")}, Deny,
			edgeGet(Source{JWT: true, Subject: "alice", APIKeySet: "partners", APIKeyID: "acme"}, "/"), true, "key"},
		{"claim allow beats cidr deny", []Rule{deny("net", "shop", "cidr:10.0.0.0/8"), allow("admins", "shop", "jwt:groups=admin")}, Deny, edgeGet(alice, "/"), true, "admins"},
		{"cidr deny beats jwt:* allow", []Rule{allow("jwt", "shop", "jwt:*"), deny("net", "shop", "cidr:10.0.0.0/8")}, Allow, edgeGet(alice, "/"), false, "net"},
		{"cidr deny beats * allow", []Rule{allow("any", "shop", "*"), deny("net", "shop", "cidr:10.0.0.0/8")}, Allow, edgeGet(alice, "/"), false, "net"},
		{"cidr deny beats apikey set allow", []Rule{allow("set", "shop", "apikey:partners/*"), deny("net", "shop", "cidr:2001:db8::/32")}, Allow, edgeGet(acmeKey, "/"), false, "net"},
		{"longer cidr beats shorter", []Rule{deny("wide", "shop", "cidr:10.0.0.0/8"), allow("narrow", "shop", "cidr:10.1.0.0/16")}, Deny, edgeGet(alice, "/"), true, "narrow"},
		{"equal cidr: deny wins", []Rule{allow("a", "shop", "cidr:10.0.0.0/8"), deny("d", "shop", "cidr:10.0.0.0/8")}, Allow, edgeGet(alice, "/"), false, "d"},
		{"claims at equal precedence: deny wins", []Rule{allow("admins", "shop", "jwt:groups=admin"), deny("acme", "shop", "jwt:tenant=acme")}, Allow, edgeGet(alice, "/"), false, "acme"},
		{"apikey set beats jwt:*", []Rule{deny("jwt", "shop", "jwt:*"), allow("set", "shop", "apikey:partners/*")}, Deny,
			edgeGet(Source{JWT: true, APIKeySet: "partners", APIKeyID: "x"}, "/"), true, "set"},
		{"SPIFFE pattern beats claim", []Rule{deny("c", "shop", "jwt:tenant=acme"), allow("p", "shop", "spiffe://mesh.local/*")}, Deny,
			edgeGet(Source{SPIFFE: "spiffe://mesh.local/x", JWT: true, Claims: map[string]any{"tenant": "acme"}}, "/"), true, "p"},
		{"jwt:* beats *", []Rule{deny("any", "shop", "*"), allow("jwt", "shop", "jwt:*")}, Deny, edgeGet(bob, "/"), true, "jwt"},
		{"exact route beats any route, across rows", []Rule{allow("sub-any", "*", "jwt:sub=alice"), deny("net", "shop", "cidr:10.0.0.0/8")}, Allow, edgeGet(alice, "/"), false, "net"},
		{"non-matching exact rule falls through to cidr",
			[]Rule{deny("net", "shop", "cidr:10.0.0.0/8"), with(allow("sub", "shop", "jwt:sub=alice"), func(r *Rule) { r.Methods = []string{"POST"} })}, Allow,
			edgeGet(alice, "/"), false, "net"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewPolicy(c.rules, c.def)
			if err != nil {
				t.Fatal(err)
			}
			d := p.Authorize(context.Background(), c.req)
			if d.Allow != c.wantAllow || d.Rule != c.wantRule {
				t.Errorf("Authorize = %+v, want allow=%v by %q", d, c.wantAllow, c.wantRule)
			}
			if allow, rule := refAuthorize(c.rules, c.def, c.req); allow != c.wantAllow || rule != c.wantRule {
				t.Errorf("reference = allow=%v by %q, want allow=%v by %q", allow, rule, c.wantAllow, c.wantRule)
			}
		})
	}
}

func TestAuthorizeEdgeUnauthenticatedReason(t *testing.T) {
	p, err := NewPolicy([]Rule{allow("any", "*", "*")}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	d := p.Authorize(context.Background(), edgeGet(anon10, "/"))
	if d.Allow || !strings.Contains(d.Reason, "not authenticated") {
		t.Errorf("anonymous caller: %+v, want the default deny naming the missing authentication", d)
	}
}

func TestValidateEdgeSources(t *testing.T) {
	ok := Rule{To: "shop"}
	valid := []string{"jwt:sub=alice", "jwt:sub=a=b", "jwt:groups=admin", "jwt:https.example.com-roles_x=a b", "jwt:scope=orders.write", "jwt:*",
		"apikey:partners/acme", "apikey:partners/a:b/c", "apikey:partners/*", "cidr:10.0.0.0/8", "cidr:2001:db8::/32", "cidr:192.0.2.7/32", "cidr:0.0.0.0/0", "cidr:::/0"}
	for _, f := range valid {
		if err := with(ok, func(r *Rule) { r.From = []string{f} }).Validate(); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	cases := []struct {
		from string
		want []string
	}{
		{"jwt:", []string{"no '='", "jwt:sub=<subject>", "jwt:*"}},
		{"jwt:alice", []string{"no '='", "jwt:<claim>=<value>"}},
		{"jwt:sub=", []string{"empty value", "jwt:sub=<value>"}},
		{"jwt:groups=", []string{"empty value", "jwt:groups=<value>"}},
		{"jwt:=alice", []string{"no claim name"}},
		{"jwt:gr oups=a", []string{"claim name", "letters, digits"}},
		{"jwt:scope=a b", []string{"one word"}},
		{"jwt:sub=a\nb", []string{"NUL, CR or LF"}},
		{"apikey:partners", []string{"no '/'", "apikey:<set>/<id>", "apikey:<set>/*"}},
		{"apikey:/acme", []string{"no key set name"}},
		{"apikey:partners/", []string{"no key ID", "apikey:partners/<id>"}},
		{"apikey:part ners/acme", []string{"key set", "not a service name"}},
		{"cidr:10.0.0.0", []string{"no prefix length", "cidr:10.0.0.0/32"}},
		{"cidr:2001:db8::1", []string{"no prefix length", "cidr:2001:db8::1/128"}},
		{"cidr:10.1.2.3/8", []string{"host bits", "cidr:10.0.0.0/8"}},
		{"cidr:10.0.0.0/33", []string{"not a network", "cidr:10.0.0.0/8"}},
		{"cidr:", []string{"not a network"}},
		{"cidr:example.com/8", []string{"not a network"}},
		{"cidr:::ffff:10.0.0.0/104", []string{"IPv4-mapped"}},
		{"cidr:2001:DB8::/32", []string{"usual form", "cidr:2001:db8::/32"}},
		{"cidr:010.0.0.0/8", []string{"not a network"}},
		{"oidc:sub=alice", []string{`unknown prefix "oidc:"`, "jwt:, apikey: or cidr:"}},
		{"JWT:sub=alice", []string{`unknown prefix "JWT:"`}},
	}
	for _, c := range cases {
		t.Run(c.from, func(t *testing.T) {
			err := with(ok, func(r *Rule) { r.From = []string{c.from} }).Validate()
			if err == nil {
				t.Fatalf("Validate accepted %q", c.from)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to mention %q", err, w)
				}
			}
		})
	}
}

func TestAuthorizeEdgeDoesNotAllocate(t *testing.T) {
	p, err := NewPolicy(edgeBenchRules(), Deny)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Request{edgeGet(alice, "/orders/1"), edgeGet(bob, "/"), edgeGet(acmeKey, "/"), edgeGet(anon10, "/")} {
		if allocs := testing.AllocsPerRun(100, func() { p.Authorize(context.Background(), r) }); allocs != 0 {
			t.Errorf("Authorize(%+v): %v allocations, want 0", r.Source, allocs)
		}
	}
}

// FuzzParseSource: any From entry either parses to a kind or is refused
// with a message that quotes it; a parsed cidr entry is canonical.
func FuzzParseSource(f *testing.F) {
	for _, s := range []string{"*", "web", "spiffe://mesh.local/ns/prod/*", "jwt:sub=a", "jwt:groups=x", "jwt:*", "jwt:", "jwt:=",
		"apikey:p/a", "apikey:p/*", "apikey:", "cidr:10.0.0.0/8", "cidr:::/0", "cidr:1.2.3.4", "cidr:::ffff:1.2.3.4/128", "cidr:::0.0.0.0/100", "x:y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseSource(s)
		switch {
		case err != nil:
			if s != "" && !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Errorf("parseSource(%q) = %v: the error does not name the entry", s, err)
			}
		case m.kind < sourceAny || m.kind > sourceSPIFFE:
			t.Errorf("parseSource(%q) = kind %d", s, m.kind)
		case m.kind == sourceCIDR && (m.prefix.Masked() != m.prefix || "cidr:"+m.prefix.String() != s):
			t.Errorf("parseSource(%q) = %v: not canonical", s, m.prefix)
		}
	})
}
