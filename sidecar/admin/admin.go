// Package admin serves a sidecar's admin API: liveness, readiness, the
// effective config, the state of its upstreams, discovery backends,
// gossip pool and identity, recent availability events and traffic
// history, as JSON. It listens on loopback by default. What it changes
// is which endpoints are drained (PUT and DELETE /drain/{id}), which API
// keys are revoked (PUT and DELETE /api_keys/{set}/{id}/revoked),
// which API keys an edge's sets hold besides those of their files (PUT
// and DELETE /api_keys/{set}/{id}) and which responses the edges' caches
// hold (DELETE /cache), with methods a cross-site form or
// script cannot send to it without a CORS preflight, which it never
// grants.
//
// PUT /api_keys/{set}/{id} takes {"key": "<secret>"} or {"sha256":
// "<64 hex digits>"}, and optionally "expires" (RFC 3339) and
// "metadata" (a map of strings). A key in the clear is hashed by the
// handler at once: only its SHA-256 reaches the Provider, and no answer
// or log line carries either. With a gossip pool the key reaches every
// edge and outlives the edge it was added on; without one it is this
// process's own until it exits.
package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"time"
)

// Errors a Provider's methods wrap to say what the admin API answers:
// ErrNotFound is a 404 (no such set or key), ErrConflict a 409 (the
// change contradicts the config, such as removing a key of a file).
// Other errors are a 400.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// Provider supplies what the admin API shows. Its methods are called on
// every request, from any goroutine, and must not block for long.
type Provider interface {
	// Ready reports whether the sidecar serves: listeners up, a first
	// discovery snapshot for every upstream, certificates loaded. When it
	// is not, reason says what is missing.
	Ready() (ready bool, reason string)
	// Config returns the effective config as a JSON-encodable value.
	Config() any
	// Upstreams returns every upstream and its endpoints.
	Upstreams() []Upstream
	// Discovery returns the state of each discovery backend watch.
	Discovery() []Source
	// Members returns the gossip pool's members; nil without gossip.
	Members() []Member
	// Identity returns the sidecar's certificate; nil without mTLS.
	Identity() *Identity
	// Metrics serves the sidecar's metrics in the Prometheus text format.
	Metrics() http.Handler
	// Events returns the recent availability events, newest first: at
	// most the last 100.
	Events() []Event
	// History returns the recent traffic of each upstream and of the
	// inbound listener.
	History() History
	// Routes returns the edge's routes; nil for a sidecar without an edge.
	Routes() *Routes
	// Sticky returns the edge's sticky sessions; nil without sticky
	// routes.
	Sticky() *Sticky
	// RateLimits returns the edge's routes' rate limits; nil without.
	RateLimits() []RateLimit
	// Drain drains the endpoint with discovery ID id (on) or ends its
	// drain; Drained lists the drained IDs.
	Drain(id string, on bool) error
	Drained() []string
	// APIKeys returns the edge's API key sets (IDs, sources, expiries,
	// revocations; never a key nor its hash); RevokeAPIKey revokes one
	// key of a set (on) or ends its revocation.
	APIKeys() []APIKeySet
	RevokeAPIKey(set, id string, on bool) error
	// AddAPIKey adds a key to the set named set, or replaces the key of
	// the same ID that was added the same way; RemoveAPIKey removes a
	// key that was. Both wrap ErrNotFound for an unknown set (or, for
	// RemoveAPIKey, key) and ErrConflict for a change that would
	// contradict a key of the set's file.
	AddAPIKey(set string, k NewAPIKey) error
	RemoveAPIKey(set, id string) error
	// Cache returns the edge's response cache counters; nil when no
	// route caches. PurgeCache removes the responses a purge names, on
	// every edge of the gossip pool, and returns how many this edge
	// removed; it wraps ErrNotFound when no route caches.
	Cache() *Cache
	PurgeCache(p CachePurge) (int, error)
	// Profiling reports whether /debug/pprof/ serves (admin.profiling),
	// as the config in effect says: a reload turns it on or off.
	Profiling() bool
}

