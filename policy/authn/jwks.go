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
}

// keySource holds a provider's current key set and fetches it.
type keySource struct {
	cfg ProviderConfig
	cur atomic.Pointer[keySet]

	fetches, fetchErrors, unknown atomic.Uint64

	mu          sync.Mutex
	flight      *flight   // the fetch in progress; nil: none
	lastUnknown time.Time // when an unknown key ID last caused a fetch
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
		if s.cfg.Latest != nil {
			if body, fetched, maxAge, ok := s.cfg.Latest(); ok && fetched.After(set.fetched) && s.offer(body, fetched, maxAge) == nil {
				if keys := s.cur.Load().keys(kid); len(keys) > 0 {
					return keys, nil
				}
			}
		}
		if !s.mayRefetchFor(kid, now) {
			return nil, fmt.Errorf("%w: unknown key %q", ErrInvalid, kid)
		}
		// A fetch begun before the key ID was seen (one this caller
		// joined) may not have it: fetch again, but only as the rate
		// limit allows, so that a flood of unknown IDs joining fetch
		// after fetch cannot chain them; a key ID no fetch begun since it
		// was seen looked for is refused without being remembered.
		started, _ := s.fetchJoined(ctx)
		if started.Before(now) {
			if !s.mayRefetchFor(kid, now) {
				if keys := s.cur.Load().keys(kid); len(keys) > 0 {
					return keys, nil
				}
				return nil, fmt.Errorf("%w: unknown key %q", ErrInvalid, kid)
			}
			s.fetchJoined(ctx)
		}
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
// fetch, however many callers, each told how it went.
func (s *keySource) fetchShared(ctx context.Context) error {
	_, err := s.fetchJoined(ctx)
	return err
}

// fetchJoined is fetchShared that also says when the fetch it waited
// for began.
func (s *keySource) fetchJoined(ctx context.Context) (time.Time, error) {
	s.mu.Lock()
	if f := s.flight; f != nil {
		s.mu.Unlock()
		select {
		case <-f.done:
			return f.started, f.err
		case <-ctx.Done():
			return f.started, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{}), started: s.cfg.Now()}
	s.flight = f
	s.mu.Unlock()
	f.err = s.fetch(context.WithoutCancel(ctx)) // a caller giving up does not cancel it for the others
	s.mu.Lock()
	s.flight = nil
	s.mu.Unlock()
	close(f.done)
	return f.started, f.err
}

// flight is a fetch in progress; err is set before done is closed.
type flight struct {
	done    chan struct{}
	started time.Time
	err     error
}

// fetch gets the set through the provider's Fetcher and makes it the
// set in use.
func (s *keySource) fetch(ctx context.Context) error {
	s.fetches.Add(1)
	body, maxAge, err := s.cfg.Fetch(ctx)
	if err == nil {
		err = s.offer(body, s.cfg.Now(), maxAge)
	}
	if err != nil {
		s.fetchErrors.Add(1)
		return fmt.Errorf("authn: provider %s: fetch: %w", s.cfg.Name, err)
	}
	return nil
}

// offer makes body, a JWKS fetched at fetched and fresh for maxAge, the
// set in use, unless the one in use was fetched later.
func (s *keySource) offer(body []byte, fetched time.Time, maxAge time.Duration) error {
	byID, n, err := parseSet(body)
	if err != nil {
		return err
	}
	next := &keySet{byID: byID, n: n, fetched: fetched, fresh: fetched.Add(maxAge)}
	for {
		cur := s.cur.Load()
		if cur != nil && cur.fetched.After(fetched) {
			return nil
		}
		if s.cur.CompareAndSwap(cur, next) {
			break
		}
	}
	s.mu.Lock()
	clear(s.negative) // a new set: key IDs unknown before may be in it
	s.mu.Unlock()
	return nil
}

// Fetcher gets a provider's JWKS: the body, and how long it is fresh.
type Fetcher func(ctx context.Context) (body []byte, maxAge time.Duration, err error)

// HTTPFetcher returns the Fetcher of a JWKS URL: a GET (with a 10 s
// timeout) that sends If-None-Match once it has a body, and on 304
// returns that body again; the body's freshness is its Cache-Control
// max-age (5 minutes without one; bounded to 30 s..24 h). At most 1 MiB.
func HTTPFetcher(url string, client *http.Client) Fetcher {
	var mu sync.Mutex
	var etag string
	var last []byte
	return func(ctx context.Context) ([]byte, time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
		if err != nil {
			return nil, 0, err
		}
		req.Header.Set("Accept", "application/jwk-set+json, application/json")
		mu.Lock()
		if etag != "" && last != nil {
			req.Header.Set("If-None-Match", etag)
		}
		mu.Unlock()
		resp, err := client.Do(req)
		if err != nil {
			return nil, 0, err
		}
		defer resp.Body.Close()
		maxAge := cacheMaxAge(resp.Header.Get("Cache-Control"))
		mu.Lock()
		defer mu.Unlock()
		switch {
		case resp.StatusCode == http.StatusNotModified && last != nil:
			return last, maxAge, nil
		case resp.StatusCode != http.StatusOK:
			return nil, 0, fmt.Errorf("%s: status %d", url, resp.StatusCode)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", url, err)
		}
		if len(body) > maxJWKSBytes {
			return nil, 0, fmt.Errorf("%s: larger than %d bytes", url, maxJWKSBytes)
		}
		etag, last = resp.Header.Get("ETag"), body
		return body, maxAge, nil
	}
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
		} else if set := s.cur.Load(); set != nil {
			backoff = retryMin
			wait = max(set.fresh.Sub(s.cfg.Now()), retryMin)
		} else {
			wait = retryMin
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
		st.Loaded, st.Age, st.Fetched, st.Keys = true, now.Sub(set.fetched), set.fetched, set.n
	}
	return st
}
