package policy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// refAuthorize is the matching and precedence rules of the package doc,
// written out as plainly as possible: every rule, every From entry, keep
// the best. Authorize must agree with it.
func refAuthorize(rules []Rule, def Action, r Request) (allow bool, rule string) {
	src := r.Source
	authenticated := src.Service != "" || src.SPIFFE != "" || src.JWT || src.APIKeySet != ""
	if !authenticated && !src.Addr.IsValid() {
		return def == Allow, "default"
	}
	// src is the row (1 "*", 2 pattern, 3 name, 4 exact); kind orders
	// the pattern row (5 SPIFFE pattern, 4 claim, 3 cidr, 2 key set,
	// 1 jwt:*); plen the prefix within a kind.
	type rank struct{ dest, src, kind, plen int }
	better := func(a, b rank) bool {
		if a.dest != b.dest {
			return a.dest > b.dest
		}
		if a.src != b.src {
			return a.src > b.src
		}
		if a.kind != b.kind {
			return a.kind > b.kind
		}
		return a.plen > b.plen
	}
	found := false
	var best rank
	var bestAction Action
	var bestName string
	for i, ru := range rules {
		name := ru.Name
		if name == "" {
			name = fmt.Sprintf("rules[%d]", i)
		}
		var rk rank
		switch ru.To {
		case r.Destination:
			rk.dest = 2
		case "*":
			rk.dest = 1
		default:
			continue
		}
		if !refConditions(ru, r) {
			continue
		}
		for _, f := range ru.From {
			rk := rk
			id := src.SPIFFE
			if !authenticated && !strings.HasPrefix(f, "cidr:") {
				continue
			}
			switch {
			case f == "*":
				rk.src = 1
			case strings.HasPrefix(f, "spiffe://") && strings.HasSuffix(f, "/*"):
				prefix := strings.TrimSuffix(f, "*")
				if id == "" || !strings.HasPrefix(id, prefix) || id == prefix {
					continue
				}
				rk.src, rk.kind, rk.plen = 2, 5, len(prefix)
			case strings.HasPrefix(f, "spiffe://"):
				if id != f {
					continue
				}
				rk.src = 4
			case f == "jwt:*":
				if !src.JWT {
					continue
				}
				rk.src, rk.kind = 2, 1
			case strings.HasPrefix(f, "jwt:sub="):
				if !src.JWT || src.Subject == "" || src.Subject != f[len("jwt:sub="):] {
					continue
				}
				rk.src = 4
			case strings.HasPrefix(f, "jwt:"):
				claim, value, _ := strings.Cut(f[len("jwt:"):], "=")
				if !src.JWT || !refClaim(src.Claims[claim], value, claim == "scope") {
					continue
				}
				rk.src, rk.kind = 2, 4
			case strings.HasPrefix(f, "apikey:") && strings.HasSuffix(f, "/*"):
				if src.APIKeySet == "" || "apikey:"+src.APIKeySet+"/*" != f {
					continue
				}
				rk.src, rk.kind = 2, 2
			case strings.HasPrefix(f, "apikey:"):
				if src.APIKeySet == "" || "apikey:"+src.APIKeySet+"/"+src.APIKeyID != f {
					continue
				}
				rk.src = 4
			case strings.HasPrefix(f, "cidr:"):
				p := netip.MustParsePrefix(f[len("cidr:"):])
				if !p.Contains(src.Addr.Unmap()) {
					continue
				}
				rk.src, rk.kind, rk.plen = 2, 3, p.Bits()
			default:
				if src.Service != f {
					continue
				}
				rk.src = 3
			}
			switch {
			case !found, better(rk, best), rk == best && ru.Action == Deny && bestAction == Allow:
				found, best, bestAction, bestName = true, rk, ru.Action, name
			}
		}
	}
	if !found {
		return def == Allow, "default"
	}
	return bestAction == Allow, bestName
}

