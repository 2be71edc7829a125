package policy

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"
)

// Rule says whether some callers may call a destination, optionally only
// for some methods, paths and headers. A Rule is plain data; NewPolicy
// validates and compiles it.
type Rule struct {
	// Name is how decisions name the rule ("policy.rules[3]", "consul
	// intention web -> cart"). Default: "rules[i]" by its index in
	// NewPolicy, "<source>[i]" in Table.SetRules.
	Name string
	// From lists the callers the rule applies to. Required. Each entry is
	//   - a service name ("web"): the caller's Source.Service, in any
	//     namespace and trust domain the transport accepts (write a SPIFFE
	//     ID to pin the namespace);
	//   - a SPIFFE ID ("spiffe://mesh.local/ns/prod/svc/web"): exactly that
	//     caller's Source.SPIFFE;
	//   - a SPIFFE pattern ending in "/*" ("spiffe://mesh.local/ns/prod/*",
	//     "spiffe://mesh.local/*"): every ID under that prefix, whole
	//     segments only;
	//   - "jwt:sub=<subject>": a caller with a verified JWT of that
	//     subject (Source.Subject), from any provider;
	//   - "jwt:<claim>=<value>": a caller with a verified JWT whose claim
	//     is that string, or a list of strings that holds it; the "scope"
	//     claim, a space-separated string, holds each of its words;
	//   - "jwt:*": any caller with a verified JWT;
	//   - "apikey:<set>/<id>": the caller with that API key of that set;
	//     "apikey:<set>/*" any key of the set;
	//   - "cidr:<prefix>" ("cidr:10.0.0.0/8", "cidr:2001:db8::/32"): a
	//     caller whose Source.Addr is in the prefix, authenticated or not;
	//   - "*": any authenticated caller (a SPIFFE ID, a verified JWT or an
	//     API key). "*" never matches an unauthenticated one, which only
	//     cidr: entries match.
	// An entry ranks as written; see the package doc for the order.
	From []string
	// To is the destination: a service name in the mesh, a route name at
	// the edge, or "*" for any. Required.
	To string
	// Action is what the rule does when it decides. Default: Deny.
	Action Action
	// Methods limits the rule to these HTTP methods; empty means any.
	// They are upper-cased once and then compared case-sensitively with
	// Request.Method (so "get" in a rule matches "GET", not "get").
	Methods []string
	// Paths limits the rule to requests whose normalized path matches one
	// of these; empty means any path.
	Paths []PathMatch
	// Headers must all match; empty means no header condition.
	Headers []HeaderMatch
	// Group, when set, makes the rule one of an ordered permission list,
	// as the L7 permissions of one Consul intention are: the rules of a
	// group share From and To, are tried in order, the first whose
	// conditions match decides, and a request that matches none of them
	// gets the default action instead of falling through to rules of lower
	// precedence. At a precedence level that holds a group, the group is
	// tried before ungrouped rules. Default: no group.
	Group string
}

// PathMatch matches the normalized request path. Exactly one field is set,
// and it must itself be a normalized path (NormalizePath returns it
// unchanged): "/api/" is fine, "/api//", "/a/../b" and "/%7Eu" are not.
type PathMatch struct {
	// Exact matches the path byte for byte: "/admin" does not match
	// "/admin/".
	Exact string
	// Prefix is a plain string prefix, as Consul's PathPrefix: "/api"
	// matches "/api", "/api/x" and also "/apiary". End it with "/" to
	// match whole segments only ("/api/" matches "/api/x", not "/api").
	Prefix string
}

