package consul

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery/consul/consultest"
	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/policy"
)

func l4(src, dst, action string) *api.Intention {
	return &api.Intention{SourceNS: "default", SourceName: src, DestinationNS: "default", DestinationName: dst,
		SourceType: api.IntentionSourceConsul, Action: api.IntentionAction(action)}
}

func l7(src, dst string, perms ...*api.IntentionPermission) *api.Intention {
	ixn := l4(src, dst, "")
	ixn.Permissions = perms
	return ixn
}

func perm(action string, h *api.IntentionHTTPPermission) *api.IntentionPermission {
	return &api.IntentionPermission{Action: api.IntentionAction(action), HTTP: h}
}

func TestTranslateIntentions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		ixns  []*api.Intention
		gated map[string]bool // destinations whose config entry requires a JWT
		want  []policy.Rule
		warns []string // substrings of the warnings logged, in any order
	}{
		{
			name: "none",
			want: []policy.Rule{},
		},
		{
			name: "l4",
			ixns: []*api.Intention{l4("web", "cart", "deny"), l4("*", "cart", "allow"), l4("ops", "*", "allow")},
			want: []policy.Rule{
				{Name: "consul intention web -> cart", From: []string{"web"}, To: "cart", Action: policy.Deny},
				{Name: "consul intention * -> cart", From: []string{"*"}, To: "cart", Action: policy.Allow},
				{Name: "consul intention ops -> *", From: []string{"ops"}, To: "*", Action: policy.Allow},
			},
		},
		{
			name: "l7 in order",
			ixns: []*api.Intention{l7("api", "cart",
				perm("deny", &api.IntentionHTTPPermission{PathExact: "/admin", Header: []api.IntentionHTTPHeaderPermission{{Name: "X-Debug", Present: true}}}),
				perm("allow", &api.IntentionHTTPPermission{PathPrefix: "/api/", Methods: []string{"GET", "HEAD"}}),
				perm("allow", &api.IntentionHTTPPermission{Header: []api.IntentionHTTPHeaderPermission{
					{Name: "X-Env", Exact: "canary"}, {Name: "X-Tenant", Prefix: "acme-", Invert: true},
				}}),
			)},
			want: []policy.Rule{
				{Name: "consul intention api -> cart permission 1", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Deny,
					Paths: []policy.PathMatch{{Exact: "/admin"}}, Headers: []policy.HeaderMatch{{Name: "X-Debug", Present: true}}},
				{Name: "consul intention api -> cart permission 2", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Allow,
					Methods: []string{"GET", "HEAD"}, Paths: []policy.PathMatch{{Prefix: "/api/"}}},
				{Name: "consul intention api -> cart permission 3", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Allow,
					Headers: []policy.HeaderMatch{{Name: "X-Env", Exact: "canary"}, {Name: "X-Tenant", Prefix: "acme-", Invert: true}}},
			},
		},
		{
			name: "paths are normalized",
			ixns: []*api.Intention{l7("api", "cart", perm("allow", &api.IntentionHTTPPermission{PathPrefix: "/a//b/./c/"}))},
			want: []policy.Rule{
				{Name: "consul intention api -> cart permission 1", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Allow,
					Paths: []policy.PathMatch{{Prefix: "/a/b/c/"}}},
			},
		},
		{
			name: "unsupported allow is dropped",
			ixns: []*api.Intention{l7("api", "cart",
				perm("allow", &api.IntentionHTTPPermission{PathRegex: "/v[0-9]+/.*"}),
				perm("allow", &api.IntentionHTTPPermission{PathPrefix: "/x/", Header: []api.IntentionHTTPHeaderPermission{{Name: "X-A", Suffix: ".json"}}}),
				perm("allow", &api.IntentionHTTPPermission{PathPrefix: "/y/", Header: []api.IntentionHTTPHeaderPermission{{Name: "X-A", Exact: "b", IgnoreCase: true}}}),
				&api.IntentionPermission{Action: "allow", JWT: &api.IntentionJWTRequirement{Providers: []*api.IntentionJWTProvider{{Name: "okta"}}}},
				perm("allow", &api.IntentionHTTPPermission{PathPrefix: "/ok/"}),
			)},
			want: []policy.Rule{
				{Name: "consul intention api -> cart permission 5", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Allow,
					Paths: []policy.PathMatch{{Prefix: "/ok/"}}},
			},
			warns: []string{
				`permission 1" unsupported="PathRegex /v[0-9]+/.*"`,
				`permission 2" unsupported="header X-A match Suffix"`,
				`permission 3" unsupported="header X-A match Exact+IgnoreCase"`,
				`permission 4" unsupported="a JWT requirement"`,
			},
		},
		{
			name: "unsupported deny denies more",
			ixns: []*api.Intention{l7("api", "cart",
				perm("deny", &api.IntentionHTTPPermission{PathRegex: "/admin.*", Methods: []string{"POST"}}),
				perm("deny", &api.IntentionHTTPPermission{PathPrefix: "/x/", Header: []api.IntentionHTTPHeaderPermission{{Name: "X-A", Regex: "b+"}, {Name: "X-B", Present: true}}}),
			)},
			want: []policy.Rule{
				{Name: "consul intention api -> cart permission 1", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Deny, Methods: []string{"POST"}},
				{Name: "consul intention api -> cart permission 2", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Deny,
					Paths: []policy.PathMatch{{Prefix: "/x/"}}, Headers: []policy.HeaderMatch{{Name: "X-B", Present: true}}},
			},
			warns: []string{
				`it denies more than in Consul" component=consul-intentions destination=cart intention="consul intention api -> cart permission 1" unsupported="PathRegex /admin.*"`,
				`permission 2" unsupported="header X-A match Regex"`,
			},
		},
		{
			name: "jwt required by the config entry",
			ixns: []*api.Intention{
				l4("web", "cart", "deny"),
				l4("*", "cart", "allow"),
				l7("api", "cart",
					perm("allow", &api.IntentionHTTPPermission{PathPrefix: "/api/"}),
					perm("deny", &api.IntentionHTTPPermission{PathPrefix: "/admin/"}),
				),
				l4("ops", "*", "allow"),
			},
			gated: map[string]bool{"cart": true},
			want: []policy.Rule{
				{Name: "consul intention web -> cart", From: []string{"web"}, To: "cart", Action: policy.Deny},
				{Name: "consul intention api -> cart permission 2", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Deny,
					Paths: []policy.PathMatch{{Prefix: "/admin/"}}},
				{Name: "consul intention ops -> *", From: []string{"ops"}, To: "*", Action: policy.Allow},
			},
			warns: []string{
				`intention="consul intention * -> cart" unsupported="the JWT requirement of its config entry"`,
				`intention="consul intention api -> cart permission 1" unsupported="the JWT requirement of its config entry"`,
				`intention="consul intention api -> cart permission 2" unsupported="the JWT requirement of its config entry"`,
			},
		},
		{
			name: "foreign sources",
			ixns: []*api.Intention{
				func() *api.Intention { i := l4("web", "cart", "allow"); i.SourcePeer = "east"; return i }(),
				func() *api.Intention { i := l4("web", "cart", "deny"); i.SourceSamenessGroup = "g"; return i }(),
				func() *api.Intention { i := l4("web", "cart", "allow"); i.SourceNS = "team-a"; return i }(),
				func() *api.Intention { i := l4("db", "cart", "deny"); i.SourceNS = "team-a"; return i }(),
			},
			want: []policy.Rule{
				{Name: "consul intention team-a/db -> cart", From: []string{"db"}, To: "cart", Action: policy.Deny},
			},
			warns: []string{"source=\"is in cluster peer east\"", "source=\"is sameness group g\"", "an allow from another namespace", "applied to the service name in every namespace"},
		},
		{
			name: "the permissions of an intention are one ordered group",
			ixns: []*api.Intention{
				l7("api", "cart",
					perm("allow", &api.IntentionHTTPPermission{PathPrefix: "/api/", Methods: []string{"GET"}}),
					perm("deny", &api.IntentionHTTPPermission{PathPrefix: "/internal/"}), // disjoint: no warning
					perm("deny", &api.IntentionHTTPPermission{PathPrefix: "/api/", Methods: []string{"POST"}}),
					perm("deny", &api.IntentionHTTPPermission{PathPrefix: "/"}),
				),
				l4("*", "cart", "allow"),
			},
			want: []policy.Rule{
				{Name: "consul intention api -> cart permission 1", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Allow,
					Methods: []string{"GET"}, Paths: []policy.PathMatch{{Prefix: "/api/"}}},
				{Name: "consul intention api -> cart permission 2", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Deny,
					Paths: []policy.PathMatch{{Prefix: "/internal/"}}},
				{Name: "consul intention api -> cart permission 3", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Deny,
					Methods: []string{"POST"}, Paths: []policy.PathMatch{{Prefix: "/api/"}}},
				{Name: "consul intention api -> cart permission 4", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Deny,
					Paths: []policy.PathMatch{{Prefix: "/"}}},
				{Name: "consul intention * -> cart", From: []string{"*"}, To: "cart", Action: policy.Allow},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			log, logs := newLogger(t)
			in := NewIntentions(&api.Client{}, "cart", IntentionOptions{Logger: log})
			got := in.translate(tc.ixns, tc.gated)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("rules:\n got %+v\nwant %+v", got, tc.want)
			}
			for _, r := range got {
				if err := r.Validate(); err != nil {
					t.Errorf("invalid rule: %v", err)
				}
			}
			if _, err := policy.NewPolicy(got, policy.Deny); err != nil {
				t.Errorf("NewPolicy: %v", err)
			}
			for _, w := range tc.warns {
				if n := logs.count(w); n != 1 {
					t.Errorf("warning %q logged %d times, want once", w, n)
				}
			}
			if n, want := logs.count("level=WARN"), len(tc.warns); n != want {
				t.Errorf("%d warnings, want %d:\n%s", n, want, logs.String())
			}
			// Translating the same intentions again warns no more.
			in.translate(tc.ixns, tc.gated)
			if n, want := logs.count("level=WARN"), len(tc.warns); n != want {
				t.Errorf("after a second translation: %d warnings, want %d", n, want)
			}
		})
	}
}

