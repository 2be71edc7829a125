package sidecar

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/sidemesh/sidemesh/policy/authn"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

// revokedPrefix is where revoked API keys are recorded in the gossip
// pool: "apikey-revoked/<set>/<id>".
const revokedPrefix = "apikey-revoked/"

// keySet is a loaded API key set and the config it was loaded from.
type keySet struct {
	cfg config.APIKeySet
	ks  *authn.KeySet
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

// useKeySets makes next the key sets in use, with the revocations the
// pool holds.
func (s *Sidecar) useKeySets(next map[string]*keySet) {
	s.keySets.Store(&next)
	s.revoked.refresh()
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

// RevokeAPIKey revokes the key with ID id of the set named set (on), or
// ends its revocation. With a gossip pool every edge refuses it within
// moments (about a second on a LAN), also after this one exits; without
// one, this process does, until it exits.
func (s *Sidecar) RevokeAPIKey(set, id string, on bool) error {
	if loaded(&s.keySets)[set] == nil {
		return fmt.Errorf("revoke: no API key set is named %q", set)
	}
	if id == "" || strings.Contains(id, "/") {
		return fmt.Errorf("revoke: bad key ID %q", id)
	}
	if err := s.revoked.set(set+"/"+id, on); err != nil {
		return fmt.Errorf("revoke %s/%s: %w", set, id, err)
	}
	return nil
}

// APIKeySetState is an API key set as the admin API shows it: IDs,
// expiries and revocations, never a key.
type APIKeySetState struct {
	Name string
	Keys []authn.APIKey
	// Revoked are the revoked IDs (which may include IDs this edge's
	// file does not list).
	Revoked map[string]bool
}

// APIKeySets returns the edge's API key sets. It takes no lock.
func (s *Sidecar) APIKeySets() []APIKeySetState {
	var out []APIKeySetState
	for name, k := range loaded(&s.keySets) {
		st := APIKeySetState{Name: name, Keys: k.ks.Keys(), Revoked: map[string]bool{}}
		for _, key := range st.Keys {
			if k.ks.Revoked(key.ID) {
				st.Revoked[key.ID] = true
			}
		}
		out = append(out, st)
	}
	return out
}
