package sticky

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

// Outcomes of the filter, as pipeline.Info.Sticky records them.
const (
	OutcomeHit    = "hit"    // the session's endpoint took the request
	OutcomeNew    = "new"    // a session began with this request
	OutcomeRebind = "rebind" // the session moved off an unavailable endpoint
	OutcomeMiss   = "miss"   // a token named no live session, and none began
)

// RetryAfter is what a strict session whose endpoint is unavailable is
// told to wait, in seconds.
const RetryAfter = "5"

// Filter returns the pipeline filter of r: it finds the request's session
// and asks the balancer for its endpoint (and the route's split for its
// service); when the response's headers come, it begins a session, or
// moves one whose endpoint was unavailable, and for cookie mode sets the
// cookie. A tampered, expired or unknown cookie is no cookie: a new
// session begins. It must run after the Forwarded filter (source_ip mode
// reads X-Forwarded-For as that filter leaves it).
func (r *Route) Filter() pipeline.Filter {
	return pipeline.FilterFunc(func(w http.ResponseWriter, req *http.Request, next pipeline.Handler) error {
		info := pipeline.InfoFrom(req.Context())
		if info == nil {
			return next.ServeHTTP(w, req)
		}
		cfg := r.cfg.Load()
		rw := &responseWriter{ResponseWriter: w, x: exchange{route: r, cfg: cfg, info: info, ctx: req.Context()}}
		x := &rw.x
		if token := r.token(req, cfg); token != nil {
			x.token = token
			x.key, x.rebindKey, x.session, x.found = r.lookup(req.Context(), token, cfg)
			if !x.found {
				r.stats.misses.Add(1)
				info.Sticky = OutcomeMiss
			} else {
				info.Affinity, info.Backend = x.session.Endpoint, x.session.Service
				info.AffinityStrict = cfg.OnUnavailable == config.StickyStrict
				info.RebindKey = x.rebindKey
			}
		}
		err := next.ServeHTTP(rw, req)
		if err != nil && x.found && info.AffinityStrict {
			var pe *pipeline.Error
			if errors.As(err, &pe) && pe.Kind == pipeline.KindNoEndpoints {
				r.stats.refused.Add(1)
				w.Header().Set("Retry-After", RetryAfter)
				pe.Msg = "this session's endpoint is unavailable; retry later"
			}
		}
		return err
	})
}

// token returns what names the request's session, by mode; nil when it
// has none (or, in cookie mode, a cookie that does not verify).
func (r *Route) token(req *http.Request, cfg *routeConfig) []byte {
	switch cfg.Mode {
	case config.StickyCookieMode:
		c, err := req.Cookie(cfg.cookieName)
		if err != nil {
			return nil
		}
		id, ok := r.verify(c.Value)
		if !ok {
			r.stats.misses.Add(1)
			pipeline.InfoFrom(req.Context()).Sticky = OutcomeMiss
			return nil
		}
		return id
	case config.StickyLearnMode:
		if cfg.Learn.Cookie != "" {
			if c, err := req.Cookie(cfg.Learn.Cookie); err == nil && c.Value != "" {
				return []byte(c.Value)
			}
			return nil
		}
		if v := req.Header.Get(cfg.Learn.Header); v != "" {
			return []byte(v)
		}
	case config.StickyHeaderMode:
		if v := req.Header.Get(cfg.Header); v != "" {
			return []byte(v)
		}
	case config.StickySourceIPMode:
		return []byte(proxy.ClientAddr(req))
	}
	return nil
}

// Cookies hold "<session id>.<signature>", both base64url: a random
// 128-bit ID and the first 128 bits of HMAC-SHA256 over the route's name
// and the ID, so that a cookie of one route is worth nothing on another.
const idBytes, sigBytes = 16, 16

// cookieValue returns the cookie naming session id on r, signed with
// kr's current key.
func (r *Route) cookieValue(kr *keyring, id []byte) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString(id) + "." + enc.EncodeToString(r.sign(kr, 0, id))
}

// sign returns the signature of id under kr's i-th cookie key.
func (r *Route) sign(kr *keyring, i int, id []byte) []byte {
	var sum [sha256.Size]byte
	r.mac(&kr.signers[i], id, &sum)
	return sum[:sigBytes]
}

// verify returns the session ID a cookie value names, if its signature
// is good under any of the keys.
func (r *Route) verify(v string) ([]byte, bool) {
	idText, sigText, ok := strings.Cut(v, ".")
	if !ok {
		return nil, false
	}
	enc := base64.RawURLEncoding
	if enc.DecodedLen(len(idText)) != idBytes || enc.DecodedLen(len(sigText)) != sigBytes {
		return nil, false
	}
	var id [idBytes]byte
	var sig [sigBytes]byte
	if _, err := enc.Decode(id[:], []byte(idText)); err != nil {
		return nil, false
	}
	if _, err := enc.Decode(sig[:], []byte(sigText)); err != nil {
		return nil, false
	}
	kr := r.table.ring.Load()
	for i := range kr.signers {
		var sum [sha256.Size]byte
		r.mac(&kr.signers[i], id[:], &sum)
		if hmac.Equal(sig[:], sum[:sigBytes]) {
			return id[:], true
		}
	}
	return nil, false
}