// HeaderMatch matches one request header. Exactly one of Present, Exact
// and Prefix is set. A header sent several times is matched as its values
// joined with "," (RFC 9110 section 5.3, as Envoy does), so "a" and "b"
// sent separately are the value "a,b".
type HeaderMatch struct {
	// Name is the header name, in any case. Pseudo-headers (":path") are
	// not supported; Host is not in http.Request.Header.
	Name string
	// Present matches if the header is sent, with any value (even empty).
	Present bool
	// Exact matches if the value is exactly this.
	Exact string
	// Prefix matches if the value starts with this.
	Prefix string
	// Invert negates the whole match, absence included: with Present it
	// matches an absent header, and an inverted Exact or Prefix matches
	// an absent header too ("not X-Env: prod" holds without X-Env).
	// Envoy, unless treat_missing_header_as_empty is set, would not.
	Invert bool
}

// Validate reports every problem of r at once (joined with errors.Join),
// each naming the field: an empty From or To, a malformed name or SPIFFE
// pattern, an invalid Action or method, a path that is not normalized or
// that sets both Exact and Prefix, a header match with no or several
// conditions. The problems are prefixed with r.Name when it is set.
func (r Rule) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if r.Name != "" {
			msg = fmt.Sprintf("rule %s: %s", r.Name, msg)
		}
		errs = append(errs, errors.New(msg))
	}
	if len(r.From) == 0 {
		add("from: required: list callers, or \"*\" for any authenticated caller")
	}
	for i, f := range r.From {
		if _, err := parseSource(f); err != nil {
			add("from[%d]: %v", i, err)
		}
	}
	switch {
	case r.To == "":
		add("to: required: a service name or \"*\"")
	case r.To != "*":
		if err := checkServiceName(r.To); err != nil {
			add("to: %v", err)
		}
	}
	if !r.Action.valid() {
		add("action: invalid value %d: want Allow or Deny", int(r.Action))
	}
	for i, m := range r.Methods {
		if !isToken(m) {
			add("methods[%d]: %q is not an HTTP method", i, m)
		}
	}
	for i, p := range r.Paths {
		if err := p.validate(); err != nil {
			add("paths[%d]: %v", i, err)
		}
	}
	for i, h := range r.Headers {
		if err := h.validate(); err != nil {
			add("headers[%d]: %v", i, err)
		}
	}
	return errors.Join(errs...)
}

func (p PathMatch) validate() error {
	var v, field string
	switch {
	case p.Exact != "" && p.Prefix != "":
		return errors.New("set exact or prefix, not both")
	case p.Exact != "":
		v, field = p.Exact, "exact"
	case p.Prefix != "":
		v, field = p.Prefix, "prefix"
	default:
		return errors.New("set exact or prefix")
	}
	if !strings.HasPrefix(v, "/") {
		return fmt.Errorf("%s %q must start with /", field, v)
	}
	n, err := NormalizePath(v)
	if err != nil {
		return fmt.Errorf("%s %q: %v", field, v, err)
	}
	if n != v {
		return fmt.Errorf("%s %q is not a normalized path: requests are matched in normalized form, write %q", field, v, n)
	}
	return nil
}

func (h HeaderMatch) validate() error {
	if h.Name == "" {
		return errors.New("name: required")
	}
	if strings.HasPrefix(h.Name, ":") {
		return fmt.Errorf("name %q: pseudo-headers are not supported", h.Name)
	}
	if !isToken(h.Name) {
		return fmt.Errorf("name %q is not a valid header name", h.Name)
	}
	n := 0
	if h.Present {
		n++
	}
	if h.Exact != "" {
		n++
	}
	if h.Prefix != "" {
		n++
	}
	if n != 1 {
		return fmt.Errorf("header %s: set exactly one of present, exact and prefix", h.Name)
	}
	for _, v := range []string{h.Exact, h.Prefix} {
		if strings.ContainsAny(v, "\x00\r\n") {
			return fmt.Errorf("header %s: value %q can never match (NUL, CR or LF)", h.Name, v)
		}
	}
	return nil
}