func TestIntentionsWatchBadDestination(t *testing.T) {
	t.Parallel()
	for _, d := range []string{"", "*"} {
		if _, err := NewIntentions(&api.Client{}, d, IntentionOptions{}).Watch(context.Background()); err == nil {
			t.Errorf("Watch of destination %q succeeded", d)
		}
	}
}

// recvRules waits up to d for a rule list on ch that satisfies ok, skipping
// others, and fails the test if none comes or ch is closed.
func recvRules(t *testing.T, ch <-chan []policy.Rule, d time.Duration, what string, ok func([]policy.Rule) bool) []policy.Rule {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	var seen [][]policy.Rule
	for {
		select {
		case rules, open := <-ch:
			if !open {
				t.Fatalf("channel closed while waiting for %s; saw %+v", what, seen)
			}
			if ok(rules) {
				return rules
			}
			seen = append(seen, rules)
		case <-timer.C:
			t.Fatalf("no rule list with %s after %v; saw %+v", what, d, seen)
		}
	}
}

func names(rules []policy.Rule) []string {
	out := []string{}
	for _, r := range rules {
		out = append(out, fmt.Sprintf("%s %s", r.Name, r.Action))
	}
	return out
}

func namesAre(want ...string) func([]policy.Rule) bool {
	return func(rules []policy.Rule) bool { return reflect.DeepEqual(names(rules), append([]string{}, want...)) }
}

