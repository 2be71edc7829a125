package policy

import (
	"context"
	"net/http"
	"testing"
)

// TestPermissionGroups checks Consul's L7 intention semantics: the
// permissions of one intention are tried in order, the first match
// decides, and a request matching none gets the default instead of a
// lower rule.
func TestPermissionGroups(t *testing.T) {
	group := "consul intention web -> cart"
	rules := []Rule{
		{Name: group + " permission 1", Group: group, From: []string{"web"}, To: "cart", Action: Allow,
			Methods: []string{"GET"}, Paths: []PathMatch{{Prefix: "/api/"}}},
		{Name: group + " permission 2", Group: group, From: []string{"web"}, To: "cart", Action: Deny},
		{Name: "consul intention web -> cart permission-less", From: []string{"*"}, To: "cart", Action: Allow},
	}
	p, err := NewPolicy(rules, Deny)
	if err != nil {
		t.Fatal(err)
	}
	web := Source{Service: "web", SPIFFE: "spiffe://mesh.local/ns/default/svc/web"}
	for _, tt := range []struct {
		src          Source
		method, path string
		allow        bool
		rule         string
	}{
		// First match wins: the allow before the catch-all deny.
		{web, "GET", "/api/items", true, group + " permission 1"},
		{web, "POST", "/api/items", false, group + " permission 2"},
		{web, "GET", "/admin", false, group + " permission 2"},
		// Another caller is not in the group: the * rule applies.
		{Source{Service: "ops"}, "POST", "/admin", true, "consul intention web -> cart permission-less"},
	} {
		d := p.Authorize(context.Background(), Request{Source: tt.src, Destination: "cart", Method: tt.method, Path: tt.path, Header: http.Header{}})
		if d.Allow != tt.allow || d.Rule != tt.rule {
			t.Errorf("%s %s %s: %+v, want allow=%v by %q", tt.src.Service, tt.method, tt.path, d, tt.allow, tt.rule)
		}
	}

	// A group whose permissions do not match ends at the default: it does
	// not fall through to the lower * allow.
	onlyGet, err := NewPolicy([]Rule{rules[0], rules[2]}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	d := onlyGet.Authorize(context.Background(), Request{Source: web, Destination: "cart", Method: "DELETE", Path: "/api/x", Header: http.Header{}})
	if d.Allow || d.Rule != DefaultRule {
		t.Errorf("unmatched group fell through: %+v, want the default deny", d)
	}

	// Rules of one group must agree on From and To.
	bad := rules[1]
	bad.From = []string{"other"}
	if _, err := NewPolicy([]Rule{rules[0], bad}, Deny); err == nil {
		t.Error("a group with two different From lists was accepted")
	}
}