// Cache is an edge's response cache (GET /cache).
type Cache struct {
	// Entries counts the stored responses, every Vary variant apart;
	// Bytes is the memory they take (an estimate), within MaxBytes.
	Entries       int   `json:"entries"`
	Bytes         int64 `json:"bytes"`
	MaxBytes      int64 `json:"max_bytes"`
	MaxEntryBytes int64 `json:"max_entry_bytes"`
	// Hits counts requests answered from the cache, Misses those that
	// went to a backend (absent, stale or revalidated), Stores the
	// responses stored, Evictions those the byte bound evicted, Purged
	// those purges removed, since the cache was created.
	Hits      uint64 `json:"hits"`
	Misses    uint64 `json:"misses"`
	Stores    uint64 `json:"stores"`
	Evictions uint64 `json:"evictions"`
	Purged    uint64 `json:"purged"`
	// Waiting counts the requests waiting now for another request's
	// fetch of the same response (concurrent misses make one).
	Waiting int64 `json:"waiting"`
}

// CachePurge names the responses DELETE /cache removes: those of Key, a
// path (/img/logo.png?v=2: every host) or a URL (https://shop.example.com/img/logo.png:
// that host), or those tagged Tag by their route's tags header
// (Surrogate-Key). Exactly one is set.
type CachePurge struct {
	Key string `json:"key,omitempty"`
	Tag string `json:"tag,omitempty"`
}

// APIKeySet is one API key set of an edge.
type APIKeySet struct {
	Name string      `json:"name"`
	Keys []APIKeyRef `json:"keys"`
	// Conflicts are the IDs of keys added through the admin API that
	// this edge leaves out because a key of its file has the same ID or
	// the same secret (the file wins): edges whose files differ.
	Conflicts []string `json:"conflicts,omitempty"`
}

// APIKeyRef describes one key: never the key itself nor its hash.
type APIKeyRef struct {
	ID string `json:"id"`
	// Source is "file" for a key of the set's file, "admin" for one
	// added through PUT /api_keys/{set}/{id}.
	Source  string     `json:"source"`
	Expires *time.Time `json:"expires,omitempty"`
	Revoked bool       `json:"revoked"`
}

// NewAPIKey is a key added through PUT /api_keys/{set}/{id}: the SHA-256
// of its secret, never the secret.
type NewAPIKey struct {
	ID     string
	SHA256 [32]byte
	// Expires, when not zero, ends the key.
	Expires  time.Time
	Metadata map[string]string
}

// newAPIKeyBody is the body of PUT /api_keys/{set}/{id}.
type newAPIKeyBody struct {
	Key      string            `json:"key"`
	SHA256   string            `json:"sha256"`
	Expires  *time.Time        `json:"expires"`
	Metadata map[string]string `json:"metadata"`
}

// maxAPIKeyBody bounds the body of PUT /api_keys/{set}/{id}.
const maxAPIKeyBody = 16 << 10

// minAPIKeyLen is the shortest key in the clear PUT /api_keys accepts,
// as a key file does.
const minAPIKeyLen = 16

