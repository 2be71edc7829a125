package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/policy"
)

// IntentionOptions configures an Intentions watch. The zero value is ready
// to use: every zero field gets the default stated on it.
type IntentionOptions struct {
	// WaitTime bounds each blocking query. Zero means DefaultWaitTime
	// (5m); Consul caps it at 10m.
	WaitTime time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff, with
	// jitter, between failed queries. Zero means DefaultMinBackoff
	// (250ms) and DefaultMaxBackoff (30s).
	MinBackoff, MaxBackoff time.Duration
	// Logger receives the watch's logs, among them a warning for each
	// part of an intention that cannot be enforced as Consul would; nil
	// discards them.
	Logger *slog.Logger
}

// Intentions watches the Consul intentions that decide who may call one
// destination service and translates them into policy rules.
//
// The intentions are those of the service-intentions config entries of
// the destination and of the wildcard destination "*", as Consul's
// /v1/connect/intentions/match?by=destination returns them: in Consul's
// precedence order, in one blocking query. (The config entry endpoint,
// /v1/config/service-intentions/<name>, answers 404 while an entry does
// not exist, and api.ConfigEntries().Get then drops the X-Consul-Index of
// that answer, so a watch of a missing entry could not block.)
//
// Each source of an intention becomes rules named after it:
//
//   - an L4 intention (Action allow or deny) is one rule,
//     "consul intention web -> cart", From [web], To cart;
//   - an L7 intention (Permissions) is one rule per permission, in order,
//     "consul intention web -> cart permission 2" for the second, with its
//     methods, path (exact or prefix) and header matches (present, exact,
//     prefix, each possibly inverted);
//   - the wildcard source "*" is From ["*"], the wildcard destination is
//     To "*".
//
// What policy.Rule cannot express is never turned into a wider allow:
// a permission that needs an unsupported match (PathRegex; a header
// Suffix, Contains or Regex match or IgnoreCase; a JWT requirement) is
// dropped if it allows, and kept without that match, denying more than
// Consul would, if it denies; each is logged once, at warn. Intentions of
// sources from cluster peers or sameness groups are skipped (their
// workloads have certificates of another trust domain, which mTLS refuses
// anyway), and so are allows from another namespace or partition (a rule
// names a service in any namespace); denies from them are kept for the
// service name in any namespace.
//
// The permissions of one L7 intention become one policy.Rule group
// (Rule.Group), so package policy decides them as Consul does: the first
// matching permission decides, and a request that matches none of them
// gets the default action rather than a rule of lower precedence.
//
// Intentions is safe for concurrent use; each Watch runs its own loop.
type Intentions struct {
	client      *api.Client
	destination string
	opts        IntentionOptions
	log         *slog.Logger

	mu     sync.Mutex
	warned map[string]bool // warnings already logged, by text
}

// NewIntentions returns a watch of the intentions of destination (the
// local service), queried through client, which must not be nil. o is
// copied; zero fields get their defaults. Nothing happens until Watch.
func NewIntentions(client *api.Client, destination string, o IntentionOptions) *Intentions {
	log := watchDefaults(&o.WaitTime, &o.MinBackoff, &o.MaxBackoff, o.Logger)
	return &Intentions{
		client:      client,
		destination: destination,
		opts:        o,
		log:         log.With("component", "consul-intentions", "destination", destination),
		warned:      map[string]bool{},
	}
}

