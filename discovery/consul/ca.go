package consul

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/policy/identity"
)

// CAOptions configures a CASource. The zero value is ready to use: every
// zero field gets the default stated on it.
type CAOptions struct {
	// WaitTime bounds each blocking query. Zero means DefaultWaitTime
	// (5m); Consul caps it at 10m. Keep it well above 30s: after a CA
	// rotation the agent (Consul 1.20's leaf cache) re-issues a leaf at a
	// random point of a 30s window, but draws that point again at the
	// start of every query, so short waits only re-issue when a draw
	// falls within one wait, and can delay the new leaf by minutes.
	WaitTime time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff, with
	// jitter, between failed queries. Zero means DefaultMinBackoff
	// (250ms) and DefaultMaxBackoff (30s).
	MinBackoff, MaxBackoff time.Duration
	// Logger receives the source's logs; nil discards them.
	Logger *slog.Logger
}

// CASource is an identity.Source whose certificates come from Consul's
// Connect CA through the local agent: the leaf certificate of one service
// (/v1/agent/connect/ca/leaf/<service>) and the CA roots
// (/v1/agent/connect/ca/roots), both watched with blocking queries.
//
// The agent's leaf cache renews the leaf before it expires and re-issues it
// after a CA rotation (spread over up to 30s after the new root appears),
// so watching is all the source does: whenever the leaf or the roots
// change it builds a new Bundle and publishes it. Readers get it from
// Current, which never blocks; a tls.Config built by identity.ServerConfig
// or ClientConfig on the source reads it on every handshake, so rotation
// needs no restart.
//
// While the agent cannot be reached the source keeps serving the last
// Bundle and retries with capped backoff. A CASource is safe for
// concurrent use.
type CASource struct {
	client  *api.Client
	service string
	opts    CAOptions
	log     *slog.Logger
	static  *identity.StaticSource
	running atomic.Bool

	// mu guards the last answers of the two watches and serializes the
	// builds, so that bundles are published in the order of the answers.
	mu    sync.Mutex
	roots *api.CARootList // nil until the first answer
	leaf  *api.LeafCert   // nil until the first answer
	// pubLeaf and pubRoots describe the published bundle, for the logs.
	pubLeaf  string   // serial number of its leaf
	pubRoots []string // IDs of its roots
}

// NewCASource returns a CASource for the leaf certificate of service (a
// service name: the SPIFFE ID of the leaf ends in /svc/<service>), queried
// through client, which must not be nil and should point at the local
// agent. o is copied; zero fields get their defaults. Nothing happens
// until Run.
func NewCASource(client *api.Client, service string, o CAOptions) *CASource {
	log := watchDefaults(&o.WaitTime, &o.MinBackoff, &o.MaxBackoff, o.Logger)
	return &CASource{
		client:  client,
		service: service,
		opts:    o,
		log:     log.With("component", "consul-ca", "service", service),
		static:  identity.NewStaticSource(),
	}
}

// Current implements identity.Source: the newest Bundle, or nil before
// Ready is closed. It never blocks. The Bundle must not be modified.
func (s *CASource) Current() *identity.Bundle { return s.static.Current() }

// Ready implements identity.Source: the channel is closed once the first
// Bundle (a leaf and its roots) has been published.
func (s *CASource) Ready() <-chan struct{} { return s.static.Ready() }

// Run watches the roots and the leaf until ctx is done, publishing a new
// Bundle whenever either changes (and both are known). It returns nil once
// ctx is done and both watches have stopped, and an error at once if the
// service name is empty or Run was called before: Run must be called once.
func (s *CASource) Run(ctx context.Context) error {
	if s.service == "" {
		return errors.New("consul: ca: empty service name")
	}
	if !s.running.CompareAndSwap(false, true) {
		return fmt.Errorf("consul: ca %s: Run called twice", s.service)
	}
	loop := func(what string) blockingLoop {
		return blockingLoop{
			what:     what,
			waitTime: s.opts.WaitTime, minBackoff: s.opts.MinBackoff, maxBackoff: s.opts.MaxBackoff,
			log: s.log,
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		loop("ca roots").run(ctx, func(q *api.QueryOptions) (*api.QueryMeta, error) {
			roots, meta, err := s.client.Agent().ConnectCARoots(q)
			if err != nil {
				return nil, err
			}
			s.setRoots(roots)
			return meta, nil
		})
	})
	wg.Go(func() {
		loop("leaf "+s.service).run(ctx, func(q *api.QueryOptions) (*api.QueryMeta, error) {
			leaf, meta, err := s.client.Agent().ConnectCALeaf(s.service, q)
			if err != nil {
				return nil, err
			}
			s.setLeaf(leaf)
			return meta, nil
		})
	})
	wg.Wait()
	return nil
}