// parseNewAPIKey reads the body of PUT /api_keys/{set}/{id} and hashes
// the key in it. Its errors never quote the key.
func parseNewAPIKey(w http.ResponseWriter, r *http.Request) (NewAPIKey, error) {
	var body newAPIKeyBody
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAPIKeyBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) { // its message quotes a character, which may be the key's
			return NewAPIKey{}, fmt.Errorf("body: not JSON (at byte %d)", syntax.Offset)
		}
		return NewAPIKey{}, fmt.Errorf("body: want {\"key\" or \"sha256\", \"expires\", \"metadata\"}: %w", err)
	}
	k := NewAPIKey{ID: r.PathValue("id"), Metadata: body.Metadata}
	if body.Expires != nil {
		k.Expires = *body.Expires
	}
	switch {
	case (body.Key == "") == (body.SHA256 == ""):
		return NewAPIKey{}, errors.New("body: exactly one of key and sha256")
	case body.Key != "":
		if len(body.Key) < minAPIKeyLen {
			return NewAPIKey{}, fmt.Errorf("body: the key is %d bytes; at least %d", len(body.Key), minAPIKeyLen)
		}
		k.SHA256 = sha256.Sum256([]byte(body.Key))
	default:
		b, err := hex.DecodeString(body.SHA256)
		if err != nil || len(b) != sha256.Size {
			return NewAPIKey{}, errors.New("body: sha256 must be 64 hex digits")
		}
		copy(k.SHA256[:], b)
	}
	return k, nil
}

// errorStatus is the status that answers a Provider's err.
func errorStatus(err error) int {
	switch {
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	}
	return http.StatusBadRequest
}

// Drains is the answer of /drain: the drained endpoints' IDs.
type Drains struct {
	Drained []string `json:"drained"`
}

// RateLimit is one rate limit of an edge route: what it decided on this
// edge and, for a limit shared by the edges, how many share it.
type RateLimit struct {
	Route string `json:"route"`
	Name  string `json:"name"`
	// Scope is local, cluster or exact.
	Scope string `json:"scope"`
	// Allowed and Refused count this edge's decisions; ShadowRefused
	// those a limit with enforce: false would have refused.
	Allowed       uint64 `json:"allowed"`
	Refused       uint64 `json:"refused"`
	ShadowRefused uint64 `json:"shadow_refused"`
	// Keys are the keys this edge tracks, Evictions those it forgot for
	// max_keys.
	Keys      int    `json:"keys"`
	Evictions uint64 `json:"evictions"`
	// Edges counts the edges sharing the limit, this one included (1 for
	// a local limit).
	Edges int `json:"edges"`
	// OvershootBound, for a cluster limit, is the most the edges may
	// admit beyond the quota in one window.
	OvershootBound int `json:"overshoot_bound,omitempty"`
	// Partitioned reports that this edge sees fewer than a majority of
	// the edges it knew: a cluster limit applies its on_partition, an
	// exact one refuses.
	Partitioned bool `json:"partitioned,omitempty"`
}

// Sticky is what an edge knows of its sticky sessions. It holds counts
// only: no session token, and no table key.
type Sticky struct {
	Routes []StickyRoute `json:"routes"`
	// Edges are the edges this one knows share the session table, itself
	// included: those each session's owners are chosen among.
	Edges []string `json:"edges"`
	// PendingUpdates are updates this edge has queued for gossip and not
	// yet sent to enough peers: its replication lag, in entries.
	PendingUpdates int `json:"pending_updates"`
}

// StickyRoute is one sticky route's sessions, as this edge's copy of the
// shared table holds them, and what this edge's filter did.
type StickyRoute struct {
	Route         string `json:"route"`
	Mode          string `json:"mode"`
	OnUnavailable string `json:"on_unavailable"`
	// Sessions and Bytes are the sessions this edge holds and the memory
	// they take (an estimate); MaxSessions their bound, and Evictions
	// the sessions it made this edge forget.
	Sessions    int    `json:"sessions"`
	Bytes       int    `json:"bytes"`
	MaxSessions int    `json:"max_sessions"`
	Evictions   uint64 `json:"evictions"`
	// Requests by outcome: hit, new, rebind, miss, refused.
	Hits    uint64 `json:"hits"`
	New     uint64 `json:"new"`
	Rebinds uint64 `json:"rebinds"`
	Misses  uint64 `json:"misses"`
	Refused uint64 `json:"refused"`
	// OwnerLookups are asks to a session's owner edges about a token
	// this edge missed: OwnerFound those an owner knew, OwnerMissing
	// those it did not; OwnerErrors exchanges with an owner that failed
	// or timed out.
	OwnerLookups uint64 `json:"owner_lookups"`
	OwnerFound   uint64 `json:"owner_found"`
	OwnerMissing uint64 `json:"owner_missing"`
	OwnerErrors  uint64 `json:"owner_errors"`
	// PerEndpoint counts the live sessions on each endpoint, by its
	// discovery ID.
	PerEndpoint map[string]int `json:"per_endpoint"`
}