// TestIntentionsWatch writes service-intentions config entries to a real
// agent and follows the translated rules.
func TestIntentionsWatch(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	ce := client.ConfigEntries()
	// L7 permissions need an HTTP destination.
	if _, _, err := ce.Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "cart", Protocol: "http"}, nil); err != nil {
		t.Fatal(err)
	}
	log, logs := newLogger(t)
	in := NewIntentions(client, "cart", IntentionOptions{WaitTime: 10 * time.Second, Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := in.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	recvRules(t, ch, 10*time.Second, "no rules (no config entry)", namesAre())

	entry := &api.ServiceIntentionsConfigEntry{
		Kind: api.ServiceIntentions,
		Name: "cart",
		Sources: []*api.SourceIntention{
			{Name: "web", Action: api.IntentionActionDeny},
			{Name: "*", Action: api.IntentionActionAllow},
			{Name: "api", Permissions: []*api.IntentionPermission{
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/api/", Methods: []string{"GET"}}},
				{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/"}},
			}},
		},
	}
	if _, _, err := ce.Set(entry, nil); err != nil {
		t.Fatal(err)
	}
	// Consul's precedence order: exact sources (by name), then "*".
	rules := recvRules(t, ch, 10*time.Second, "the three intentions", namesAre(
		"consul intention api -> cart permission 1 allow",
		"consul intention api -> cart permission 2 deny",
		"consul intention web -> cart deny",
		"consul intention * -> cart allow",
	))
	t.Logf("first intentions seen %v after the watch started", time.Since(start).Round(time.Millisecond))
	want := []policy.Rule{
		{Name: "consul intention api -> cart permission 1", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Allow,
			Methods: []string{"GET"}, Paths: []policy.PathMatch{{Prefix: "/api/"}}},
		{Name: "consul intention api -> cart permission 2", Group: "consul intention api -> cart", From: []string{"api"}, To: "cart", Action: policy.Deny,
			Paths: []policy.PathMatch{{Prefix: "/"}}},
		{Name: "consul intention web -> cart", From: []string{"web"}, To: "cart", Action: policy.Deny},
		{Name: "consul intention * -> cart", From: []string{"*"}, To: "cart", Action: policy.Allow},
	}
	if !reflect.DeepEqual(rules, want) {
		t.Errorf("rules:\n got %+v\nwant %+v", rules, want)
	}

	// What package policy makes of them: the same decisions as Consul's.
	// The first matching permission of api's intention decides.
	p, err := policy.NewPolicy(rules, policy.Deny)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from, method, path string
		allow              bool
		rule               string
	}{
		{"web", "GET", "/", false, "consul intention web -> cart"},
		{"billing", "POST", "/x", true, "consul intention * -> cart"},
		{"api", "POST", "/api/x", false, "consul intention api -> cart permission 2"},
		{"api", "GET", "/api/x", true, "consul intention api -> cart permission 1"},
	} {
		d := p.Authorize(context.Background(), policy.Request{
			Source:      policy.Source{Service: tc.from, SPIFFE: "spiffe://x.consul/ns/default/dc/dc1/svc/" + tc.from},
			Destination: "cart", Method: tc.method, Path: tc.path, Header: http.Header{},
		})
		if d.Allow != tc.allow || d.Rule != tc.rule {
			t.Errorf("%s %s %s: %+v, want allow=%v by %s", tc.from, tc.method, tc.path, d, tc.allow, tc.rule)
		}
	}

	// An update: web is allowed now.
	entry.Sources[0].Action = api.IntentionActionAllow
	if _, _, err := ce.Set(entry, nil); err != nil {
		t.Fatal(err)
	}
	recvRules(t, ch, 10*time.Second, "web allowed", namesAre(
		"consul intention api -> cart permission 1 allow",
		"consul intention api -> cart permission 2 deny",
		"consul intention web -> cart allow",
		"consul intention * -> cart allow",
	))

	// The wildcard destination's entry applies too, below cart's own.
	if _, _, err := ce.Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "*",
		Sources: []*api.SourceIntention{{Name: "ops", Action: api.IntentionActionAllow}}}, nil); err != nil {
		t.Fatal(err)
	}
	recvRules(t, ch, 10*time.Second, "ops -> *", namesAre(
		"consul intention api -> cart permission 1 allow",
		"consul intention api -> cart permission 2 deny",
		"consul intention web -> cart allow",
		"consul intention * -> cart allow",
		"consul intention ops -> * allow",
	))

	// A JWT requirement on the entry, which sidemesh cannot check: the
	// allows it gates are dropped, the denies stay.
	jwks := base64.StdEncoding.EncodeToString([]byte(`{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0"}]}`))
	if _, _, err := ce.Set(&api.JWTProviderConfigEntry{Kind: api.JWTProvider, Name: "okta", Issuer: "https://okta.example",
		JSONWebKeySet: &api.JSONWebKeySet{Local: &api.LocalJWKS{JWKS: jwks}}}, nil); err != nil {
		t.Fatal(err)
	}
	entry.JWT = &api.IntentionJWTRequirement{Providers: []*api.IntentionJWTProvider{{Name: "okta"}}}
	entry.Sources[0].Action = api.IntentionActionDeny
	if _, _, err := ce.Set(entry, nil); err != nil {
		t.Fatal(err)
	}
	recvRules(t, ch, 10*time.Second, "only the denies of cart's entry", namesAre(
		"consul intention api -> cart permission 2 deny",
		"consul intention web -> cart deny",
		"consul intention ops -> * allow",
	))

	// Deleting the entries leaves no rules.
	if _, err := ce.Delete(api.ServiceIntentions, "cart", nil); err != nil {
		t.Fatal(err)
	}
	recvRules(t, ch, 10*time.Second, "only ops -> *", namesAre("consul intention ops -> * allow"))
	if _, err := ce.Delete(api.ServiceIntentions, "*", nil); err != nil {
		t.Fatal(err)
	}
	recvRules(t, ch, 10*time.Second, "no rules", namesAre())

	// Another service's intentions change nothing here.
	if _, _, err := ce.Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "billing",
		Sources: []*api.SourceIntention{{Name: "web", Action: api.IntentionActionDeny}}}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-ch:
		t.Errorf("got %v after a change to another service's intentions", names(r))
	case <-time.After(300 * time.Millisecond):
	}

	cancel()
	for range ch { // drain until closed
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", logs.String())
	}
}