// Watch starts a goroutine that runs blocking queries for the intentions
// of the destination and sends the complete current rule list whenever it
// changes; an unchanged result sends nothing. The first list is sent as
// soon as the first query succeeds, even when it is empty (no intentions:
// the policy's default decides). Every rule sent passes Rule.Validate.
//
// The channel has a buffer of one, and a newer list replaces an unread
// older one: the loop never blocks on a slow reader, which always gets
// the newest list. The reader owns the lists it receives. While Consul
// cannot be queried nothing is sent, so the reader keeps enforcing the
// last list; the loop retries with capped backoff. Cancelling ctx aborts
// the query in flight, stops the goroutine and closes the channel.
//
// Watch fails only when the destination is empty or "*"; it does not wait
// for Consul.
func (in *Intentions) Watch(ctx context.Context) (<-chan []policy.Rule, error) {
	if in.destination == "" || in.destination == "*" {
		return nil, fmt.Errorf("consul: intentions: destination %q: want a service name", in.destination)
	}
	ch := make(latest[[]policy.Rule], 1)
	go in.run(ctx, ch)
	return ch, nil
}

// run is the blocking-query loop of one Watch.
func (in *Intentions) run(ctx context.Context, ch latest[[]policy.Rule]) {
	defer close(ch)
	var (
		last []policy.Rule
		sent bool
	)
	loop := blockingLoop{
		what:     "intentions " + in.destination,
		waitTime: in.opts.WaitTime, minBackoff: in.opts.MinBackoff, maxBackoff: in.opts.MaxBackoff,
		log: in.log,
	}
	loop.run(ctx, func(q *api.QueryOptions) (*api.QueryMeta, error) {
		matches, meta, err := in.client.Connect().IntentionMatch(&api.IntentionMatch{
			By:    api.IntentionMatchDestination,
			Names: []string{in.destination},
		}, q)
		if err != nil {
			return nil, err
		}
		ixns := matches[in.destination]
		gated, err := in.jwtGated(q.Context(), ixns)
		if err != nil {
			return nil, err
		}
		rules := in.translate(ixns, gated)
		if sent && reflect.DeepEqual(rules, last) {
			return meta, nil
		}
		// The reader owns what it receives; keep our own copy.
		ch.publish(rules)
		last, sent = cloneRules(rules), true
		in.log.Debug("intentions sent", "rules", len(rules), "index", meta.LastIndex)
		return meta, nil
	})
}

// warn logs msg with args at warn the first time it is seen (with the
// same args).
func (in *Intentions) warn(msg string, args ...any) {
	key := fmt.Sprint(append([]any{msg}, args...)...)
	in.mu.Lock()
	seen := in.warned[key]
	in.warned[key] = true
	in.mu.Unlock()
	if !seen {
		in.log.Warn(msg, args...)
	}
}

// jwtGated returns the destinations among those of ixns whose
// service-intentions config entry requires a JWT of every caller. The
// intentions match endpoint computes it into each intention, but
// api.Intention has no field for it, so it is read from the entries. An
// entry that is gone by now counts as not gated: the next answer of the
// blocking query, which follows at once, no longer has its intentions.
func (in *Intentions) jwtGated(ctx context.Context, ixns []*api.Intention) (map[string]bool, error) {
	gated := map[string]bool{}
	seen := map[string]bool{}
	for _, ixn := range ixns {
		if ixn == nil || seen[ixn.DestinationName] {
			continue
		}
		dst := ixn.DestinationName
		seen[dst] = true
		e, _, err := in.client.ConfigEntries().Get(api.ServiceIntentions, dst, (&api.QueryOptions{}).WithContext(ctx))
		var se api.StatusError
		switch {
		case errors.As(err, &se) && se.Code == http.StatusNotFound:
			continue
		case err != nil:
			return nil, fmt.Errorf("read config entry %s/%s: %w", api.ServiceIntentions, dst, err)
		}
		if si, ok := e.(*api.ServiceIntentionsConfigEntry); ok && si.JWT != nil && len(si.JWT.Providers) > 0 {
			gated[dst] = true
		}
	}
	return gated, nil
}