// Routes are an edge's routes: each as written, and the compiled table
// in precedence order.
type Routes struct {
	Routes []Route `json:"routes"`
	// Table is the compiled table as `sidemesh validate --print` shows
	// it: the order in which routes are tried.
	Table string `json:"table"`
	// Digest identifies the route config; every edge serving the same
	// routes has the same one (see Member.RouteDigest).
	Digest string `json:"digest"`
}

// Route is one edge route.
type Route struct {
	Name      string    `json:"name"`
	Hostnames []string  `json:"hostnames,omitempty"`
	Matches   []string  `json:"matches"`
	Backends  []Backend `json:"backends,omitempty"`
	// Legs are an aggregate route's calls, in declaration order.
	Legs     []Leg `json:"legs,omitempty"`
	Redirect bool  `json:"redirect,omitempty"`
}

// Leg is one call of an aggregate route.
type Leg struct {
	Name     string `json:"name"`
	Service  string `json:"service"`
	Required bool   `json:"required"`
}

// Backend is a route's service and its share.
type Backend struct {
	Service string `json:"service"`
	Weight  int    `json:"weight"`
}

// Upstream is one upstream service and its endpoints.
type Upstream struct {
	Service   string     `json:"service"`
	Balancer  string     `json:"balancer"`
	Sources   []string   `json:"sources"`
	Endpoints []Endpoint `json:"endpoints"`
}

// Endpoint is the balancer's view of one endpoint.
type Endpoint struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Weight   int    `json:"weight"`
	Zone     string `json:"zone,omitempty"`
	InFlight int64  `json:"in_flight"`
	// Requests and Failures count finished exchanges since the endpoint
	// appeared; failures are transport errors and 5xx.
	Requests  uint64  `json:"requests"`
	Failures  uint64  `json:"failures"`
	LatencyMS float64 `json:"latency_ms"`
	Breaker   string  `json:"breaker"`
	// EjectedUntil is set while the endpoint is ejected.
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	// Healthy reports passing active health checks; it is true when
	// HealthChecked is false, which says the upstream has no active
	// health checks: the endpoint's health is then unknown.
	Healthy       bool `json:"healthy"`
	HealthChecked bool `json:"health_checked"`
	// Draining reports that the endpoint gets no new work, only requests
	// of sticky sessions already on it (PUT /drain/{id}).
	Draining bool `json:"draining"`
}

// Source is the state of one discovery backend watch.
type Source struct {
	Upstream string `json:"upstream"`
	Backend  string `json:"backend"`
	Healthy  bool   `json:"healthy"`
	Error    string `json:"error,omitempty"`
}

// Member is one gossip pool member.
type Member struct {
	Name  string    `json:"name"`
	Addr  string    `json:"addr"`
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// RouteDigest is the digest of the routes the member serves, for an
	// edge: members whose digests differ serve different configs, and one
	// left behind by a failed reload stands out.
	RouteDigest string `json:"route_digest,omitempty"`
}

// Identity is the sidecar's own certificate.
type Identity struct {
	SPIFFEID string    `json:"spiffe_id"`
	NotAfter time.Time `json:"not_after"`
	// ExpiresInSeconds counts down to NotAfter; negative once expired.
	ExpiresInSeconds float64 `json:"expires_in_seconds"`
}

