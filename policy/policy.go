package policy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
)

// Source is the caller: as mutual TLS proved it in the mesh, or as an
// edge route's authentication and the client's address showed it at the
// edge. A Source is only read; Authorize keeps none of it.
type Source struct {
	// Service is the service name from the caller's SPIFFE ID; "" when
	// the caller has none.
	Service string
	// SPIFFE is the caller's full, already validated SPIFFE ID
	// ("spiffe://mesh.local/ns/default/svc/web"); "" when it has none.
	SPIFFE string
	// Namespace is the namespace from the SPIFFE ID. Rules do not read it:
	// they scope namespaces with SPIFFE IDs and patterns.
	Namespace string

	// JWT reports that the caller presented a verified JWT. Subject is
	// its "sub" claim and Claims all of its claims, as encoding/json
	// decodes them (only string and list-of-string values match a rule).
	// Default false: no token.
	JWT     bool
	Subject string
	Claims  map[string]any
	// APIKeySet and APIKeyID name the caller's verified API key: the
	// key set and the key's ID. Both "" when it presented none.
	APIKeySet, APIKeyID string
	// Addr is the client's address. It proves nothing: a caller with
	// only an address is unauthenticated and matches cidr: entries
	// alone. The zero Addr matches no cidr: entry; an IPv4-mapped IPv6
	// address matches as its IPv4 address.
	Addr netip.Addr
}

// authenticated reports whether the caller proved an identity.
func (s *Source) authenticated() bool {
	return s.Service != "" || s.SPIFFE != "" || s.JWT || s.APIKeySet != ""
}

// Request is what is authorized: one HTTP request, or one TCP connection
// (Method, Path and Header left empty: then a rule with a method, path or
// header condition does not apply, except an inverted header condition,
// which holds for an absent header).
type Request struct {
	Source Source
	// Destination is what is being called: the local service in the
	// mesh, the route's name at the edge.
	Destination string
	// Method is the HTTP method as sent ("GET").
	Method string
	// Path is the request path, already through NormalizePath.
	Path string
	// Header is the request's header, with canonical keys as net/http
	// builds it. It is only read. May be nil.
	Header http.Header
}

// Decision is the outcome of Authorize.
type Decision struct {
	// Allow is true if the request may proceed.
	Allow bool
	// Rule names the rule that decided (its Rule.Name), or "default".
	Rule string
	// Reason is a short human sentence for logs and the 403 body, such as
	// "denied by policy.rules[2]: web may not POST /admin/* on cart".
	// It describes the rule, not the request, and holds no request data.
	Reason string
}

// DefaultRule is Decision.Rule when no rule applied.
const DefaultRule = "default"

// Authorizer decides whether a request may proceed. Implementations are
// safe for concurrent use and must not block.
type Authorizer interface {
	Authorize(ctx context.Context, r Request) Decision
}

// Policy is an immutable, precompiled rule set with a default action. It is
// safe for concurrent use; Authorize neither locks nor allocates. A nil
// *Policy denies everything.
type Policy struct {
	byDest  map[string]*bucket // rules with an exact To
	anyDest *bucket            // rules with To "*"
	def     Action

	defaultDecision   Decision // no rule applied
	unauthDecision    Decision // no rule applied, caller unauthenticated
	groupMissDecision Decision // a permission group applied, none of it matched
}

// bucket holds the entries of one destination, grouped by source kind so
// that Authorize visits them in precedence order. Each list is sorted:
// denies before allows, then in rule order; the pattern row (patterns,
// then edge) first by kind and specificity (see patternOrder).
type bucket struct {
	spiffe   map[string][]*entry    // exact row: SPIFFE IDs
	subject  map[string][]*entry    // exact row: jwt:sub=
	apiKey   map[apiKeyRef][]*entry // exact row: apikey:<set>/<id>
	name     map[string][]*entry
	patterns []*entry // pattern row: SPIFFE patterns
	edge     []*entry // pattern row, after patterns: claims, cidr, key sets, jwt:*
	any      []*entry
	cidr     bool // edge holds a cidr entry: unauthenticated callers search it
}

// apiKeyRef names one API key.
type apiKeyRef struct{ set, id string }

// entry is one From entry of one rule: a rule with three From entries is
// three entries, each ranked by its own source kind.
type entry struct {
	src      sourceMatch
	dest     string // "" for To "*"
	action   Action
	seq      int // position among all entries: rule order, then From order
	cond     *conditions
	grouped  bool     // part of an ordered permission group (Rule.Group)
	decision Decision // precomputed, so Authorize does not allocate
}

