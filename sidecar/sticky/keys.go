// Package sticky keeps the requests of a session on one endpoint, on
// every edge of a gossip pool: a signed cookie (or the application's own
// session token, a header, the client's address) names a session, and a
// session table replicated over the pool maps it to an endpoint's stable
// discovery ID. Losing an edge loses no session: every other edge has
// the table.
package sticky

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/sidemesh/sidemesh/discovery/gossip"
)

// Keys are the secrets of sticky sessions, derived from the key files
// every edge of a pool shares: one signs cookies, the other hashes
// session tokens before they enter the table (so no raw token is ever
// gossiped, logged or shown). Current comes first; a previous key,
// during a rotation, is still accepted. Immutable, safe for concurrent
// use.
type Keys struct {
	cookie [][]byte // HMAC keys for cookie signatures
	table  [][]byte // HMAC keys for table keys
}

// KeySize is the size of a sticky key file's key.
const KeySize = 32

// LoadKeys reads the current key file and, when previous is not "", the
// previous one; each holds a base64 key of KeySize bytes, as `sidemesh
// keygen` prints it.
func LoadKeys(current, previous string) (*Keys, error) {
	var secrets [][]byte
	for _, f := range []string{current, previous} {
		if f == "" {
			continue
		}
		k, err := gossip.LoadKey(f)
		if err != nil {
			return nil, fmt.Errorf("sticky: %w", err)
		}
		if len(k) != KeySize {
			return nil, fmt.Errorf("sticky: key %s is %d bytes, want %d", f, len(k), KeySize)
		}
		secrets = append(secrets, k)
	}
	return NewKeys(secrets...)
}

// NewKeys derives Keys from secrets, current first.
func NewKeys(secrets ...[]byte) (*Keys, error) {
	if len(secrets) == 0 {
		return nil, errors.New("sticky: no key")
	}
	k := &Keys{}
	for _, s := range secrets {
		k.cookie = append(k.cookie, derive(s, "sidemesh sticky cookie v1"))
		k.table = append(k.table, derive(s, "sidemesh sticky table v1"))
	}
	return k, nil
}

// derive returns HMAC-SHA256(secret, label): independent keys for
// independent uses of one secret.
func derive(secret []byte, label string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}