// Event is one change in the availability of what the sidecar depends
// on.
type Event struct {
	// Seq numbers events in the order they happened, from 1.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Kind is one of breaker_opened, breaker_half_open, breaker_closed,
	// ejected, restored, unhealthy, healthy (an endpoint);
	// member_joined, member_left, member_failed (a gossip member);
	// config_reloaded, config_rejected.
	Kind string `json:"kind"`
	// Subject is "upstream/host:port" for an endpoint, the member's name,
	// or "config".
	Subject string `json:"subject"`
	Detail  string `json:"detail"`
}

// History is the recent traffic of the sidecar, one point per interval.
type History struct {
	// IntervalSeconds is the length of one point (5); WindowSeconds how
	// far back points go (300).
	IntervalSeconds float64         `json:"interval_seconds"`
	WindowSeconds   float64         `json:"window_seconds"`
	Series          []HistorySeries `json:"series"`
}

// HistorySeries is the traffic of the local service through the inbound
// listener, or of one HTTP upstream through the outbound listener (and
// its own listener, if it has one). Its slices are parallel, one entry
// per interval, oldest first; they are empty until the first interval
// that ends after a request.
type HistorySeries struct {
	// Listener is inbound or outbound.
	Listener string `json:"listener"`
	Service  string `json:"service"`
	// Time is when each interval ended, in Unix milliseconds.
	Time []int64 `json:"time"`
	// RequestsPerSecond counts requests that ended in the interval;
	// ErrorsPerSecond those answered with a 5xx (the sidecar's own
	// failures included) or not at all.
	RequestsPerSecond []float64 `json:"requests_per_second"`
	ErrorsPerSecond   []float64 `json:"errors_per_second"`
	// P50MS and P99MS are the median and 99th percentile latency of
	// those requests, in milliseconds (within 12.5%); 0 for an interval
	// without requests.
	P50MS []float64 `json:"p50_ms"`
	P99MS []float64 `json:"p99_ms"`
	// Retries is set for an upstream with retries on.
	Retries *RetryHistory `json:"retries,omitempty"`
}

// RetryHistory is an upstream's retries: in total since the sidecar
// started, and per interval (parallel to the series' Time).
type RetryHistory struct {
	Total                      uint64   `json:"total"`
	BudgetExhaustedTotal       uint64   `json:"budget_exhausted_total"`
	PerInterval                []uint64 `json:"per_interval"`
	BudgetExhaustedPerInterval []uint64 `json:"budget_exhausted_per_interval"`
}