// NewPolicy validates and compiles rules. Rules without a Name are named
// "rules[i]". It reports every problem of every rule at once.
func NewPolicy(rules []Rule, defaultAction Action) (*Policy, error) {
	if !defaultAction.valid() {
		return nil, fmt.Errorf("policy: invalid default action %d", int(defaultAction))
	}
	entries, err := compileRules(rules, "rules")
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return buildPolicy(entries, defaultAction), nil
}

// compileRules validates rules and returns their entries, in order, with
// seq unset. Unnamed rules are named prefix[i].
func compileRules(rules []Rule, prefix string) ([]entry, error) {
	var errs []error
	var entries []entry
	groups := map[string]*Rule{} // first rule of each group
	for i := range rules {
		r := rules[i]
		if r.Name == "" {
			r.Name = fmt.Sprintf("%s[%d]", prefix, i)
		}
		if err := r.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if r.Group != "" {
			if g, ok := groups[r.Group]; !ok {
				groups[r.Group] = &rules[i]
			} else if !slices.Equal(g.From, r.From) || g.To != r.To {
				errs = append(errs, fmt.Errorf("rule %s: group %q: every rule of a group needs the From and To of its first", r.Name, r.Group))
				continue
			}
		}
		cond := compileConditions(&r)
		dest := r.To
		if dest == "*" {
			dest = ""
		}
		for _, f := range r.From {
			src, _ := parseSource(f) // validated
			entries = append(entries, entry{
				src:      src,
				dest:     dest,
				action:   r.Action,
				cond:     cond,
				grouped:  r.Group != "",
				decision: Decision{Allow: r.Action == Allow, Rule: r.Name, Reason: describe(&r, f)},
			})
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return entries, nil
}

// buildPolicy indexes entries (copying them) and numbers them in order.
func buildPolicy(entries []entry, def Action) *Policy {
	p := &Policy{byDest: map[string]*bucket{}, def: def}
	verb := "denied"
	if def == Allow {
		verb = "allowed"
	}
	p.defaultDecision = Decision{Allow: def == Allow, Rule: DefaultRule, Reason: verb + " by default: no rule matches"}
	p.unauthDecision = Decision{Allow: def == Allow, Rule: DefaultRule, Reason: verb + " by default: the caller is not authenticated"}
	p.groupMissDecision = Decision{Allow: def == Allow, Rule: DefaultRule, Reason: verb + " by default: no permission of the caller's intention matches"}

	store := make([]entry, len(entries))
	for i := range entries {
		e := &store[i]
		*e = entries[i]
		e.seq = i
		var b *bucket
		if e.dest == "" {
			if p.anyDest == nil {
				p.anyDest = &bucket{}
			}
			b = p.anyDest
		} else {
			b = p.byDest[e.dest]
			if b == nil {
				b = &bucket{}
				p.byDest[e.dest] = b
			}
		}
		switch e.src.kind {
		case sourceSPIFFE:
			b.spiffe = addTo(b.spiffe, e.src.key, e)
		case sourceSubject:
			b.subject = addTo(b.subject, e.src.key, e)
		case sourceAPIKey:
			b.apiKey = addTo(b.apiKey, apiKeyRef{e.src.key, e.src.sub}, e)
		case sourceName:
			b.name = addTo(b.name, e.src.key, e)
		case sourceAny:
			b.any = append(b.any, e)
		case sourcePattern:
			b.patterns = append(b.patterns, e)
		default:
			b.edge = append(b.edge, e)
			b.cidr = b.cidr || e.src.kind == sourceCIDR
		}
	}
	for _, b := range p.allBuckets() {
		for _, m := range []map[string][]*entry{b.spiffe, b.subject, b.name} {
			for _, l := range m {
				slices.SortStableFunc(l, byAction)
			}
		}
		for _, l := range b.apiKey {
			slices.SortStableFunc(l, byAction)
		}
		slices.SortStableFunc(b.patterns, patternOrder)
		slices.SortStableFunc(b.edge, patternOrder)
		slices.SortStableFunc(b.any, byAction)
	}
	return p
}

// addTo appends e to m[key], making m if it is nil.
func addTo[K comparable](m map[K][]*entry, key K, e *entry) map[K][]*entry {
	if m == nil {
		m = map[K][]*entry{}
	}
	m[key] = append(m[key], e)
	return m
}

// patternOrder orders the pattern row: by kind (SPIFFE patterns, JWT
// claims, cidr, API key sets, jwt:*), within a kind the longer SPIFFE
// prefix or network first, then as byAction.
func patternOrder(x, y *entry) int {
	if c := cmp.Compare(y.src.kind, x.src.kind); c != 0 {
		return c
	}
	if c := cmp.Compare(y.src.specificity(), x.src.specificity()); c != 0 {
		return c
	}
	return byAction(x, y)
}

// byAction orders grouped entries first, in rule order (a group is an
// ordered list), then denies, then allows, each by seq.
func byAction(x, y *entry) int {
	if x.grouped != y.grouped {
		if x.grouped {
			return -1
		}
		return 1
	}
	if x.grouped {
		return cmp.Compare(x.seq, y.seq)
	}
	if x.action != y.action {
		if x.action == Deny {
			return -1
		}
		return 1
	}
	return cmp.Compare(x.seq, y.seq)
}

func (p *Policy) allBuckets() []*bucket {
	bs := make([]*bucket, 0, len(p.byDest)+1)
	for _, b := range p.byDest {
		bs = append(bs, b)
	}
	if p.anyDest != nil {
		bs = append(bs, p.anyDest)
	}
	return bs
}

// Default returns the action taken when no rule applies.
func (p *Policy) Default() Action {
	if p == nil {
		return Deny
	}
	return p.def
}

var noPolicy = Decision{Rule: DefaultRule, Reason: "denied: no policy loaded"}

// Authorize decides r as described in the package doc: of the rules whose
// From, To and conditions all match r, the one of highest precedence
// decides, deny winning a tie; if none matches, the default action. An
// unauthenticated caller is matched against cidr: entries only. It does
// not block, lock or allocate; ctx is not used.
func (p *Policy) Authorize(_ context.Context, r Request) Decision {
	if p == nil {
		return noPolicy
	}
	authn := r.Source.authenticated()
	if !authn && !r.Source.Addr.IsValid() {
		return p.unauthDecision
	}
	for _, b := range [...]*bucket{p.byDest[r.Destination], p.anyDest} {
		if b == nil {
			continue
		}
		var e *entry
		var final bool
		if authn {
			e, final = b.find(&r)
		} else if b.cidr {
			e = b.findCIDR(&r)
		}
		if e != nil {
			return e.decision
		} else if final {
			return p.groupMissDecision
		}
	}
	if !authn {
		return p.unauthDecision
	}
	return p.defaultDecision
}

// find returns the first applicable entry in precedence order, or nil;
// final reports that a permission group applied to the caller but none of
// its rules matched, which ends the search with the default action.
func (b *bucket) find(r *Request) (e *entry, final bool) {
	src := &r.Source
	// The exact row: a caller has one such identity in practice, but
	// should it have several, their entries rank together.
	if src.SPIFFE != "" && b.spiffe != nil {
		e, final = first(b.spiffe[src.SPIFFE], r)
	}
	if src.JWT && src.Subject != "" && b.subject != nil {
		e2, final2 := first(b.subject[src.Subject], r)
		e, final = better(e, e2), final || final2
	}
	if src.APIKeySet != "" && b.apiKey != nil {
		e2, final2 := first(b.apiKey[apiKeyRef{src.APIKeySet, src.APIKeyID}], r)
		e, final = better(e, e2), final || final2
	}
	if e != nil {
		return e, false
	} else if final {
		return nil, true
	}
	if src.Service != "" {
		if e, final := first(b.name[src.Service], r); e != nil || final {
			return e, final
		}
	}
	if id := src.SPIFFE; id != "" {
		for _, e := range b.patterns {
			if len(id) > len(e.src.key) && strings.HasPrefix(id, e.src.key) && e.cond.match(r) {
				return e, false
			}
		}
	}
	if src.JWT || src.APIKeySet != "" || src.Addr.IsValid() {
		for _, e := range b.edge {
			if e.src.matches(src) && e.cond.match(r) {
				return e, false
			}
		}
	}
	return first(b.any, r)
}

// findCIDR is find for an unauthenticated caller: only cidr entries can
// apply.
func (b *bucket) findCIDR(r *Request) *entry {
	for _, e := range b.edge {
		if e.src.kind == sourceCIDR && e.src.matches(&r.Source) && e.cond.match(r) {
			return e
		}
	}
	return nil
}

// better returns the one of x and y that comes first in byAction's order;
// either may be nil.
func better(x, y *entry) *entry {
	switch {
	case x == nil:
		return y
	case y == nil:
		return x
	case byAction(y, x) < 0:
		return y
	}
	return x
}

// matches reports whether an edge entry of the pattern row (a claim,
// cidr, key set or jwt:*) matches src. It does not allocate.
func (m *sourceMatch) matches(src *Source) bool {
	switch m.kind {
	case sourceClaim:
		return src.JWT && claimHolds(src.Claims[m.sub], m.key, m.sub == scopeClaim)
	case sourceCIDR:
		return m.prefix.Contains(src.Addr.Unmap().WithZone(""))
	case sourceKeySet:
		return src.APIKeySet == m.key
	case sourceJWTAny:
		return src.JWT
	}
	return false
}

// claimHolds reports whether a claim's value v is want, or is a list of
// strings that holds it; a space-separated scope claim holds each word.
func claimHolds(v any, want string, scope bool) bool {
	switch v := v.(type) {
	case string:
		if scope {
			return hasWord(v, want)
		}
		return v == want
	case []any:
		for _, e := range v {
			if s, ok := e.(string); ok && s == want {
				return true
			}
		}
	case []string:
		return slices.Contains(v, want)
	}
	return false
}

// hasWord reports whether want is one of the words of s, separated by
// ASCII white space, without splitting s.
func hasWord(s, want string) bool {
	for s != "" {
		i := strings.IndexAny(s, " \t\r\n")
		w := s
		if i >= 0 {
			w, s = s[:i], s[i+1:]
		} else {
			s = ""
		}
		if w == want {
			return true
		}
	}
	return false
}

// first returns the first entry of l whose conditions match r; when none
// does and l holds a permission group, final is true.
func first(l []*entry, r *Request) (e *entry, final bool) {
	for _, e := range l {
		if e.cond.match(r) {
			return e, false
		}
	}
	return nil, len(l) > 0 && l[0].grouped
}

// describe writes the Reason of rule r for its From entry from, such as
// "denied by policy.rules[2]: web may not POST /admin/* on cart".
func describe(r *Rule, from string) string {
	var b strings.Builder
	if r.Action == Allow {
		b.WriteString("allowed by ")
	} else {
		b.WriteString("denied by ")
	}
	b.WriteString(r.Name)
	b.WriteString(": ")
	if from == "*" {
		b.WriteString("any authenticated caller")
	} else {
		b.WriteString(from)
	}
	if r.Action == Allow {
		b.WriteString(" may ")
	} else {
		b.WriteString(" may not ")
	}
	if len(r.Methods) == 0 {
		b.WriteString("call")
	} else {
		for i, m := range r.Methods {
			if i > 0 {
				b.WriteByte('|')
			}
			b.WriteString(strings.ToUpper(m))
		}
	}
	to := r.To
	if to == "*" {
		to = "any service"
	}
	if len(r.Paths) > 0 {
		const show = 3
		for i, p := range r.Paths {
			if i == show {
				fmt.Fprintf(&b, " (+%d more)", len(r.Paths)-show)
				break
			}
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteByte(' ')
			if p.Exact != "" {
				b.WriteString(p.Exact)
			} else {
				b.WriteString(p.Prefix)
				b.WriteByte('*')
			}
		}
		b.WriteString(" on ")
	} else {
		b.WriteByte(' ')
	}
	b.WriteString(to)
	for i, h := range r.Headers {
		if i == 0 {
			b.WriteString(" when ")
		} else {
			b.WriteString(" and ")
		}
		b.WriteString(h.Name)
		not := ""
		if h.Invert {
			not = "not "
		}
		switch {
		case h.Present:
			fmt.Fprintf(&b, " is %spresent", not)
		case h.Exact != "":
			fmt.Fprintf(&b, " is %s%q", not, h.Exact)
		case h.Invert:
			fmt.Fprintf(&b, " does not start with %q", h.Prefix)
		default:
			fmt.Fprintf(&b, " starts with %q", h.Prefix)
		}
	}
	return b.String()
}

// Interface guard.
var _ Authorizer = (*Policy)(nil)