// refClaim reports whether claim value v holds want: equal, an element of
// a list, or for the scope claim one of its space-separated words.
func refClaim(v any, want string, scope bool) bool {
	switch v := v.(type) {
	case string:
		if scope {
			return slices.Contains(strings.Fields(v), want)
		}
		return v == want
	case []any:
		return slices.Contains(v, any(want))
	case []string:
		return slices.Contains(v, want)
	}
	return false
}

func refConditions(ru Rule, r Request) bool {
	if len(ru.Methods) > 0 {
		ok := false
		for _, m := range ru.Methods {
			ok = ok || strings.ToUpper(m) == r.Method
		}
		if !ok {
			return false
		}
	}
	if len(ru.Paths) > 0 {
		ok := false
		for _, p := range ru.Paths {
			ok = ok || (p.Exact != "" && p.Exact == r.Path) || (p.Prefix != "" && strings.HasPrefix(r.Path, p.Prefix))
		}
		if !ok {
			return false
		}
	}
	for _, h := range ru.Headers {
		vals := r.Header.Values(h.Name)
		v := strings.Join(vals, ",")
		var m bool
		switch {
		case h.Present:
			m = len(vals) > 0
		case h.Exact != "":
			m = len(vals) > 0 && v == h.Exact
		default:
			m = len(vals) > 0 && strings.HasPrefix(v, h.Prefix)
		}
		if m == h.Invert {
			return false
		}
	}
	return true
}

// Vocabularies small enough that random rules and requests collide often.
var (
	genFrom = []string{"web", "api", "*", "spiffe://mesh.local/ns/prod/svc/web", "spiffe://mesh.local/ns/dev/svc/web",
		"spiffe://mesh.local/ns/prod/*", "spiffe://mesh.local/ns/prod/svc/*", "spiffe://mesh.local/*", "spiffe://other.td/*",
		"spiffe://mesh.local/ns/pro/*",
		"jwt:sub=alice", "jwt:sub=bob", "jwt:groups=admin", "jwt:tenant=acme", "jwt:scope=orders.write", "jwt:*",
		"apikey:partners/acme", "apikey:partners/*", "apikey:others/*",
		"cidr:10.0.0.0/8", "cidr:10.1.0.0/16", "cidr:203.0.113.0/24", "cidr:0.0.0.0/0", "cidr:2001:db8::/32"}
	genTo      = []string{"cart", "*", "orders"}
	genMethods = []string{"GET", "post", "DELETE"}
	genPaths   = []PathMatch{{Exact: "/admin"}, {Prefix: "/api/"}, {Prefix: "/"}, {Exact: "/"}, {Prefix: "/api"}}
	genHeaders = []HeaderMatch{{Name: "X-A", Present: true}, {Name: "x-a", Exact: "1"}, {Name: "X-A", Prefix: "1"},
		{Name: "X-A", Exact: "1,2"}, {Name: "X-B", Present: true, Invert: true}, {Name: "X-A", Exact: "1", Invert: true}}
	genSources = []Source{webProd, webDev, apiProd, apiDev, other, idOnly, anon,
		{Service: "web"}, {SPIFFE: "spiffe://mesh.local/ns/prod/"}, {SPIFFE: "spiffe://mesh.local/ns/production/svc/x", Service: "x"},
		alice, bob, noSub, acmeKey, anon10, anonV6, anonNet,
		{Service: "web", SPIFFE: "spiffe://mesh.local/ns/prod/svc/web", JWT: true, Subject: "alice", Addr: netip.MustParseAddr("10.1.2.3")}}
	genReqPaths = []string{"/", "/admin", "/admin/", "/api", "/api/", "/api/x", "/apiary", ""}
	genMethodsR = []string{"GET", "POST", "DELETE", "get", ""}
	genHeaderV  = [][]string{nil, {"1"}, {"1", "2"}, {"2"}, {"12"}, {""}}
)

// bytePicker turns fuzz input into choices; past the end it picks 0.
type bytePicker struct{ b []byte }

func (p *bytePicker) pick(n int) int {
	if len(p.b) == 0 {
		return 0
	}
	v := int(p.b[0])
	p.b = p.b[1:]
	return v % n
}