// Source kinds, in rank order: a higher kind is more specific. row
// groups them into the rows of the precedence table.
const (
	sourceAny     = 1 + iota // "*"
	sourceJWTAny             // "jwt:*"
	sourceKeySet             // "apikey:partners/*"
	sourceCIDR               // "cidr:10.0.0.0/8"
	sourceClaim              // "jwt:groups=admin"
	sourcePattern            // "spiffe://td/ns/prod/*"
	sourceName               // "web"
	sourceSubject            // "jwt:sub=alice"
	sourceAPIKey             // "apikey:partners/acme"
	sourceSPIFFE             // "spiffe://td/ns/prod/svc/web"
)

// Rows of the precedence table, highest last.
const (
	rowAny     = 1 + iota // "*"
	rowPattern            // SPIFFE patterns, claims, cidr, key sets, jwt:*
	rowName               // service names
	rowExact              // SPIFFE IDs, JWT subjects, API keys
)

// row returns the precedence row of a source kind.
func row(kind int) int {
	switch kind {
	case sourceAny:
		return rowAny
	case sourceName:
		return rowName
	case sourceSubject, sourceAPIKey, sourceSPIFFE:
		return rowExact
	}
	return rowPattern
}

// sourceMatch is one parsed From entry.
type sourceMatch struct {
	kind int
	// key is the name, the SPIFFE ID, the pattern's prefix (ending in
	// '/'), the JWT subject, the claim's value, or the API key set.
	key string
	// sub is the claim's name, or the API key's ID.
	sub string
	// prefix is a cidr entry's network.
	prefix netip.Prefix
}

// specificity orders the entries of one kind in the pattern row: the
// longer SPIFFE prefix or network first.
func (m *sourceMatch) specificity() int {
	switch m.kind {
	case sourcePattern:
		return len(m.key)
	case sourceCIDR:
		return m.prefix.Bits()
	}
	return 0
}

const (
	spiffeScheme = "spiffe://"
	jwtPrefix    = "jwt:"
	apiKeyPrefix = "apikey:"
	cidrPrefix   = "cidr:"
	// scopeClaim is the space-separated scope claim of RFC 8693.
	scopeClaim = "scope"
)

// parseSource parses a From entry.
func parseSource(f string) (sourceMatch, error) {
	switch {
	case f == "*":
		return sourceMatch{kind: sourceAny}, nil
	case strings.HasPrefix(f, spiffeScheme):
		return parseSPIFFE(f)
	case strings.Contains(f, "://"):
		return sourceMatch{}, fmt.Errorf("%q: only spiffe:// IDs are supported", f)
	case strings.HasPrefix(f, jwtPrefix):
		return parseJWT(f)
	case strings.HasPrefix(f, apiKeyPrefix):
		return parseAPIKey(f)
	case strings.HasPrefix(f, cidrPrefix):
		return parseCIDR(f)
	case strings.Contains(f, ":"):
		kind, _, _ := strings.Cut(f, ":")
		return sourceMatch{}, fmt.Errorf("%q: unknown prefix %q: write a service name, a spiffe:// ID, jwt:, apikey: or cidr:", f, kind+":")
	}
	if err := checkServiceName(f); err != nil {
		return sourceMatch{}, err
	}
	return sourceMatch{kind: sourceName, key: f}, nil
}

// parseJWT parses "jwt:*", "jwt:sub=<subject>" and "jwt:<claim>=<value>".
func parseJWT(f string) (sourceMatch, error) {
	rest := f[len(jwtPrefix):]
	if rest == "*" {
		return sourceMatch{kind: sourceJWTAny}, nil
	}
	claim, value, ok := strings.Cut(rest, "=")
	switch {
	case !ok:
		return sourceMatch{}, fmt.Errorf("%q: no '=': write jwt:sub=<subject>, jwt:<claim>=<value> or jwt:* for any verified token", f)
	case claim == "":
		return sourceMatch{}, fmt.Errorf("%q: no claim name before '=': write jwt:sub=<subject> or jwt:<claim>=<value>", f)
	case value == "":
		return sourceMatch{}, fmt.Errorf("%q: empty value: write jwt:%s=<value> (jwt:* matches any verified token)", f, claim)
	case strings.ContainsAny(value, "\x00\r\n"):
		return sourceMatch{}, fmt.Errorf("%q: the value holds a NUL, CR or LF", f)
	case claim == scopeClaim && strings.ContainsAny(value, " \t"):
		return sourceMatch{}, fmt.Errorf("%q: a scope is one word: write one jwt:scope=<scope> entry per scope", f)
	}
	for i := 0; i < len(claim); i++ {
		if c := claim[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.') {
			return sourceMatch{}, fmt.Errorf("%q: claim name %q: want letters, digits, '_', '-' and '.'", f, claim)
		}
	}
	if claim == "sub" {
		return sourceMatch{kind: sourceSubject, key: value}, nil
	}
	return sourceMatch{kind: sourceClaim, key: value, sub: claim}, nil
}

