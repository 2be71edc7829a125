package config

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// EdgeSticky holds what every sticky route of an edge shares: the key
// that signs session cookies and hashes session tokens before they enter
// the gossip pool. Every edge of a pool needs the same key.
type EdgeSticky struct {
	// KeyFile holds the key: 32 random bytes, base64, as `sidemesh keygen`
	// prints them. Required.
	KeyFile string `yaml:"key_file"`
	// PreviousKeyFile, during a rotation, holds the key KeyFile held
	// before: cookies it signed are still accepted and sessions it hashed
	// still found, while new ones use KeyFile. Remove it once the
	// sessions of the old key have ended (absolute_timeout).
	PreviousKeyFile string `yaml:"previous_key_file"`
	// ClockSkew is how far apart the edges' clocks may be: a session is
	// kept this much past its deadlines, so that an edge whose clock runs
	// ahead does not end it early. Default 5s.
	ClockSkew time.Duration `yaml:"clock_skew"`
}

// Sticky keeps the requests of one session on one endpoint, on every
// edge: the session table is shared over the gossip pool.
type Sticky struct {
	// Mode says what names a session:
	//   - cookie: a cookie the edge issues (signed, naming a session,
	//     never an address);
	//   - learn: the application's own session cookie or header, learned
	//     from the response that sets it;
	//   - header: a request header (a user or tenant ID set by a client
	//     or an earlier proxy);
	//   - source_ip: the client's address.
	// Required.
	Mode string `yaml:"mode"`
	// Cookie configures the cookie of cookie mode.
	Cookie StickyCookie `yaml:"cookie"`
	// Learn names the application's session cookie or header (exactly
	// one) in learn mode.
	Learn StickyLearn `yaml:"learn"`
	// Header names the request header of header mode.
	Header string `yaml:"header"`
	// IdleTimeout ends a session unused this long. Default 30m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// AbsoluteTimeout ends a session this long after it began, however
	// used. Default 12h.
	AbsoluteTimeout time.Duration `yaml:"absolute_timeout"`
	// OnUnavailable says what happens when a session's endpoint is gone,
	// ejected, unhealthy or behind an open breaker: fallback (the
	// default) moves the session to another endpoint, the same one on
	// every edge; strict answers 503 with Retry-After.
	OnUnavailable string `yaml:"on_unavailable"`
	// MaxSessions bounds the sessions of the route each edge keeps; the
	// least recently used are forgotten beyond it (counted in metrics).
	// Default 100000.
	MaxSessions int `yaml:"max_sessions"`
}

// StickyCookie is the session cookie an edge issues.
type StickyCookie struct {
	// Name defaults to "sm_" and the route's name.
	Name string `yaml:"name"`
	// Path defaults to the route's first path prefix, else "/".
	Path string `yaml:"path"`
	// Domain, when set, shares the cookie with subdomains.
	Domain string `yaml:"domain"`
	// Secure, HTTPOnly: default true. SameSite: strict (the default),
	// lax or none (which needs Secure).
	Secure   bool   `yaml:"secure"`
	HTTPOnly bool   `yaml:"http_only"`
	SameSite string `yaml:"same_site"`
}

// StickyLearn names the application's session token.
type StickyLearn struct {
	Cookie string `yaml:"cookie"`
	Header string `yaml:"header"`
}

// Sticky modes and unavailability policies.
const (
	StickyCookieMode   = "cookie"
	StickyLearnMode    = "learn"
	StickyHeaderMode   = "header"
	StickySourceIPMode = "source_ip"

	StickyFallback = "fallback"
	StickyStrict   = "strict"
)

func (s *EdgeSticky) setDefaults() { *s = EdgeSticky{ClockSkew: 5 * time.Second} }

func (s *Sticky) setDefaults() {
	*s = Sticky{
		Cookie:          StickyCookie{Secure: true, HTTPOnly: true, SameSite: "strict"},
		IdleTimeout:     30 * time.Minute,
		AbsoluteTimeout: 12 * time.Hour,
		OnUnavailable:   StickyFallback,
		MaxSessions:     100_000,
	}
}

// CookieName returns the name of route r's session cookie.
func (r *Route) CookieName() string {
	if r.Sticky.Cookie.Name != "" {
		return r.Sticky.Cookie.Name
	}
	return "sm_" + r.Name
}

// CookiePath returns the Path of route r's session cookie.
func (r *Route) CookiePath() string {
	if r.Sticky.Cookie.Path != "" {
		return r.Sticky.Cookie.Path
	}
	for _, m := range r.Matches {
		if m.Path != nil && m.Path.Prefix != "" {
			return m.Path.Prefix
		}
	}
	return "/"
}