// exchange is one request's sticky state.
type exchange struct {
	ctx       context.Context
	route     *Route
	cfg       *routeConfig
	info      *pipeline.Info
	token     []byte
	key       string
	rebindKey uint64
	session   Session
	found     bool
	done      bool
}

// atHeaders settles the session when the response's headers are about to
// be written: h is the response's header, status its code.
func (x *exchange) atHeaders(h http.Header, status int) {
	if x.done {
		return
	}
	x.done = true
	r, cfg, info := x.route, x.cfg, x.info
	if info.EndpointID == "" || status >= 500 {
		return // nothing answered, or nothing worth sticking to
	}
	now := r.table.now()
	switch {
	case x.found && info.EndpointID == x.session.Endpoint:
		info.Sticky = OutcomeHit
		r.stats.hits.Add(1)
		if now.Sub(x.session.Touched) > cfg.IdleTimeout/4 {
			x.session.Touched = now
			r.bind(x.key, x.session, cfg)
		}
	case x.found:
		// The endpoint could not take it: the balancer chose the
		// replacement every edge would (rendezvous on the session).
		info.Sticky = OutcomeRebind
		r.stats.rebinds.Add(1)
		x.session.Endpoint, x.session.Service, x.session.Touched = info.EndpointID, info.Upstream, now
		if r.bind(x.key, x.session, cfg) == nil {
			r.handOver(x.ctx, x.key)
		}
	case cfg.Mode == config.StickyCookieMode:
		id := make([]byte, idBytes)
		rand.Read(id)
		kr := r.table.ring.Load()
		key, _ := r.key(kr, 0, id)
		r.begin(x.ctx, key, now, cfg, info)
		c := http.Cookie{
			Name: cfg.cookieName, Value: r.cookieValue(kr, id), Path: cfg.cookiePath, Domain: cfg.Cookie.Domain,
			MaxAge: int(cfg.AbsoluteTimeout / time.Second), Secure: cfg.Cookie.Secure, HttpOnly: cfg.Cookie.HTTPOnly,
			SameSite: sameSite(cfg.Cookie.SameSite),
		}
		h.Add("Set-Cookie", c.String())
	case cfg.Mode != config.StickyLearnMode && x.token != nil: // header, source_ip
		r.begin(x.ctx, x.key, now, cfg, info)
	}
	if cfg.Mode != config.StickyLearnMode {
		return
	}
	// Learn mode: a session is known once the application names it, in
	// the response that sets its token (a new session, or a new token for
	// the same one), or by a token the request carried that no edge knew.
	token := learned(h, cfg)
	if token == nil && !x.found {
		token = x.token
	}
	if token != nil && (!x.found || string(token) != string(x.token)) {
		key, _ := r.key(r.table.ring.Load(), 0, token)
		r.begin(x.ctx, key, now, cfg, info)
	}
}

// begin records a new session under key, on the endpoint that answered,
// and hands it to its owner edge.
func (r *Route) begin(ctx context.Context, key string, now time.Time, cfg *routeConfig, info *pipeline.Info) {
	info.Sticky = OutcomeNew
	r.stats.created.Add(1)
	if r.bind(key, Session{Service: info.Upstream, Endpoint: info.EndpointID, Created: now, Touched: now}, cfg) == nil {
		r.handOver(ctx, key)
	}
}

// learned returns the session token a response sets in learn mode: the
// value of the application's cookie in a Set-Cookie that does not delete
// it, or of its header.
func learned(h http.Header, cfg *routeConfig) []byte {
	if cfg.Learn.Header != "" {
		if v := h.Get(cfg.Learn.Header); v != "" {
			return []byte(v)
		}
		return nil
	}
	for _, line := range h["Set-Cookie"] {
		c, err := http.ParseSetCookie(line)
		if err == nil && c.Name == cfg.Learn.Cookie && c.Value != "" && c.MaxAge >= 0 {
			return []byte(c.Value)
		}
	}
	return nil
}

func sameSite(s string) http.SameSite {
	switch s {
	case "lax":
		return http.SameSiteLaxMode
	case "none":
		return http.SameSiteNoneMode
	}
	return http.SameSiteStrictMode
}

// responseWriter settles the session before the response's headers go
// out.
type responseWriter struct {
	http.ResponseWriter
	x exchange
}

func (w *responseWriter) WriteHeader(code int) {
	if code >= 200 {
		w.x.atHeaders(w.ResponseWriter.Header(), code)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(p []byte) (int, error) {
	w.x.atHeaders(w.ResponseWriter.Header(), http.StatusOK)
	return w.ResponseWriter.Write(p)
}

func (w *responseWriter) Flush() {
	w.x.atHeaders(w.ResponseWriter.Header(), http.StatusOK)
	http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
