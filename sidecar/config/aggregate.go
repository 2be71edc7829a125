package config

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Aggregate makes a route answer with one JSON object merged from the
// responses of several calls to mesh services, its legs, instead of
// passing on one backend's response. Legs that use no other leg's
// response start at once, in parallel; a leg whose path uses a field of
// another leg's response starts when that leg has answered. Each leg
// goes through its service's balancer, breakers, retries and mutual TLS
// as a backend would. See docs/edge.md, "Aggregation".
type Aggregate struct {
	// Legs are the calls, merged in this order whatever the order they
	// answer in. At least one.
	Legs []Leg `yaml:"legs"`
	// OnConflict says what happens when two legs merge a different value
	// under the same key: error (the default) fails the request with a
	// 502 naming the key and the legs, first keeps the value of the leg
	// declared first, last the one declared last. Equal values never
	// conflict.
	OnConflict string `yaml:"on_conflict"`
	// Concat names top-level array fields that legs merged at the top
	// level may each bring: their elements are concatenated, in leg
	// order, instead of conflicting. Empty: none.
	Concat []string `yaml:"concat"`
	// AllowSetCookie passes the legs' Set-Cookie headers to the client.
	// Default false: they are dropped, since a leg's cookie would be set
	// for the edge's host.
	AllowSetCookie bool `yaml:"allow_set_cookie"`
	// MaxLegBytes bounds each leg's response body; a leg that sends more
	// fails. Default 4 MiB (4194304).
	MaxLegBytes int `yaml:"max_leg_bytes"`
}

// Leg is one call of an aggregate: a request to a mesh service whose
// JSON object response is merged into the aggregate's.
type Leg struct {
	// Name names the leg in the missing-leg header, in errors, and in
	// other legs' path templates. Required, unique in the route;
	// lowercase letters, digits, '-' and '_' (no dots).
	Name string `yaml:"name"`
	// Service is the mesh service called, found as a route backend's is
	// (an upstreams entry of that name, or discovery). Required.
	Service string `yaml:"service"`
	// Path is the request's path and query, a template: "{leg.field}"
	// is replaced by the field (dotted for nested objects) of the
	// response of the earlier leg named, path-escaped; the leg then
	// starts once that leg has answered. A string, number or boolean
	// field can be used. Required; starts with "/".
	Path string `yaml:"path"`
	// Method is the request's method. Default GET. A leg whose method is
	// not idempotent (POST, PATCH) is never retried. Legs send no body.
	Method string `yaml:"method"`
	// Timeout bounds the leg, from its start to the end of its response
	// body; a leg that takes longer is cancelled and fails. Default: the
	// route's timeout; when both are zero, the upstream's timeout bounds
	// the wait for response headers. At most the route's timeout when
	// the route sets one.
	Timeout time.Duration `yaml:"timeout"`
	// Required makes a failure of the leg fail the whole request (502).
	// Default true; a leg with required: false that fails is left out,
	// and the response says so (X-Sidemesh-Aggregate: partial).
	Required bool `yaml:"required"`
	// Under is the key the leg's object is merged under. Default (or
	// empty): the leg's name. "." merges the object's fields at the top
	// level of the response.
	Under string `yaml:"under"`
	// Headers names the client's request headers the leg sends on, e.g.
	// [Authorization, Accept-Language]. Besides these a leg sends only
	// X-Request-Id, the X-Forwarded-* headers as the edge set them,
	// Accept: application/json, and the trace context. Empty: none.
	Headers []string `yaml:"headers"`
}

// Aggregate conflict policies.
const (
	ConflictError = "error"
	ConflictFirst = "first"
	ConflictLast  = "last"
)

// DefaultMaxLegBytes is the default bound of a leg's response body.
const DefaultMaxLegBytes = 4 << 20

// UnderTop is the Leg.Under that merges a leg at the top level.
const UnderTop = "."

func (a *Aggregate) setDefaults() {
	*a = Aggregate{OnConflict: ConflictError, MaxLegBytes: DefaultMaxLegBytes}
}

func (l *Leg) setDefaults() { *l = Leg{Method: http.MethodGet, Required: true} }

// Key returns the key l is merged under: "" for the top level.
func (l *Leg) Key() string {
	switch l.Under {
	case "":
		return l.Name
	case UnderTop:
		return ""
	}
	return l.Under
}

// PathPart is a piece of a leg's path template: literal text, or (when
// Leg is set) the field of leg Leg's response at Field, one name per
// level of nesting.
type PathPart struct {
	Literal string
	Leg     string
	Field   []string
}