// sticky checks the sticky section of route r, at path.
func (v *validator) sticky(c *Config, path string, r *Route) {
	s := r.Sticky
	if s == nil {
		return
	}
	path += ".sticky"
	modes := []string{StickyCookieMode, StickyLearnMode, StickyHeaderMode, StickySourceIPMode}
	if s.Mode == "" {
		v.errorf(path+".mode", "required: one of %s", strings.Join(modes, ", "))
	} else {
		v.oneOf(path+".mode", "sticky mode", s.Mode, modes)
	}
	v.oneOf(path+".on_unavailable", "policy", s.OnUnavailable, []string{StickyFallback, StickyStrict})
	v.positive(path+".idle_timeout", s.IdleTimeout)
	v.positive(path+".absolute_timeout", s.AbsoluteTimeout)
	if s.MaxSessions < 1 {
		v.errorf(path+".max_sessions", "must be at least 1, got %d", s.MaxSessions)
	}
	if r.Redirect != nil {
		v.errorf(path, "a route that redirects has no backends to stick to")
	}
	notFor := func(field, mode string) {
		v.errorf(path+"."+field, "%s is for mode %s, and this route's mode is %s", field, mode, s.Mode)
	}
	cookieSet := s.Cookie != StickyCookie{Secure: true, HTTPOnly: true, SameSite: "strict"}
	if cookieSet && s.Mode != StickyCookieMode {
		notFor("cookie", StickyCookieMode)
	}
	if s.Learn != (StickyLearn{}) && s.Mode != StickyLearnMode {
		notFor("learn", StickyLearnMode)
	}
	if s.Header != "" && s.Mode != StickyHeaderMode {
		notFor("header", StickyHeaderMode)
	}
	switch s.Mode {
	case StickyCookieMode:
		ck := s.Cookie
		if ck.Name != "" && !validCookieName(ck.Name) {
			v.errorf(path+".cookie.name", "invalid cookie name %s", quote(ck.Name))
		}
		if ck.Path != "" && !strings.HasPrefix(ck.Path, "/") {
			v.errorf(path+".cookie.path", "a path must start with /")
		}
		v.oneOf(path+".cookie.same_site", "SameSite", ck.SameSite, []string{"strict", "lax", "none"})
		if ck.SameSite == "none" && !ck.Secure {
			v.errorf(path+".cookie.same_site", "browsers refuse SameSite=None without Secure")
		}
	case StickyLearnMode:
		switch l := s.Learn; {
		case (l.Cookie == "") == (l.Header == ""):
			v.errorf(path+".learn", "name the application's session cookie or header: exactly one of cookie and header")
		case l.Cookie != "" && !validCookieName(l.Cookie):
			v.errorf(path+".learn.cookie", "invalid cookie name %s", quote(l.Cookie))
		case l.Header != "" && !validHeaderName(l.Header):
			v.errorf(path+".learn.header", "invalid header name %s", quote(l.Header))
		}
	case StickyHeaderMode:
		if !validHeaderName(s.Header) {
			v.errorf(path+".header", "name the request header that names the session, e.g. X-User-Id")
		}
	}
}

// edgeSticky checks what sticky routes need of the rest of c: the key,
// and the gossip pool. It reports a missing one once, at the first
// sticky route.
func (v *validator) edgeSticky(c *Config) {
	e := c.Edge
	first := slices.IndexFunc(e.Routes, func(r Route) bool { return r.Sticky != nil })
	if first >= 0 {
		path := fmt.Sprintf("edge.routes[%d].sticky", first)
		if e.Sticky == nil {
			v.errorf(path, "sticky sessions need edge.sticky.key_file: the key that signs their cookies and hashes their tokens (create one with `sidemesh keygen`)")
		}
		if c.Discovery.Gossip == nil {
			v.errorf(path, "sticky sessions are shared over the gossip pool: add discovery.gossip (edges join one even when Consul finds the services)")
		}
	}
	s := e.Sticky
	if s == nil {
		return
	}
	if s.KeyFile == "" {
		v.errorf("edge.sticky.key_file", "required (create one with `sidemesh keygen`)")
	}
	v.nonNegative("edge.sticky.clock_skew", s.ClockSkew)
	if s.PreviousKeyFile != "" && s.PreviousKeyFile == s.KeyFile {
		v.errorf("edge.sticky.previous_key_file", "the previous key is the current one")
	}
	if first < 0 {
		v.warnf("edge.sticky", "no route has a sticky section: the key is not used")
	}
}

// validCookieName reports whether s is a cookie name (an RFC 9110 token).
func validCookieName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return true
}

// stickyFiles returns the edge's sticky key files, for path resolution
// and checking.
func (e *Edge) stickyFiles() []fileField {
	if e == nil || e.Sticky == nil {
		return nil
	}
	return []fileField{{"edge.sticky.key_file", &e.Sticky.KeyFile}, {"edge.sticky.previous_key_file", &e.Sticky.PreviousKeyFile}}
}

// String describes a sticky section for the route table.
func (s *Sticky) String() string {
	switch s.Mode {
	case StickyCookieMode:
		return fmt.Sprintf("sticky by cookie, %s", s.OnUnavailable)
	case StickyLearnMode:
		if s.Learn.Cookie != "" {
			return fmt.Sprintf("sticky by the app's cookie %s, %s", s.Learn.Cookie, s.OnUnavailable)
		}
		return fmt.Sprintf("sticky by the app's header %s, %s", s.Learn.Header, s.OnUnavailable)
	case StickyHeaderMode:
		return fmt.Sprintf("sticky by header %s, %s", s.Header, s.OnUnavailable)
	}
	return fmt.Sprintf("sticky by client address, %s", s.OnUnavailable)
}