// translate turns intentions, in Consul's precedence order, into rules in
// the same order. jwtGated holds the destinations whose config entry
// requires a JWT. It never returns nil.
func (in *Intentions) translate(ixns []*api.Intention, jwtGated map[string]bool) []policy.Rule {
	rules := []policy.Rule{}
	for _, ixn := range ixns {
		if ixn == nil {
			continue
		}
		src, dst := ixn.SourceName, ixn.DestinationName
		name := fmt.Sprintf("consul intention %s -> %s", ixn.SourceString(), ixn.DestinationString())
		if why := foreignSource(ixn); why != "" {
			in.warn("consul intention skipped: its callers cannot present a certificate of this trust domain", "intention", name, "source", why)
			continue
		}
		otherNS := ixn.SourceNS != "" && ixn.SourceNS != api.IntentionDefaultNamespace ||
			ixn.SourcePartition != "" && ixn.SourcePartition != "default"
		gated := jwtGated[dst]
		if len(ixn.Permissions) == 0 {
			action, err := policy.ParseAction(string(ixn.Action))
			if err != nil {
				in.warn("consul intention skipped: unknown action", "intention", name, "action", ixn.Action)
				continue
			}
			if gated && action == policy.Allow {
				in.warn("consul intention skipped: sidemesh cannot match all its conditions, so it allows nothing",
					"intention", name, "unsupported", "the JWT requirement of its config entry")
				continue
			}
			if otherNS {
				if action == policy.Allow {
					in.warn("consul intention skipped: an allow from another namespace or partition cannot be expressed", "intention", name)
					continue
				}
				in.warn("consul intention from another namespace or partition applied to the service name in every namespace", "intention", name)
			}
			rules = in.appendValid(rules, policy.Rule{Name: name, From: []string{src}, To: dst, Action: action})
			continue
		}
		for i, perm := range ixn.Permissions {
			if perm == nil {
				continue
			}
			pname := fmt.Sprintf("%s permission %d", name, i+1)
			r, ok := in.permissionRule(pname, src, dst, perm, gated)
			if !ok {
				continue
			}
			// The permissions of one intention are an ordered list: the
			// first that matches decides, and a request matching none gets
			// the default, as in Consul.
			r.Group = name
			if otherNS {
				if r.Action == policy.Allow {
					in.warn("consul intention permission skipped: an allow from another namespace or partition cannot be expressed", "intention", pname)
					continue
				}
				in.warn("consul intention from another namespace or partition applied to the service name in every namespace", "intention", pname)
			}
			rules = in.appendValid(rules, r)
		}
	}
	return rules
}

// appendValid appends r to rules if it is valid, and logs it otherwise.
func (in *Intentions) appendValid(rules []policy.Rule, r policy.Rule) []policy.Rule {
	if err := r.Validate(); err != nil {
		in.warn("consul intention skipped: not a valid sidemesh rule", "intention", r.Name, "error", err)
		return rules
	}
	return append(rules, r)
}

