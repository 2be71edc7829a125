package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sidemesh/sidemesh/policy"
)

// EdgePolicy authorizes the edge's callers with the mesh's rule language
// (see the policy package): after a route's authentication, before its
// rate limits, the rule of highest precedence that matches the caller,
// the route and the request decides; a denied request is answered 403.
// Without an edge.policy section no authorization runs: a route's own
// auth decides who gets in, and a route without auth is public.
type EdgePolicy struct {
	// Default is the decision when no rule applies: deny (the default)
	// or allow.
	Default string `yaml:"default"`
	// Rules are written as the sidecar's policy.rules. To names a route
	// (its name) or "*" for every route; empty means "*". From may name,
	// beside "*", the edge's callers: jwt:sub=<subject>,
	// jwt:<claim>=<value>, jwt:*, apikey:<set>/<id>, apikey:<set>/* and
	// cidr:<prefix> (the client address, after trusted_proxies). Paths
	// are matched against the normalized request path, before any
	// rewrite.
	Rules []PolicyRule `yaml:"rules"`
}

func (p *EdgePolicy) setDefaults() { *p = EdgePolicy{Default: "deny"} }

// DefaultAction returns the decision when no rule applies: Deny unless
// Default is "allow".
func (p *EdgePolicy) DefaultAction() policy.Action {
	if p.Default == "allow" {
		return policy.Allow
	}
	return policy.Deny
}

// Rule turns rule i into a policy.Rule named "edge.policy.rules[i]",
// whose To is a route name or "*".
func (p *EdgePolicy) Rule(i int) policy.Rule {
	r := p.Rules[i]
	action, _ := policy.ParseAction(r.Action)
	to := r.To
	if to == "" {
		to = "*"
	}
	pr := policy.Rule{Name: fmt.Sprintf("edge.policy.rules[%d]", i), From: r.From, To: to, Action: action, Methods: r.Methods}
	for _, path := range r.Paths {
		pr.Paths = append(pr.Paths, policy.PathMatch{Prefix: path})
	}
	for _, path := range r.ExactPaths {
		pr.Paths = append(pr.Paths, policy.PathMatch{Exact: path})
	}
	for _, h := range r.Headers {
		pr.Headers = append(pr.Headers, policy.HeaderMatch{Name: h.Name, Present: h.Present, Exact: h.Exact, Prefix: h.Prefix, Invert: h.Invert})
	}
	return pr
}

// Compile builds the section's policy, whose destinations are route
// names. Call it on a validated Config: its errors are Validate's.
func (p *EdgePolicy) Compile() (*policy.Policy, error) {
	rules := make([]policy.Rule, len(p.Rules))
	for i := range p.Rules {
		rules[i] = p.Rule(i)
	}
	pol, err := policy.NewPolicy(rules, p.DefaultAction())
	if err != nil {
		return nil, fmt.Errorf("edge.policy: %w", err)
	}
	return pol, nil
}

// edgePolicy checks the edge.policy section: the default; each rule's
// From entries (one by one, as the policy package parses them, and that
// an apikey: entry names a key set), that To names a route, the action,
// and the rest of the rule as the policy package judges it.
func (v *validator) edgePolicy(e *Edge) {
	p := e.Policy
	if p == nil {
		return
	}
	if p.Default != "" {
		v.oneOf("edge.policy.default", "action", p.Default, []string{"allow", "deny"})
	}
	for i, r := range p.Rules {
		path := fmt.Sprintf("edge.policy.rules[%d]", i)
		if len(r.From) == 0 {
			v.errorf(path+".from", "required: list callers (jwt:sub=<subject>, jwt:<claim>=<value>, apikey:<set>/<id>, cidr:<prefix>), or \"*\" for any authenticated caller")
		}
		for j, f := range r.From {
			fp := fmt.Sprintf("%s.from[%d]", path, j)
			// Each entry is judged by itself, so that its error points at it.
			if err := (policy.Rule{From: []string{f}, To: "*"}).Validate(); err != nil {
				v.errorf(fp, "%s", strings.TrimPrefix(err.Error(), "from[0]: "))
				continue
			}
			if rest, ok := strings.CutPrefix(f, "apikey:"); ok {
				set, _, _ := strings.Cut(rest, "/")
				if !slices.ContainsFunc(e.APIKeys, func(k APIKeySet) bool { return k.Name == set }) {
					v.errorf(fp, "no edge.api_keys entry is named %s", quote(set))
				}
			}
			if f != "*" && (!strings.Contains(f, ":") || strings.HasPrefix(f, "spiffe://")) {
				v.warnf(fp, "%s names a mesh workload, which edge callers never are: it matches no one here; write jwt:, apikey: or cidr: entries", quote(f))
			}
		}
		if r.To != "" && r.To != "*" && !slices.ContainsFunc(e.Routes, func(rc Route) bool { return rc.Name == r.To }) {
			v.errorf(path+".to", "no edge.routes entry is named %s: write a route's name, or \"*\" for every route", quote(r.To))
		}
		v.oneOf(path+".action", "action", r.Action, []string{"allow", "deny"})
		if r.Action == "allow" || r.Action == "deny" {
			// The policy package is the judge of methods, paths and
			// headers; From and To are checked above.
			pr := p.Rule(i)
			pr.From, pr.To = []string{"*"}, "*"
			if err := pr.Validate(); err != nil {
				for line := range strings.Lines(err.Error()) {
					v.errorf(path, "%s", strings.TrimPrefix(strings.TrimSpace(line), "rule "+path+": "))
				}
			}
		}
	}
}