// setRoots records an answer of the roots watch and publishes a new
// bundle if it changed anything.
func (s *CASource) setRoots(roots *api.CARootList) {
	if roots == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.roots != nil && sameRoots(s.roots, roots) {
		return // a wait that timed out, or a change to fields this does not use
	}
	s.roots = roots
	s.publishLocked()
}

// setLeaf records an answer of the leaf watch and publishes a new bundle
// if the leaf changed.
func (s *CASource) setLeaf(leaf *api.LeafCert) {
	if leaf == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leaf != nil && s.leaf.SerialNumber == leaf.SerialNumber && s.leaf.CertPEM == leaf.CertPEM {
		return
	}
	s.leaf = leaf
	s.publishLocked()
}

// publishLocked builds a bundle from the last answers and publishes it. A
// bundle that cannot be built is logged and dropped: the last good one
// stays in force until the next change. s.mu must be held.
func (s *CASource) publishLocked() {
	if s.roots == nil || s.leaf == nil {
		return
	}
	b, err := buildBundle(s.service, s.leaf, s.roots)
	if err != nil {
		// Possible for a moment during a rotation without cross-signing
		// (a new leaf before the new roots): the next answer fixes it.
		s.log.Warn("consul CA answer unusable; keeping the last certificate", "error", err)
		return
	}
	s.static.Set(b)

	ids := rootIDs(s.roots)
	switch {
	case s.pubLeaf == "":
		s.log.Info("consul CA certificate ready", "id", b.ID, "serial", s.leaf.SerialNumber,
			"not_after", b.NotAfter, "active_root", s.roots.ActiveRootID, "roots", len(ids))
	default:
		if s.pubLeaf != s.leaf.SerialNumber {
			s.log.Info("consul leaf certificate rotated", "serial", s.leaf.SerialNumber,
				"not_after", b.NotAfter, "previous_serial", s.pubLeaf)
		}
		if !slices.Equal(s.pubRoots, ids) {
			s.log.Info("consul CA roots changed", "active_root", s.roots.ActiveRootID, "roots", ids)
		}
	}
	s.pubLeaf, s.pubRoots = s.leaf.SerialNumber, ids
}

// buildBundle turns the agent's answers into a Bundle checked by
// identity.NewBundle (key matches, one SPIFFE ID, valid now, chains to the
// roots). The chain is the leaf and the intermediates the agent appends to
// CertPEM: Consul adds the active root's intermediates, such as the
// cross-signed new root during a rotation, to every leaf it signs (the
// api package's CARoot has no field for them). The roots are every root in
// the list, not only the active one: after a rotation the old root stays
// in the list until it is pruned, and peers whose leaf it signed must be
// trusted until they get a new one.
func buildBundle(service string, leaf *api.LeafCert, roots *api.CARootList) (*identity.Bundle, error) {
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		return nil, fmt.Errorf("consul: ca: leaf %s of %s: %w", leaf.SerialNumber, service, err)
	}
	pool := x509.NewCertPool()
	n := 0
	for _, r := range roots.Roots {
		if r != nil && pool.AppendCertsFromPEM([]byte(r.RootCertPEM)) {
			n++
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("consul: ca: no usable root among the %d of the CA roots list", len(roots.Roots))
	}
	b, err := identity.NewBundle(&cert, pool)
	if err != nil {
		return nil, fmt.Errorf("consul: ca: leaf %s of %s: %w", leaf.SerialNumber, service, err)
	}
	if b.ID.Service != service {
		return nil, fmt.Errorf("consul: ca: leaf %s is for %s, not for service %s", leaf.SerialNumber, b.ID, service)
	}
	return b, nil
}

// sameRoots reports whether a and b hold the same roots (by ID and
// certificate) with the same active one.
func sameRoots(a, b *api.CARootList) bool {
	if a.ActiveRootID != b.ActiveRootID || len(a.Roots) != len(b.Roots) {
		return false
	}
	for i := range a.Roots {
		ra, rb := a.Roots[i], b.Roots[i]
		if (ra == nil) != (rb == nil) || ra != nil && (ra.ID != rb.ID || ra.RootCertPEM != rb.RootCertPEM || ra.Active != rb.Active) {
			return false
		}
	}
	return true
}

// rootIDs returns the IDs of the roots in the list, in its order.
func rootIDs(l *api.CARootList) []string {
	ids := make([]string, 0, len(l.Roots))
	for _, r := range l.Roots {
		if r != nil {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

var _ identity.Source = (*CASource)(nil)