// permissionRule translates one L7 permission; gated says that its config
// entry requires a JWT. It reports false when the permission is dropped: an
// allow that needs a match policy.Rule cannot express. A deny with such a
// match is kept without it.
func (in *Intentions) permissionRule(name, src, dst string, perm *api.IntentionPermission, gated bool) (policy.Rule, bool) {
	r := policy.Rule{Name: name, From: []string{src}, To: dst}
	action, err := policy.ParseAction(string(perm.Action))
	if err != nil {
		in.warn("consul intention permission skipped: unknown action", "intention", name, "action", perm.Action)
		return r, false
	}
	r.Action = action
	var unsupported []string
	if gated {
		unsupported = append(unsupported, "the JWT requirement of its config entry")
	}
	if perm.JWT != nil && len(perm.JWT.Providers) > 0 {
		unsupported = append(unsupported, "a JWT requirement")
	}
	if h := perm.HTTP; h != nil {
		switch {
		case h.PathExact != "":
			if p, err := policy.NormalizePath(h.PathExact); err == nil {
				r.Paths = []policy.PathMatch{{Exact: p}}
			} else {
				unsupported = append(unsupported, fmt.Sprintf("PathExact %s (%v)", h.PathExact, err))
			}
		case h.PathPrefix != "":
			if p, err := policy.NormalizePath(h.PathPrefix); err == nil {
				r.Paths = []policy.PathMatch{{Prefix: p}}
			} else {
				unsupported = append(unsupported, fmt.Sprintf("PathPrefix %s (%v)", h.PathPrefix, err))
			}
		case h.PathRegex != "":
			unsupported = append(unsupported, "PathRegex "+h.PathRegex)
		}
		r.Methods = append([]string(nil), h.Methods...)
		for _, hp := range h.Header {
			if m, ok := headerMatch(hp); ok {
				r.Headers = append(r.Headers, m)
			} else {
				unsupported = append(unsupported, fmt.Sprintf("header %s match %s", hp.Name, headerKind(hp)))
			}
		}
	}
	if len(unsupported) == 0 {
		return r, true
	}
	what := strings.Join(unsupported, "; ")
	if r.Action == policy.Allow {
		in.warn("consul intention permission skipped: sidemesh cannot match all its conditions, so it allows nothing",
			"intention", name, "unsupported", what)
		return r, false
	}
	in.warn("consul intention permission applied without the conditions sidemesh cannot match: it denies more than in Consul",
		"intention", name, "unsupported", what)
	return r, true
}

// headerMatch translates a header match, reporting false for kinds that
// policy.HeaderMatch cannot express.
func headerMatch(h api.IntentionHTTPHeaderPermission) (policy.HeaderMatch, bool) {
	m := policy.HeaderMatch{Name: h.Name, Invert: h.Invert}
	if h.IgnoreCase || h.Suffix != "" || h.Contains != "" || h.Regex != "" || strings.HasPrefix(h.Name, ":") {
		return m, false
	}
	switch {
	case h.Present && h.Exact == "" && h.Prefix == "":
		m.Present = true
	case !h.Present && h.Exact != "" && h.Prefix == "":
		m.Exact = h.Exact
	case !h.Present && h.Exact == "" && h.Prefix != "":
		m.Prefix = h.Prefix
	default:
		return m, false
	}
	return m, true
}

// headerKind names the kind of a header match, for warnings.
func headerKind(h api.IntentionHTTPHeaderPermission) string {
	var kinds []string
	for _, k := range []struct {
		set  bool
		name string
	}{
		{h.Present, "Present"}, {h.Exact != "", "Exact"}, {h.Prefix != "", "Prefix"},
		{h.Suffix != "", "Suffix"}, {h.Contains != "", "Contains"}, {h.Regex != "", "Regex"},
		{h.IgnoreCase, "IgnoreCase"}, {strings.HasPrefix(h.Name, ":"), "on a pseudo-header"},
	} {
		if k.set {
			kinds = append(kinds, k.name)
		}
	}
	if len(kinds) == 0 {
		return "(none)"
	}
	return strings.Join(kinds, "+")
}

// foreignSource says why the source of ixn cannot call this sidecar with a
// certificate it accepts, or "" if it can.
func foreignSource(ixn *api.Intention) string {
	switch {
	case ixn.SourcePeer != "":
		return "is in cluster peer " + ixn.SourcePeer
	case ixn.SourceSamenessGroup != "":
		return "is sameness group " + ixn.SourceSamenessGroup
	case ixn.SourceType != "" && ixn.SourceType != api.IntentionSourceConsul:
		return "has type " + string(ixn.SourceType)
	}
	return ""
}

// cloneRules returns a deep copy of rules.
func cloneRules(rules []policy.Rule) []policy.Rule {
	out := make([]policy.Rule, len(rules))
	for i, r := range rules {
		r.From = append([]string(nil), r.From...)
		r.Methods = append([]string(nil), r.Methods...)
		r.Paths = append([]policy.PathMatch(nil), r.Paths...)
		r.Headers = append([]policy.HeaderMatch(nil), r.Headers...)
		out[i] = r
	}
	return out
}