// parseAPIKey parses "apikey:<set>/<id>" and "apikey:<set>/*".
func parseAPIKey(f string) (sourceMatch, error) {
	set, id, ok := strings.Cut(f[len(apiKeyPrefix):], "/")
	switch {
	case !ok:
		return sourceMatch{}, fmt.Errorf("%q: no '/': write apikey:<set>/<id>, or apikey:<set>/* for any key of the set", f)
	case set == "":
		return sourceMatch{}, fmt.Errorf("%q: no key set name: write apikey:<set>/<id>", f)
	case id == "":
		return sourceMatch{}, fmt.Errorf("%q: no key ID: write apikey:%s/<id>, or apikey:%s/* for any key of the set", f, set, set)
	case strings.ContainsAny(id, "\x00\r\n"):
		return sourceMatch{}, fmt.Errorf("%q: the key ID holds a NUL, CR or LF", f)
	}
	if err := checkServiceName(set); err != nil {
		return sourceMatch{}, fmt.Errorf("%q: key set: %v", f, err)
	}
	if id == "*" {
		return sourceMatch{kind: sourceKeySet, key: set}, nil
	}
	return sourceMatch{kind: sourceAPIKey, key: set, sub: id}, nil
}

// parseCIDR parses "cidr:<prefix>"; the prefix must be in canonical form
// (no host bits set, written as netip.Prefix.String writes it), so that
// what is written is what matches.
func parseCIDR(f string) (sourceMatch, error) {
	s := f[len(cidrPrefix):]
	if !strings.Contains(s, "/") {
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
			return sourceMatch{}, fmt.Errorf("%q: no prefix length: write cidr:%s for this one address", f, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return sourceMatch{}, fmt.Errorf("%q: not a network: write an IPv4 or IPv6 prefix such as cidr:10.0.0.0/8 or cidr:2001:db8::/32", f)
	}
	if p.Addr().Is4In6() {
		return sourceMatch{}, fmt.Errorf("%q: an IPv4-mapped prefix never matches: write the IPv4 prefix", f)
	}
	if m := p.Masked(); m != p {
		return sourceMatch{}, fmt.Errorf("%q: host bits are set: write cidr:%s", f, m)
	}
	if p.String() != s {
		return sourceMatch{}, fmt.Errorf("%q: write the prefix in its usual form, cidr:%s", f, p)
	}
	return sourceMatch{kind: sourceCIDR, prefix: p}, nil
}

// parseSPIFFE parses "spiffe://td/path" or a pattern "spiffe://td[/path]/*".
func parseSPIFFE(f string) (sourceMatch, error) {
	rest := f[len(spiffeScheme):]
	td, path, ok := strings.Cut(rest, "/")
	if td == "" {
		return sourceMatch{}, fmt.Errorf("%q: missing trust domain", f)
	}
	for i := 0; i < len(td); i++ {
		if c := td[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return sourceMatch{}, fmt.Errorf("%q: trust domain %q: want lower-case letters, digits, '.', '-' and '_'", f, td)
		}
	}
	if !ok || path == "" {
		return sourceMatch{}, fmt.Errorf("%q: no workload path: write %q for the whole trust domain", f, spiffeScheme+td+"/*")
	}
	segs := strings.Split(path, "/")
	pattern := segs[len(segs)-1] == "*"
	if pattern {
		segs = segs[:len(segs)-1]
	}
	for _, s := range segs {
		switch {
		case s == "":
			return sourceMatch{}, fmt.Errorf("%q: empty path segment", f)
		case s == "." || s == "..":
			return sourceMatch{}, fmt.Errorf("%q: dot segment %q", f, s)
		case strings.Contains(s, "*"):
			return sourceMatch{}, fmt.Errorf("%q: \"*\" is only allowed as the whole last segment", f)
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
				return sourceMatch{}, fmt.Errorf("%q: segment %q: want letters, digits, '.', '-' and '_'", f, s)
			}
		}
	}
	if pattern {
		return sourceMatch{kind: sourcePattern, key: strings.TrimSuffix(f, "*")}, nil
	}
	return sourceMatch{kind: sourceSPIFFE, key: f}, nil
}

