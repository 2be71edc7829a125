package sidecar

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/policy/authn"
	"github.com/sidemesh/sidemesh/sidecar/admin"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

// revokedPrefix is where revoked API keys are recorded in the gossip
// pool: "apikey-revoked/<set>/<id>".
const revokedPrefix = "apikey-revoked/"

// addedPrefix is where API keys added through the admin API are recorded
// in the gossip pool: "apikey/<set>/<id>", each an untied entry (it
// outlives the edge that wrote it) holding an addedKey.
const addedPrefix = "apikey/"

// addedKey is an API key added through the admin API as the gossip pool
// holds it: its SHA-256, never the key. The pool's traffic is encrypted
// and authenticated, and the SHA-256 of a key of at least 16 random
// bytes is not a usable credential: an edge verifies a presented key by
// hashing it.
type addedKey struct {
	SHA256   string            `json:"sha256"`
	Expires  time.Time         `json:"expires,omitzero"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// keySet is a loaded API key set and the config it was loaded from.
type keySet struct {
	cfg config.APIKeySet
	ks  *authn.KeySet
	// conflicts are the added keys' IDs this set's file overrode, as last
	// logged; touched only by applyAddedKeys, one call at a time.
	conflicts []string
}

// loadKeySets loads the API key sets of cfg, reusing (and re-reading)
// those whose config did not change. It is the fallible part of
// applying them: a key file that does not load refuses the config.
func (s *Sidecar) loadKeySets(cfg *config.Config) (map[string]*keySet, error) {
	next := map[string]*keySet{}
	if cfg.Edge == nil {
		return next, nil
	}
	for _, kc := range cfg.Edge.APIKeys {
		if old := loaded(&s.keySets)[kc.Name]; old != nil && reflect.DeepEqual(old.cfg, kc) {
			if err := old.ks.Reload(); err != nil {
				return nil, fmt.Errorf("edge.api_keys %s: %w", kc.Name, err)
			}
			next[kc.Name] = old
			continue
		}
		ks, err := authn.LoadKeySet(kc.Name, kc.File)
		if err != nil {
			return nil, fmt.Errorf("edge.api_keys %s: %w", kc.Name, err)
		}
		next[kc.Name] = &keySet{cfg: kc, ks: ks}
	}
	return next, nil
}

// useKeySets makes next the key sets in use, with the revocations and
// the added keys the pool holds. Called under s.mu.
func (s *Sidecar) useKeySets(next map[string]*keySet) {
	s.keySets.Store(&next)
	s.revoked.refresh()
	s.added.refresh()
}

// applyRevoked hands each key set its revoked IDs; names are
// "<set>/<id>".
func (s *Sidecar) applyRevoked(names []string) {
	bySet := map[string][]string{}
	for _, n := range names {
		set, id, ok := strings.Cut(n, "/")
		if ok {
			bySet[set] = append(bySet[set], id)
		}
	}
	for name, k := range loaded(&s.keySets) {
		k.ks.SetRevoked(bySet[name])
	}
}

// applyAddedKeys hands each key set its keys added through the admin API
// (of any edge), by "<set>/<id>", and logs the IDs a set's file
// overrides when they change. The sharedSet calls it one call at a
// time.
func (s *Sidecar) applyAddedKeys(entries map[string][]byte) {
	bySet := map[string][]authn.AdminKey{}
	for name, value := range entries {
		set, id, _ := strings.Cut(name, "/")
		k, err := decodeAddedKey(id, value)
		if err != nil {
			s.log.Warn("api keys: ignoring a key added through the admin API", "set", set, "id", id, "error", err)
			continue
		}
		bySet[set] = append(bySet[set], k)
	}
	for name, k := range loaded(&s.keySets) {
		conflicts := k.ks.SetAdminKeys(bySet[name])
		if !slices.Equal(conflicts, k.conflicts) && len(conflicts) > 0 {
			s.log.Warn("api keys: keys added through the admin API have the ID or the key of a key of this edge's file, which wins; the edges' files differ",
				"set", name, "file", k.cfg.File, "ids", conflicts)
		}
		k.conflicts = conflicts
	}
}

// decodeAddedKey decodes the gossip entry of the added key with ID id.
func decodeAddedKey(id string, value []byte) (authn.AdminKey, error) {
	if err := checkKeyID(id); err != nil {
		return authn.AdminKey{}, err
	}
	var e addedKey
	if err := json.Unmarshal(value, &e); err != nil {
		return authn.AdminKey{}, fmt.Errorf("entry: %w", err)
	}
	k := authn.AdminKey{ID: id, Expires: e.Expires, Metadata: e.Metadata}
	b, err := hex.DecodeString(e.SHA256)
	if err != nil || len(b) != len(k.SHA256) {
		return authn.AdminKey{}, errors.New("entry: sha256 is not 64 hex digits")
	}
	copy(k.SHA256[:], b)
	return k, nil
}

// checkKeyID reports whether id can name a key in the admin API and the
// gossip pool: not empty, without '/', NUL, CR or LF.
func checkKeyID(id string) error {
	if id == "" || strings.ContainsAny(id, "/\x00\r\n") {
		return fmt.Errorf("bad key ID %q: it must be non-empty, without '/', NUL, CR or LF", id)
	}
	return nil
}

// RevokeAPIKey revokes the key with ID id of the set named set (on), or
// ends its revocation, whether the key comes from the set's file or the
// admin API. With a gossip pool every edge refuses it within moments
// (about a second on a LAN), also after this one exits; without one,
// this process does, until it exits. An unknown set is an error wrapping
// admin.ErrNotFound.
func (s *Sidecar) RevokeAPIKey(set, id string, on bool) error {
	if loaded(&s.keySets)[set] == nil {
		return fmt.Errorf("revoke: %w: no API key set is named %q", admin.ErrNotFound, set)
	}
	if err := checkKeyID(id); err != nil {
		return fmt.Errorf("revoke %s: %w", set, err)
	}
	if err := s.revoked.set(set+"/"+id, on); err != nil {
		return fmt.Errorf("revoke %s/%s: %w", set, id, err)
	}
	return nil
}

// AddAPIKey adds k to the set named set, or replaces the key with k's ID
// that was added the same way. With a gossip pool every edge accepts it
// within moments (about a second on a LAN), also after this one exits,
// until RemoveAPIKey on any edge; without one, this process does, until
// it exits. The key's ID and key must not be those of a key of the set's
// file (an error wrapping admin.ErrConflict); an unknown set is an error
// wrapping admin.ErrNotFound. Revocation (RevokeAPIKey) applies as to a
// key of the file. Safe for concurrent use.
func (s *Sidecar) AddAPIKey(set string, k authn.AdminKey) error {
	ks := loaded(&s.keySets)[set]
	if ks == nil {
		return fmt.Errorf("add API key: %w: no API key set is named %q", admin.ErrNotFound, set)
	}
	if err := checkKeyID(k.ID); err != nil {
		return fmt.Errorf("add API key to %s: %w", set, err)
	}
	if old, ok := ks.ks.Key(k.ID); ok && old.Source == authn.KeyFromFile {
		return fmt.Errorf("add API key %s/%s: %w: the set's file %s has a key with that ID; edit the file, or choose another ID", set, k.ID, admin.ErrConflict, ks.cfg.File)
	}
	if other, ok := ks.ks.IDOf(k.SHA256); ok && other != k.ID {
		return fmt.Errorf("add API key %s/%s: %w: the same key is already the key %q of the set", set, k.ID, admin.ErrConflict, other)
	}
	if !k.Expires.IsZero() && !s.clock().Before(k.Expires) {
		return fmt.Errorf("add API key %s/%s: it expires at %s, which is past", set, k.ID, k.Expires.Format(time.RFC3339))
	}
	value, err := json.Marshal(addedKey{SHA256: hex.EncodeToString(k.SHA256[:]), Expires: k.Expires.UTC(), Metadata: k.Metadata})
	if err != nil {
		return fmt.Errorf("add API key %s/%s: %w", set, k.ID, err)
	}
	if len(value) > gossip.MaxValueLen { // with or without a pool, the same keys fit
		return fmt.Errorf("add API key %s/%s: the key and its metadata take %d bytes encoded; at most %d", set, k.ID, len(value), gossip.MaxValueLen)
	}
	var ttl time.Duration // an expired key's entry leaves the pool a minute after the key ends
	if !k.Expires.IsZero() {
		ttl = k.Expires.Sub(s.clock()) + time.Minute
	}
	if err := s.added.put(set+"/"+k.ID, value, ttl); err != nil {
		return fmt.Errorf("add API key %s/%s: %w", set, k.ID, err)
	}
	return nil
}

// RemoveAPIKey removes the key with ID id, added through the admin API,
// from the set named set, on every edge of the gossip pool. A key of the
// set's file is not removed (an error wrapping admin.ErrConflict: edit
// the file, or revoke the key); an unknown set or key is an error
// wrapping admin.ErrNotFound. A revocation of the ID stays. Safe for
// concurrent use.
func (s *Sidecar) RemoveAPIKey(set, id string) error {
	ks := loaded(&s.keySets)[set]
	if ks == nil {
		return fmt.Errorf("remove API key: %w: no API key set is named %q", admin.ErrNotFound, set)
	}
	if err := checkKeyID(id); err != nil {
		return fmt.Errorf("remove API key from %s: %w", set, err)
	}
	k, ok := ks.ks.Key(id)
	switch {
	case slices.Contains(ks.ks.Conflicts(), id):
		// Added, and overridden here by the file: removable still.
	case ok && k.Source == authn.KeyFromFile:
		return fmt.Errorf("remove API key %s/%s: %w: the key comes from the set's file %s; edit the file, or revoke the key (PUT /api_keys/%s/%s/revoked)", set, id, admin.ErrConflict, ks.cfg.File, set, id)
	case !ok:
		return fmt.Errorf("remove API key %s/%s: %w: the set has no key with that ID added through the admin API", set, id, admin.ErrNotFound)
	}
	if err := s.added.remove(set + "/" + id); err != nil {
		return fmt.Errorf("remove API key %s/%s: %w", set, id, err)
	}
	return nil
}

// APIKeySetState is an API key set as the admin API shows it: IDs,
// sources, expiries and revocations, never a key nor its hash.
type APIKeySetState struct {
	Name string
	Keys []authn.APIKey
	// Revoked are the revoked IDs (which may include IDs this edge's
	// file does not list).
	Revoked map[string]bool
	// Conflicts are the IDs of keys added through the admin API that the
	// set's file overrides on this edge (authn.KeySet.Conflicts).
	Conflicts []string
}

// APIKeySets returns the edge's API key sets. It takes no lock.
func (s *Sidecar) APIKeySets() []APIKeySetState {
	var out []APIKeySetState
	for name, k := range loaded(&s.keySets) {
		st := APIKeySetState{Name: name, Keys: k.ks.Keys(), Revoked: map[string]bool{}, Conflicts: k.ks.Conflicts()}
		for _, key := range st.Keys {
			if k.ks.Revoked(key.ID) {
				st.Revoked[key.ID] = true
			}
		}
		out = append(out, st)
	}
	return out
}