// genCase builds rules, a default and a request from choices.
func genCase(pick func(int) int) ([]Rule, Action, Request) {
	n := pick(8)
	rules := make([]Rule, n)
	for i := range rules {
		r := &rules[i]
		if pick(4) > 0 {
			r.Name = fmt.Sprintf("r%d", i)
		}
		for k := 1 + pick(3); k > 0; k-- {
			r.From = append(r.From, genFrom[pick(len(genFrom))])
		}
		r.To = genTo[pick(len(genTo))]
		r.Action = Action(pick(2))
		for k := pick(3) - 1; k > 0; k-- {
			r.Methods = append(r.Methods, genMethods[pick(len(genMethods))])
		}
		for k := pick(3) - 1; k > 0; k-- {
			r.Paths = append(r.Paths, genPaths[pick(len(genPaths))])
		}
		for k := pick(4) - 2; k > 0; k-- {
			r.Headers = append(r.Headers, genHeaders[pick(len(genHeaders))])
		}
	}
	req := Request{
		Source:      genSources[pick(len(genSources))],
		Destination: genTo[pick(len(genTo))],
		Method:      genMethodsR[pick(len(genMethodsR))],
		Path:        genReqPaths[pick(len(genReqPaths))],
	}
	if a := genHeaderV[pick(len(genHeaderV))]; a != nil {
		req.Header = http.Header{"X-A": a}
	}
	if pick(2) == 1 {
		if req.Header == nil {
			req.Header = http.Header{}
		}
		req.Header["X-B"] = []string{"x"}
	}
	return rules, Action(pick(2)), req
}

func checkAgainstReference(t *testing.T, rules []Rule, def Action, r Request) {
	t.Helper()
	p, err := NewPolicy(rules, def)
	if err != nil {
		t.Fatalf("NewPolicy(%+v): %v", rules, err)
	}
	d := p.Authorize(context.Background(), r)
	if again := p.Authorize(context.Background(), r); again != d {
		t.Fatalf("not deterministic: %+v then %+v", d, again)
	}
	allow, name := refAuthorize(rules, def, r)
	if d.Allow != allow || d.Rule != name {
		t.Fatalf("rules %+v\ndefault %v\nrequest %+v\nAuthorize: %+v\nreference: allow=%v rule=%q", rules, def, r, d, allow, name)
	}
	// The same rules through a Table, split into two rule sets named so
	// that their merge keeps the order, decide the same.
	tb := NewTable(def)
	half := len(rules) / 2
	named := func(rs []Rule, off int) []Rule {
		out := append([]Rule(nil), rs...)
		for i := range out {
			if out[i].Name == "" {
				out[i].Name = fmt.Sprintf("rules[%d]", off+i)
			}
		}
		return out
	}
	if err := tb.SetRules("a", named(rules[:half], 0)); err != nil {
		t.Fatal(err)
	}
	if err := tb.SetRules("b", named(rules[half:], half)); err != nil {
		t.Fatal(err)
	}
	if td := tb.Authorize(context.Background(), r); td != d {
		t.Fatalf("Table: %+v, Policy: %+v", td, d)
	}
}

func FuzzAuthorize(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{3, 1, 0, 2, 0, 1, 0, 0, 0, 0, 1, 2, 1, 1, 0, 1, 0, 0, 2, 1, 2, 0, 1, 0, 1, 3})
	f.Add([]byte("the quick brown fox jumps over the lazy dog"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := &bytePicker{b: data}
		rules, def, r := genCase(p.pick)
		checkAgainstReference(t, rules, def, r)
	})
}

// TestAuthorizeMatchesReference runs the fuzz property over many seeded
// random cases, so a plain go test covers it too.
func TestAuthorizeMatchesReference(t *testing.T) {
	n := 20000
	if testing.Short() {
		n = 2000
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range n {
		rules, def, r := genCase(rng.IntN)
		checkAgainstReference(t, rules, def, r)
	}
}
