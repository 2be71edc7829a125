package authn

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.yaml.in/yaml/v3"
)

// APIKey is one key of a key set, as its file describes it: never the
// secret itself.
type APIKey struct {
	// ID names the key's holder (a consumer, a partner); it is the
	// principal and what revocation names.
	ID string `yaml:"id"`
	// Expires, when set, ends the key.
	Expires time.Time `yaml:"expires"`
	// Metadata is forwarded to nothing by default; routes may forward
	// the ID.
	Metadata map[string]string `yaml:"metadata"`
	// Principal names the key's holder in logs and spans,
	// "apikey:<set>:<id>"; set by the KeySet.
	Principal string `yaml:"-"`
}

// keyFileEntry is one entry of a key file: the key in the clear (key)
// or its SHA-256 in hex (sha256), so that the file need not hold
// secrets.
type keyFileEntry struct {
	APIKey `yaml:",inline"`
	Key    string `yaml:"key"`
	SHA256 string `yaml:"sha256"`
}

// KeySet is a set of API keys loaded from a file. Keys are held only as
// HMAC-SHA256 digests under a random per-process key, of their SHA-256:
// a presented key is hashed the same way and looked up, so neither the
// secrets nor a comparison that leaks their prefix is ever in memory.
// Revoked IDs (SetRevoked) are refused. Safe for concurrent use.
type KeySet struct {
	name, file string
	secret     [32]byte
	hmacs      sync.Pool // of HMAC-SHA256 under secret: creating one allocates
	keys       atomic.Pointer[map[[32]byte]*APIKey]
	ids        atomic.Pointer[[]*APIKey]
	revoked    atomic.Pointer[map[string]struct{}]
}

// LoadKeySet reads the key file of the set named name: a YAML list of
// { id, key | sha256, expires, metadata }.
func LoadKeySet(name, file string) (*KeySet, error) {
	ks := &KeySet{name: name, file: file}
	if _, err := rand.Read(ks.secret[:]); err != nil {
		return nil, err
	}
	ks.hmacs.New = func() any { return hmac.New(sha256.New, ks.secret[:]) }
	if err := ks.Reload(); err != nil {
		return nil, err
	}
	return ks, nil
}

// Name returns the set's name.
func (ks *KeySet) Name() string { return ks.name }

// Reload reads the key file again; on error the keys in use stay.
func (ks *KeySet) Reload() error {
	data, err := os.ReadFile(ks.file)
	if err != nil {
		return fmt.Errorf("authn: api keys %s: %w", ks.name, err)
	}
	var entries []keyFileEntry
	if err := yaml.Unmarshal(data, &entries); err != nil {
		return fmt.Errorf("authn: api keys %s: %s: %w", ks.name, ks.file, err)
	}
	keys := map[[32]byte]*APIKey{}
	seen := map[string]bool{}
	var ids []*APIKey
	for i, e := range entries {
		var digest [32]byte
		switch {
		case e.ID == "":
			return fmt.Errorf("authn: api keys %s: %s: entry %d has no id", ks.name, ks.file, i)
		case seen[e.ID]:
			return fmt.Errorf("authn: api keys %s: %s: id %q appears twice", ks.name, ks.file, e.ID)
		case (e.Key == "") == (e.SHA256 == ""):
			return fmt.Errorf("authn: api keys %s: %s: key %q: exactly one of key and sha256", ks.name, ks.file, e.ID)
		case e.Key != "":
			if len(e.Key) < 16 {
				return fmt.Errorf("authn: api keys %s: %s: key %q is %d characters; at least 16", ks.name, ks.file, e.ID, len(e.Key))
			}
			digest = sha256.Sum256([]byte(e.Key))
		default:
			b, err := hex.DecodeString(e.SHA256)
			if err != nil || len(b) != sha256.Size {
				return fmt.Errorf("authn: api keys %s: %s: key %q: sha256 must be 64 hex digits", ks.name, ks.file, e.ID)
			}
			copy(digest[:], b)
		}
		seen[e.ID] = true
		k := e.APIKey
		k.Principal = "apikey:" + ks.name + ":" + k.ID
		keys[ks.keyed(digest)] = &k
		ids = append(ids, &k)
	}
	slices.SortFunc(ids, func(a, b *APIKey) int { return strings.Compare(a.ID, b.ID) })
	ks.keys.Store(&keys)
	ks.ids.Store(&ids)
	return nil
}

// keyed returns the set's HMAC of a key's SHA-256.
func (ks *KeySet) keyed(digest [32]byte) [32]byte {
	m := ks.hmacs.Get().(hash.Hash)
	m.Reset()
	m.Write(digest[:])
	var out [32]byte
	m.Sum(out[:0])
	ks.hmacs.Put(m)
	return out
}

// Verify returns the key presented is, if it is in the set, not expired
// at now and not revoked; else an error wrapping ErrInvalid.
func (ks *KeySet) Verify(presented string, now time.Time) (*APIKey, error) {
	k := (*ks.keys.Load())[ks.keyed(sha256.Sum256([]byte(presented)))]
	switch {
	case k == nil:
		return nil, fmt.Errorf("%w: unknown API key", ErrInvalid)
	case !k.Expires.IsZero() && !now.Before(k.Expires):
		return nil, fmt.Errorf("%w: API key %s expired", ErrInvalid, k.ID)
	case ks.Revoked(k.ID):
		return nil, fmt.Errorf("%w: API key %s is revoked", ErrInvalid, k.ID)
	}
	return k, nil
}

// SetRevoked replaces the revoked IDs.
func (ks *KeySet) SetRevoked(ids []string) {
	m := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	ks.revoked.Store(&m)
}

// Revoked reports whether the key with ID id is revoked.
func (ks *KeySet) Revoked(id string) bool {
	m := ks.revoked.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[id]
	return ok
}

// Keys returns the set's keys, sorted by ID: what the file says of them,
// never the secrets.
func (ks *KeySet) Keys() []APIKey {
	var out []APIKey
	for _, k := range *ks.ids.Load() {
		out = append(out, *k)
	}
	return out
}
