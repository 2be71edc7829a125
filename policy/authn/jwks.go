package authn

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Key set freshness.
const (
	// defaultMaxAge is how long a fetched set is fresh when the response
	// has no Cache-Control max-age.
	defaultMaxAge = 5 * time.Minute
	// minMaxAge and maxMaxAge bound a response's max-age, so that a
	// provider cannot make edges poll it constantly or never.
	minMaxAge, maxMaxAge = 30 * time.Second, 24 * time.Hour
	// retryMin and retryMax bound the wait after a failed fetch.
	retryMin, retryMax = time.Second, time.Minute
	// maxJWKSBytes bounds a key set's size.
	maxJWKSBytes = 1 << 20
	// negativeTTL is how long a key ID found in no set is remembered;
	// maxNegative bounds how many are.
	negativeTTL = 5 * time.Minute
	maxNegative = 4096
)

// keySet is a loaded set: usable keys by ID (a key without an ID under
// ""), and when it was fetched and stops being fresh.
type keySet struct {
	byID    map[string][]jose.JSONWebKey
	n       int
	fetched time.Time
	fresh   time.Time
	etag    string
}

// keySource holds a provider's current key set and fetches it.
type keySource struct {
	cfg ProviderConfig
	cur atomic.Pointer[keySet]

	fetches, fetchErrors, unknown atomic.Uint64

	mu          sync.Mutex
	flight      chan struct{} // closed when the fetch in flight ends; nil: none
	lastUnknown time.Time     // when an unknown key ID last caused a fetch
	negative    map[string]time.Time
}

func newKeySource(c ProviderConfig) *keySource {
	return &keySource{cfg: c, negative: map[string]time.Time{}}
}

// parseSet keeps the public, asymmetric signing keys of a JWKS: a
// symmetric ("oct") key in a public set would let anyone sign, and a
// private key has no business there.
func parseSet(data []byte) (map[string][]jose.JSONWebKey, int, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, 0, fmt.Errorf("parse JWKS: %w", err)
	}
	byID := map[string][]jose.JSONWebKey{}
	n := 0
	for _, k := range set.Keys {
		if !k.Valid() || !k.IsPublic() || (k.Use != "" && k.Use != "sig") {
			continue
		}
		byID[k.KeyID] = append(byID[k.KeyID], k)
		n++
	}
	if n == 0 {
		return nil, 0, fmt.Errorf("JWKS has no public signing key (%d keys)", len(set.Keys))
	}
	return byID, n, nil
}

// load reads the key set file.
func (s *keySource) load() error {
	data, err := os.ReadFile(s.cfg.JWKSFile)
	if err != nil {
		return fmt.Errorf("authn: provider %s: %w", s.cfg.Name, err)
	}
	byID, n, err := parseSet(data)
	if err != nil {
		return fmt.Errorf("authn: provider %s: %s: %w", s.cfg.Name, s.cfg.JWKSFile, err)
	}
	now := s.cfg.Now()
	s.cur.Store(&keySet{byID: byID, n: n, fetched: now, fresh: now.Add(maxMaxAge)})
	return nil
}

// lookup returns the keys a token with key ID kid may be signed with: a
// token without a key ID may be signed with any key of the set.
func (s *keySource) lookup(ctx context.Context, kid string, now time.Time) ([]jose.JSONWebKey, error) {
	set := s.cur.Load()
	if set != nil {
		if keys := set.keys(kid); len(keys) > 0 {
			return keys, nil
		}
	}
	if s.cfg.JWKSURL == "" {
		if set == nil {
			return nil, fmt.Errorf("%w (provider %s)", ErrUnavailable, s.cfg.Name)
		}
		s.unknown.Add(1)
		return nil, fmt.Errorf("%w: unknown key %q", ErrInvalid, kid)
	}
	if set == nil {
		// Nothing loaded: wait for the fetch Start began (or begin one);
		// it counts as the refetch for this key ID.
		s.fetchShared(ctx)
		if set = s.cur.Load(); set == nil {
			return nil, fmt.Errorf("%w (provider %s)", ErrUnavailable, s.cfg.Name)
		}
		if keys := set.keys(kid); len(keys) > 0 {
			return keys, nil
		}
		s.unknown.Add(1)
	} else {
		s.unknown.Add(1)
		if !s.mayRefetchFor(kid, now) {
			return nil, fmt.Errorf("%w: unknown key %q", ErrInvalid, kid)
		}
		s.fetchShared(ctx)
		if keys := s.cur.Load().keys(kid); len(keys) > 0 {
			return keys, nil
		}
	}
	s.mu.Lock()
	if len(s.negative) >= maxNegative {
		for k, t := range s.negative {
			if now.After(t) || len(s.negative) >= maxNegative {
				delete(s.negative, k)
			}
		}
	}
	s.negative[kid] = now.Add(negativeTTL)
	s.mu.Unlock()
	return nil, fmt.Errorf("%w: unknown key %q", ErrInvalid, kid)
}