// checkServiceName accepts letters, digits, '.', '-' and '_'.
func checkServiceName(s string) error {
	if s == "" {
		return errors.New("empty service name")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '*' {
			return fmt.Errorf("%q: a wildcard is \"*\" alone, or a SPIFFE ID ending in /*", s)
		}
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%q is not a service name: want letters, digits, '.', '-' and '_'", s)
		}
	}
	return nil
}

// isToken reports whether s is an RFC 9110 token (method and header names).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

// conditions is a rule's compiled L7 part, shared by its From entries.
type conditions struct {
	methods []string // upper-cased
	paths   []PathMatch
	headers []headerCond
}

type headerCond struct {
	name string // canonical
	HeaderMatch
}

func compileConditions(r *Rule) *conditions {
	c := &conditions{paths: append([]PathMatch(nil), r.Paths...)}
	for _, m := range r.Methods {
		c.methods = append(c.methods, strings.ToUpper(m))
	}
	for _, h := range r.Headers {
		c.headers = append(c.headers, headerCond{name: textproto.CanonicalMIMEHeaderKey(h.Name), HeaderMatch: h})
	}
	return c
}

// match reports whether every condition holds for r. It does not allocate.
func (c *conditions) match(r *Request) bool {
	if len(c.methods) > 0 {
		ok := false
		for _, m := range c.methods {
			if m == r.Method {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(c.paths) > 0 {
		ok := false
		for _, p := range c.paths {
			if p.Exact != "" && r.Path == p.Exact || p.Prefix != "" && strings.HasPrefix(r.Path, p.Prefix) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for i := range c.headers {
		if !c.headers[i].match(r.Header) {
			return false
		}
	}
	return true
}

func (h *headerCond) match(hdr http.Header) bool {
	vals := hdr[h.name]
	var ok bool
	switch {
	case h.Present:
		ok = len(vals) > 0
	case h.Exact != "":
		ok = len(vals) > 0 && joinedEqual(vals, h.Exact)
	default:
		ok = len(vals) > 0 && joinedHasPrefix(vals, h.Prefix)
	}
	return ok != h.Invert
}

// joinedEqual reports whether strings.Join(vals, ",") == want, without
// joining.
func joinedEqual(vals []string, want string) bool {
	if len(vals) == 1 {
		return vals[0] == want
	}
	n := len(vals) - 1
	for _, v := range vals {
		n += len(v)
	}
	return n == len(want) && joinedHasPrefix(vals, want)
}

// joinedHasPrefix reports whether strings.Join(vals, ",") starts with
// prefix, without joining.
func joinedHasPrefix(vals []string, prefix string) bool {
	for i, v := range vals {
		if i > 0 {
			if prefix == "" {
				return true
			}
			if prefix[0] != ',' {
				return false
			}
			prefix = prefix[1:]
		}
		if len(prefix) <= len(v) {
			return v[:len(prefix)] == prefix
		}
		if prefix[:len(v)] != v {
			return false
		}
		prefix = prefix[len(v):]
	}
	return prefix == ""
}