// Handler returns the admin API:
//
//	GET /            the dashboard: upstreams and endpoints, refreshing itself
//	GET /live        200 while the process serves requests at all
//	GET /ready       200 when ready, 503 with the reason otherwise
//	GET /config      the effective config
//	GET /endpoints   upstreams with endpoint state (in flight, latency, breaker, ejection, health)
//	GET /discovery   discovery backend health, e.g. Consul unreachable
//	GET /members     gossip members
//	GET /identity    the certificate's SPIFFE ID and seconds until it expires
//	GET /metrics     every metric, Prometheus text format
//	GET /routes      an edge's routes and its compiled table; null without an edge
//	GET /api_keys    an edge's API key sets: IDs, sources, expiries, revocations
//	GET /events      the last 100 availability events, newest first
//	GET /history     traffic per upstream and inbound, 5 s points over 5 minutes
//	GET /cache       an edge's response cache: entries, bytes, hits, misses, evictions
//	DELETE /cache?key=<path or URL> or ?tag=<tag>   purge, on every edge of the gossip pool
//	GET /debug/pprof/   the Go runtime's profiles, with admin.profiling; 404 otherwise
func Handler(p Provider) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /debug/pprof/", profiling(p))
	mux.Handle("GET /{$}", dashboard())
	mux.Handle("GET /metrics", p.Metrics())
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "live"})
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if ok, reason := p.Ready(); !ok {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": reason})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, p.Config())
	})
	mux.HandleFunc("GET /endpoints", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(p.Upstreams()))
	})
	mux.HandleFunc("GET /discovery", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(p.Discovery()))
	})
	mux.HandleFunc("GET /members", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(p.Members()))
	})
	mux.HandleFunc("GET /routes", func(w http.ResponseWriter, r *http.Request) {
		routes := p.Routes()
		if routes == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no edge section: this sidecar has no routes"})
			return
		}
		writeJSON(w, http.StatusOK, routes)
	})
	mux.HandleFunc("GET /sticky", func(w http.ResponseWriter, r *http.Request) {
		st := p.Sticky()
		if st == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no sticky routes"})
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /rate_limits", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(p.RateLimits()))
	})
	mux.HandleFunc("GET /drain", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, Drains{Drained: nonNil(p.Drained())})
	})
	for method, on := range map[string]bool{"PUT": true, "DELETE": false} {
		mux.HandleFunc(method+" /drain/{id...}", func(w http.ResponseWriter, r *http.Request) {
			if err := p.Drain(r.PathValue("id"), on); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, Drains{Drained: nonNil(p.Drained())})
		})
	}
	mux.HandleFunc("GET /api_keys", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"sets": nonNil(p.APIKeys())})
	})
	for method, on := range map[string]bool{"PUT": true, "DELETE": false} {
		mux.HandleFunc(method+" /api_keys/{set}/{id}/revoked", func(w http.ResponseWriter, r *http.Request) {
			if err := p.RevokeAPIKey(r.PathValue("set"), r.PathValue("id"), on); err != nil {
				writeJSON(w, errorStatus(err), map[string]string{"error": err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"set": r.PathValue("set"), "id": r.PathValue("id"), "revoked": on})
		})
	}
	mux.HandleFunc("PUT /api_keys/{set}/{id}", func(w http.ResponseWriter, r *http.Request) {
		k, err := parseNewAPIKey(w, r)
		if err == nil {
			err = p.AddAPIKey(r.PathValue("set"), k)
		}
		if err != nil {
			writeJSON(w, errorStatus(err), map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"set": r.PathValue("set"), "id": k.ID, "source": "admin"})
	})
	mux.HandleFunc("DELETE /api_keys/{set}/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := p.RemoveAPIKey(r.PathValue("set"), r.PathValue("id")); err != nil {
			writeJSON(w, errorStatus(err), map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"set": r.PathValue("set"), "id": r.PathValue("id"), "removed": true})
	})
	mux.HandleFunc("GET /cache", func(w http.ResponseWriter, r *http.Request) {
		c := p.Cache()
		if c == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no route has a cache section"})
			return
		}
		writeJSON(w, http.StatusOK, c)
	})
	mux.HandleFunc("DELETE /cache", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		purge := CachePurge{Key: q.Get("key"), Tag: q.Get("tag")}
		n, err := p.PurgeCache(purge)
		if err != nil {
			writeJSON(w, errorStatus(err), map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"key": purge.Key, "tag": purge.Tag, "purged_here": n})
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(p.Events()))
	})
	mux.HandleFunc("GET /history", func(w http.ResponseWriter, r *http.Request) {
		h := p.History()
		h.Series = nonNil(h.Series)
		writeJSON(w, http.StatusOK, h)
	})
	mux.HandleFunc("GET /identity", func(w http.ResponseWriter, r *http.Request) {
		id := p.Identity()
		if id == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "mutual TLS is off"})
			return
		}
		writeJSON(w, http.StatusOK, id)
	})
	return mux
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client may be gone; nothing to do about it
}

// profiling serves net/http/pprof's pages under /debug/pprof/ while p
// says profiling is on, and 404 otherwise.
func profiling(p Provider) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index) // and the named profiles: heap, goroutine, allocs...
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !p.Profiling() {
			http.Error(w, "profiling is off (admin.profiling)", http.StatusNotFound)
			return
		}
		mux.ServeHTTP(w, r)
	})
}