// keys returns the keys for kid.
func (set *keySet) keys(kid string) []jose.JSONWebKey {
	if kid != "" {
		return set.byID[kid]
	}
	var all []jose.JSONWebKey
	for _, ks := range set.byID {
		all = append(all, ks...)
	}
	return all
}

// mayRefetchFor reports whether an unknown kid may cause a fetch now:
// not one remembered as unknown, and no other unknown key ID caused one
// in the last UnknownKeyRefetch (concurrent callers join the fetch in
// flight).
func (s *keySource) mayRefetchFor(kid string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if until, ok := s.negative[kid]; ok && now.Before(until) {
		return false
	}
	if s.flight != nil {
		return true // join it
	}
	if !s.lastUnknown.IsZero() && now.Sub(s.lastUnknown) < s.cfg.UnknownKeyRefetch {
		return false
	}
	s.lastUnknown = now
	return true
}

// fetchShared fetches the set, or waits for the fetch in flight: one
// fetch, however many callers.
func (s *keySource) fetchShared(ctx context.Context) error {
	s.mu.Lock()
	if ch := s.flight; ch != nil {
		s.mu.Unlock()
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ch := make(chan struct{})
	s.flight = ch
	s.mu.Unlock()
	err := s.fetch(context.WithoutCancel(ctx)) // a caller giving up does not cancel it for the others
	s.mu.Lock()
	s.flight = nil
	s.mu.Unlock()
	close(ch)
	return err
}

// fetch gets the set from the URL, conditionally when one is loaded.
func (s *keySource) fetch(ctx context.Context) error {
	s.fetches.Add(1)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", s.cfg.JWKSURL, nil)
	if err != nil {
		s.fetchErrors.Add(1)
		return err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	cur := s.cur.Load()
	if cur != nil && cur.etag != "" {
		req.Header.Set("If-None-Match", cur.etag)
	}
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		s.fetchErrors.Add(1)
		return fmt.Errorf("authn: provider %s: fetch %s: %w", s.cfg.Name, s.cfg.JWKSURL, err)
	}
	defer resp.Body.Close()
	now := s.cfg.Now()
	maxAge := cacheMaxAge(resp.Header.Get("Cache-Control"))
	switch {
	case resp.StatusCode == http.StatusNotModified && cur != nil:
		next := *cur
		next.fetched, next.fresh = now, now.Add(maxAge)
		s.cur.Store(&next)
		return nil
	case resp.StatusCode != http.StatusOK:
		s.fetchErrors.Add(1)
		return fmt.Errorf("authn: provider %s: fetch %s: status %d", s.cfg.Name, s.cfg.JWKSURL, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err == nil && len(data) > maxJWKSBytes {
		err = fmt.Errorf("larger than %d bytes", maxJWKSBytes)
	}
	var byID map[string][]jose.JSONWebKey
	var n int
	if err == nil {
		byID, n, err = parseSet(data)
	}
	if err != nil {
		s.fetchErrors.Add(1)
		return fmt.Errorf("authn: provider %s: fetch %s: %w", s.cfg.Name, s.cfg.JWKSURL, err)
	}
	s.cur.Store(&keySet{byID: byID, n: n, fetched: now, fresh: now.Add(maxAge), etag: resp.Header.Get("ETag")})
	s.mu.Lock()
	clear(s.negative) // a new set: key IDs unknown before may be in it
	s.mu.Unlock()
	return nil
}

// cacheMaxAge returns a Cache-Control header's max-age, bounded, or the
// default.
func cacheMaxAge(cc string) time.Duration {
	for _, d := range strings.Split(cc, ",") {
		name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
		if !strings.EqualFold(name, "max-age") {
			continue
		}
		secs, err := strconv.Atoi(strings.Trim(val, `"`))
		if err != nil || secs < 0 {
			break
		}
		return min(max(time.Duration(secs)*time.Second, minMaxAge), maxMaxAge)
	}
	return defaultMaxAge
}

// refreshLoop fetches the set at once and then whenever it stops being
// fresh, retrying failures with capped backoff; a failure keeps the last
// good set in use.
func (s *keySource) refreshLoop(ctx context.Context) {
	backoff := retryMin
	for {
		var wait time.Duration
		if err := s.fetchShared(ctx); err != nil {
			wait, backoff = backoff, min(2*backoff, retryMax)
		} else {
			backoff = retryMin
			wait = max(s.cur.Load().fresh.Sub(s.cfg.Now()), retryMin)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (s *keySource) stats(now time.Time) Stats {
	st := Stats{Fetches: s.fetches.Load(), FetchErrors: s.fetchErrors.Load(), UnknownKeys: s.unknown.Load()}
	if set := s.cur.Load(); set != nil {
		st.Loaded, st.Age, st.Keys = true, now.Sub(set.fetched), set.n
	}
	return st
}