// PathParts splits l's path template into its literal text and its
// references to other legs' fields.
func (l *Leg) PathParts() ([]PathPart, error) {
	var parts []PathPart
	s := l.Path
	for s != "" {
		open := strings.IndexByte(s, '{')
		if close := strings.IndexByte(s, '}'); close >= 0 && (open < 0 || close < open) {
			return nil, fmt.Errorf("path %s: a '}' closes nothing", quote(l.Path))
		}
		if open < 0 {
			parts = append(parts, PathPart{Literal: s})
			break
		}
		if open > 0 {
			parts = append(parts, PathPart{Literal: s[:open]})
		}
		ref, rest, ok := strings.Cut(s[open+1:], "}")
		if !ok {
			return nil, fmt.Errorf("path %s: a '{' is not closed", quote(l.Path))
		}
		leg, field, dotted := strings.Cut(ref, ".")
		fields := strings.Split(field, ".")
		if !dotted || leg == "" || slices.Contains(fields, "") || strings.ContainsAny(ref, "{") {
			return nil, fmt.Errorf("path %s: {%s} must name a leg and a field of its response, e.g. {orders.user_id}", quote(l.Path), ref)
		}
		parts = append(parts, PathPart{Leg: leg, Field: fields})
		s = rest
	}
	return parts, nil
}

// aggregate checks route r's aggregate section, at path.
func (v *validator) aggregate(c *Config, path string, r *Route) {
	a := r.Aggregate
	if a == nil {
		return
	}
	path += ".aggregate"
	if len(r.Backends) > 0 {
		v.errorf(path, "a route has backends or an aggregate, not both")
	}
	if r.Redirect != nil {
		v.errorf(path, "a route that redirects has no aggregate")
	}
	// Each leg names its own path and service: a rewrite or a session
	// would have nothing to act on.
	if r.Rewrite != nil {
		v.errorf(path, "an aggregate route has no rewrite: each leg's path is what its service gets")
	}
	if r.Sticky != nil {
		v.errorf(path, "an aggregate route has no sticky sessions: its legs go to several services")
	}
	if len(a.Legs) == 0 {
		v.errorf(path+".legs", "required: an aggregate needs at least one leg")
	}
	v.oneOf(path+".on_conflict", "conflict policy", a.OnConflict, []string{ConflictError, ConflictFirst, ConflictLast})
	for i, name := range a.Concat {
		if name == "" {
			v.errorf(fmt.Sprintf("%s.concat[%d]", path, i), "required: a top-level field name")
		}
	}
	if a.MaxLegBytes < 1 {
		v.errorf(path+".max_leg_bytes", "must be at least 1, got %d", a.MaxLegBytes)
	}
	legs := map[string]int{}  // name: index
	under := map[string]int{} // key: index of the leg merged under it
	for i := range a.Legs {
		l := &a.Legs[i]
		lp := fmt.Sprintf("%s.legs[%d]", path, i)
		j, dup := legs[l.Name]
		switch {
		case l.Name == "":
			v.errorf(lp+".name", "required")
		case strings.Contains(l.Name, ".") || !validName(l.Name):
			v.errorf(lp+".name", "invalid leg name %s: want lowercase letters, digits, '-' and '_' (path templates use the dot)", quote(l.Name))
		case dup:
			v.errorf(lp+".name", "leg %s is declared twice (first at %s)", quote(l.Name), v.where(fmt.Sprintf("%s.legs[%d].name", path, j)))
		}
		if v.name(lp+".service", l.Service) && implicit(c, l.Service) && c.Discovery.Consul == nil && c.Discovery.Gossip == nil {
			v.errorf(lp+".service", "no upstream %s is declared and no discovery backend could find it: add an upstreams entry with endpoints, or discovery", quote(l.Service))
		}
		v.legPath(lp+".path", l, legs)
		if !validMethod(l.Method) {
			v.errorf(lp+".method", "invalid method %s", quote(l.Method))
		}
		v.nonNegative(lp+".timeout", l.Timeout)
		if r.Timeout > 0 && l.Timeout > r.Timeout {
			v.errorf(lp+".timeout", "%v is longer than the route's timeout (%v), which bounds every leg", l.Timeout, r.Timeout)
		}
		if key := l.Key(); key != "" && !(dup && l.Under == "") {
			if j, dup := under[key]; dup {
				v.errorf(lp+".under", "legs %s and %s are both merged under %s: give one another key", quote(a.Legs[j].Name), quote(l.Name), quote(key))
			} else {
				under[key] = i
			}
		}
		for k, h := range l.Headers {
			if !validHeaderName(h) {
				v.errorf(fmt.Sprintf("%s.headers[%d]", lp, k), "invalid header name %s", quote(h))
			}
		}
		if l.Name != "" && !dup {
			legs[l.Name] = i
		}
	}
}

// legPath checks the path template of l; earlier holds the legs declared
// before it, which are the ones it may use. Using only earlier legs
// rules out cycles.
func (v *validator) legPath(path string, l *Leg, earlier map[string]int) {
	if !strings.HasPrefix(l.Path, "/") {
		v.errorf(path, "required: a path starting with /, e.g. /users/{orders.user_id}")
		return
	}
	parts, err := l.PathParts()
	if err != nil {
		v.errorf(path, "%v", err)
		return
	}
	for _, p := range parts {
		switch _, ok := earlier[p.Leg]; {
		case p.Leg == "":
		case p.Leg == l.Name:
			v.errorf(path, "{%s.%s}: a leg cannot use its own response", p.Leg, strings.Join(p.Field, "."))
		case !ok:
			v.errorf(path, "{%s.%s}: no leg %s is declared before this one", p.Leg, strings.Join(p.Field, "."), quote(p.Leg))
		}
	}
}