// TestIntentionsKeepLastWhileAgentIsDown: while the agent is down nothing
// is sent, so the reader keeps its rules; a restarted dev agent has no
// intentions, and the watch says so.
func TestIntentionsKeepLastWhileAgentIsDown(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	log, logs := newLogger(t)
	in := NewIntentions(agent.Client(), "cart", IntentionOptions{
		WaitTime: 10 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: log,
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := in.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recvRules(t, ch, 10*time.Second, "no rules", namesAre())
	if _, _, err := agent.Client().ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "cart",
		Sources: []*api.SourceIntention{{Name: "web", Action: api.IntentionActionAllow}}}, nil); err != nil {
		t.Fatal(err)
	}
	recvRules(t, ch, 10*time.Second, "web -> cart", namesAre("consul intention web -> cart allow"))

	agent.Stop()
	meshtest.Eventually(t, 10*time.Second, "a failed query", func() error {
		if logs.count("consul query failed") == 0 {
			return errors.New("no failure yet")
		}
		return nil
	})
	select {
	case r, open := <-ch:
		t.Fatalf("got %v (open %v) while the agent is down, want nothing", names(r), open)
	case <-time.After(300 * time.Millisecond):
	}

	agent.Restart()
	recvRules(t, ch, 20*time.Second, "no rules (a new, empty agent)", namesAre())
	cancel()
	for range ch {
	}
}

