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

// Where a key of a KeySet comes from (APIKey.Source).
const (
	// KeyFromFile is a key of the set's file.
	KeyFromFile = "file"
	// KeyFromAdmin is a key added through the admin API (SetAdminKeys).
	KeyFromAdmin = "admin"
)

// APIKey is one key of a key set, as its file or the admin API describes
// it: never the secret itself.
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
	// Source is KeyFromFile or KeyFromAdmin; set by the KeySet.
	Source string `yaml:"-"`
}

// AdminKey is a key added to a set through the admin API rather than its
// file: the SHA-256 of its secret, never the secret.
type AdminKey struct {
	// ID names the key's holder, as APIKey.ID.
	ID string
	// SHA256 is the SHA-256 of the key.
	SHA256 [32]byte
	// Expires, when set, ends the key.
	Expires time.Time
	// Metadata is as APIKey.Metadata.
	Metadata map[string]string
}

// heldKey is a key as a KeySet holds it: under its HMAC.
type heldKey struct {
	keyed [32]byte
	key   *APIKey
}

// keyFileEntry is one entry of a key file: the key in the clear (key)
// or its SHA-256 in hex (sha256), so that the file need not hold
// secrets.
type keyFileEntry struct {
	APIKey `yaml:",inline"`
	Key    string `yaml:"key"`
	SHA256 string `yaml:"sha256"`
}

// KeySet is a set of API keys: those of its file, and those added
// through the admin API (SetAdminKeys). Keys are held only as HMAC-SHA256
// digests under a random per-process key, of their SHA-256: a presented
// key is hashed the same way and looked up, so neither the secrets nor a
// comparison that leaks their prefix is ever in memory. Revoked IDs
// (SetRevoked) are refused, whichever the key's source. Safe for
// concurrent use: Verify and the accessors take no lock.
type KeySet struct {
	name, file string
	secret     [32]byte
	hmacs      sync.Pool // of HMAC-SHA256 under secret: creating one allocates

	mu        sync.Mutex // serialises Reload and SetAdminKeys; guards below
	fileKeys  []heldKey
	adminKeys []heldKey

	// keys, ids and conflicts are what publishLocked built from both
	// sources; replaced whole.
	keys      atomic.Pointer[map[[32]byte]*APIKey]
	ids       atomic.Pointer[[]*APIKey]
	conflicts atomic.Pointer[[]string]
	revoked   atomic.Pointer[map[string]struct{}]
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

// Reload reads the key file again; on error the keys in use stay. The
// admin keys stay as they are.
func (ks *KeySet) Reload() error {
	data, err := os.ReadFile(ks.file)
	if err != nil {
		return fmt.Errorf("authn: api keys %s: %w", ks.name, err)
	}
	var entries []keyFileEntry
	if err := yaml.Unmarshal(data, &entries); err != nil {
		return fmt.Errorf("authn: api keys %s: %s: %w", ks.name, ks.file, err)
	}
	seen := map[string]bool{}
	var held []heldKey
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
		k.Source = KeyFromFile
		held = append(held, heldKey{keyed: ks.keyed(digest), key: &k})
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.fileKeys = held
	ks.publishLocked()
	return nil
}

// SetAdminKeys replaces the keys added through the admin API, as one
// swap: a request sees the old keys or the new, never a mix. A file key
// wins over an admin key with the same ID or the same secret; such admin
// keys are left out and their IDs returned, sorted (also by Conflicts,
// until the next change). Among admin keys with the same secret the one
// with the lowest ID wins. Metadata maps are used as they are, not
// copied.
func (ks *KeySet) SetAdminKeys(keys []AdminKey) (conflicts []string) {
	held := make([]heldKey, 0, len(keys))
	for _, a := range keys {
		k := &APIKey{ID: a.ID, Expires: a.Expires, Metadata: a.Metadata, Principal: "apikey:" + ks.name + ":" + a.ID, Source: KeyFromAdmin}
		held = append(held, heldKey{keyed: ks.keyed(a.SHA256), key: k})
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.adminKeys = held
	return ks.publishLocked()
}

// publishLocked builds and publishes the keys of both sources: every
// file key, then each admin key whose ID and secret no key before it
// has. It returns the IDs left out.
func (ks *KeySet) publishLocked() []string {
	keys := make(map[[32]byte]*APIKey, len(ks.fileKeys)+len(ks.adminKeys))
	byID := make(map[string]bool, len(keys))
	ids := make([]*APIKey, 0, len(keys))
	for _, h := range ks.fileKeys {
		keys[h.keyed] = h.key
		byID[h.key.ID] = true
		ids = append(ids, h.key)
	}
	admin := slices.Clone(ks.adminKeys)
	slices.SortFunc(admin, func(a, b heldKey) int { return strings.Compare(a.key.ID, b.key.ID) })
	conflicts := []string{}
	for _, h := range admin {
		if byID[h.key.ID] || keys[h.keyed] != nil {
			conflicts = append(conflicts, h.key.ID)
			continue
		}
		keys[h.keyed] = h.key
		byID[h.key.ID] = true
		ids = append(ids, h.key)
	}
	slices.SortFunc(ids, func(a, b *APIKey) int { return strings.Compare(a.ID, b.ID) })
	ks.keys.Store(&keys)
	ks.ids.Store(&ids)
	ks.conflicts.Store(&conflicts)
	return conflicts
}

// Conflicts returns the IDs of the admin keys the last SetAdminKeys or
// Reload left out because a key of the file (or, for an admin key with
// the same secret as another, of a lower ID) has the same ID or secret.
func (ks *KeySet) Conflicts() []string { return slices.Clone(*ks.conflicts.Load()) }

// Key returns the key with ID id, whichever its source.
func (ks *KeySet) Key(id string) (APIKey, bool) {
	ids := *ks.ids.Load()
	i, ok := slices.BinarySearchFunc(ids, id, func(k *APIKey, id string) int { return strings.Compare(k.ID, id) })
	if !ok {
		return APIKey{}, false
	}
	return *ids[i], true
}

// IDOf returns the ID of the key whose SHA-256 is digest, if the set
// holds it (expired or revoked or not).
func (ks *KeySet) IDOf(digest [32]byte) (string, bool) {
	if k := (*ks.keys.Load())[ks.keyed(digest)]; k != nil {
		return k.ID, true
	}
	return "", false
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

// Keys returns the set's keys of both sources, sorted by ID: what the
// file or the admin API says of them, never the secrets.
func (ks *KeySet) Keys() []APIKey {
	var out []APIKey
	for _, k := range *ks.ids.Load() {
		out = append(out, *k)
	}
	return out
}
