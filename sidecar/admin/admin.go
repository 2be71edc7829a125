// Package admin serves a sidecar's admin API: liveness, readiness, the
// effective config, and the state of its upstreams, discovery backends,
// gossip pool and identity, as JSON. It listens on loopback by default;
// it changes nothing.
package admin

import (
	"encoding/json"
	"net/http"
	"time"
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
	Healthy      bool       `json:"healthy"`
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
}

// Identity is the sidecar's own certificate.
type Identity struct {
	SPIFFEID string    `json:"spiffe_id"`
	NotAfter time.Time `json:"not_after"`
	// ExpiresInSeconds counts down to NotAfter; negative once expired.
	ExpiresInSeconds float64 `json:"expires_in_seconds"`
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
func Handler(p Provider) http.Handler {
	mux := http.NewServeMux()
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