// FuzzTranslateIntentions feeds arbitrary intentions (outside input: any
// Consul user writes them) to the translation: every rule it returns must
// be valid, since one invalid rule makes policy.Table.SetRules refuse the
// whole set.
func FuzzTranslateIntentions(f *testing.F) {
	f.Add("web", "cart", "allow", "/api/", "GET", "X-Env", "canary", uint8(0))
	f.Add("*", "*", "deny", "/a//b/../c", "get", ":authority", "x", uint8(3))
	f.Add("web", "cart", "", "", "", "", "", uint8(7))
	f.Fuzz(func(t *testing.T, src, dst, action, path, method, hname, hvalue string, kind uint8) {
		h := api.IntentionHTTPHeaderPermission{Name: hname, Invert: kind&8 != 0, IgnoreCase: kind&16 != 0}
		switch kind % 6 {
		case 0:
			h.Present = true
		case 1:
			h.Exact = hvalue
		case 2:
			h.Prefix = hvalue
		case 3:
			h.Suffix = hvalue
		case 4:
			h.Regex = hvalue
		}
		hp := &api.IntentionHTTPPermission{Methods: []string{method}, Header: []api.IntentionHTTPHeaderPermission{h}}
		switch kind % 3 {
		case 0:
			hp.PathExact = path
		case 1:
			hp.PathPrefix = path
		case 2:
			hp.PathRegex = path
		}
		ixns := []*api.Intention{
			l4(src, dst, action),
			l7(src, dst, perm(action, hp), perm("deny", hp), perm("allow", &api.IntentionHTTPPermission{PathPrefix: path})),
		}
		in := NewIntentions(&api.Client{}, "cart", IntentionOptions{})
		rules := in.translate(ixns, map[string]bool{dst: kind&32 != 0})
		for _, r := range rules {
			if err := r.Validate(); err != nil {
				t.Fatalf("invalid rule %+v: %v", r, err)
			}
		}
		if _, err := policy.NewPolicy(rules, policy.Deny); err != nil {
			t.Fatal(err)
		}
	})
}
