package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"sync"
	"time"

	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/policy"
	"github.com/sidemesh/sidemesh/policy/identity"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/telemetry"
)

// identityReadyTimeout bounds the wait at start for a first certificate.
const identityReadyTimeout = 15 * time.Second

// security is the running identity (certificate source) and the
// authorization table of a sidecar with mutual TLS. Like the discovery
// backends, it is created at Start; the tls section cannot change on
// reload, the policy rules can.
type security struct {
	cfg    *config.TLS
	src    identity.Source
	table  *policy.Table
	dest   string // the local service: every inbound request's destination
	header string // the identity header for the local app
	log    *slog.Logger
	// metrics counts denials; set once at start, before serving.
	metrics *telemetry.Metrics

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// startSecurity loads the certificate source cfg names and builds the
// policy table; nil when mutual TLS is off.
func startSecurity(cfg *config.Config, b *backends, log *slog.Logger) (*security, error) {
	if !cfg.TLS.Enabled() {
		return nil, nil
	}
	log = log.With("component", "mtls")
	ctx, cancel := context.WithCancel(context.Background())
	s := &security{cfg: cfg.TLS, header: cfg.TLS.IdentityHeader, log: log, stop: cancel}
	if cfg.Service != nil {
		s.dest = cfg.Service.Name
	}
	switch cfg.TLS.Source {
	case config.TLSSourceConsul:
		ca := consul.NewCASource(b.consul, cfg.Service.Name, consul.CAOptions{Logger: log})
		s.src = ca
		s.wg.Go(func() { ca.Run(ctx) })
	default:
		fs, err := identity.NewFileSource(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.CAFile,
			identity.FileOptions{Interval: cfg.TLS.ReloadInterval, Logger: log})
		if err != nil {
			cancel()
			return nil, fmt.Errorf("tls: %w", err)
		}
		s.src = fs
		s.wg.Go(func() { fs.Run(ctx) })
	}
	select {
	case <-s.src.Ready():
		b := s.src.Current()
		if td := cfg.TLS.TrustDomain; td != "" && b.ID.TrustDomain != td {
			s.close()
			return nil, fmt.Errorf("tls: this sidecar's certificate is for trust domain %q, the config says %q", b.ID.TrustDomain, td)
		}
		log.Info("identity loaded", "spiffe_id", b.ID.String(), "not_after", b.NotAfter.Format(time.RFC3339))
	case <-time.After(identityReadyTimeout):
		log.Warn("no certificate yet; inbound handshakes fail until one arrives", "waited", identityReadyTimeout)
	}

	s.table = policy.NewTable(policy.Deny)
	if err := s.setPolicy(cfg); err != nil {
		s.close()
		return nil, err
	}
	if cfg.UseConsulIntentions() && cfg.Service != nil {
		in := consul.NewIntentions(b.consul, cfg.Service.Name, consul.IntentionOptions{Logger: log})
		ch, err := in.Watch(ctx)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("consul intentions: %w", err)
		}
		s.wg.Go(func() {
			for rules := range ch {
				if err := s.table.SetRules("consul", rules); err != nil {
					log.Error("consul intentions rejected", "err", err)
					continue
				}
				log.Info("consul intentions applied", "rules", len(rules))
			}
		})
	}
	return s, nil
}

// setPolicy applies the policy section of cfg (the default and the rules
// of the file); Consul intentions are kept.
func (s *security) setPolicy(cfg *config.Config) error {
	def, _ := policy.ParseAction(cfg.DefaultAction()) // validated by config
	s.table.SetDefault(def)
	rules := make([]policy.Rule, len(cfg.Policy.Rules))
	for i := range rules {
		rules[i] = cfg.PolicyRule(i)
	}
	if err := s.table.SetRules("config", rules); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	return nil
}

// compatible reports whether cfg can be applied without a restart.
func (s *security) compatible(cfg *config.Config) error {
	var now *config.TLS
	if s != nil {
		now = s.cfg
	}
	if !reflect.DeepEqual(now, cfg.TLS) {
		return errors.New("the tls section changed; restart sidemesh to apply it")
	}
	return nil
}

func (s *security) close() {
	if s == nil {
		return
	}
	s.stop()
	s.wg.Wait()
}

// serverTLS is the inbound listener's TLS config.
func (s *security) serverTLS() *tls.Config {
	if s == nil {
		return nil
	}
	return identity.ServerConfig(s.src)
}

// clientTLS is the TLS config toward the sidecars of service.
func (s *security) clientTLS(service string) *tls.Config {
	if s == nil {
		return nil
	}
	return identity.ClientConfig(s.src, service, "")
}

// authorize wraps the inbound handler: it removes any identity header a
// caller sent, normalizes the path (refusing ambiguous ones with 400),
// asks the policy table, answers 403 when it denies, and otherwise hands
// the app the normalized path and the caller's verified identity.
func (s *security) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del(s.header)
		ex := telemetry.ExchangeFrom(r.Context())
		// refuse answers a request no rule may see; rule names the check
		// that failed, for metrics and the trace.
		refuse := func(status int, rule, reason string) {
			s.metrics.PolicyDenial(rule)
			if ex != nil {
				ex.PolicyRule = rule
			}
			deny(w, status, reason)
		}
		if r.TLS == nil {
			refuse(http.StatusForbidden, "no_certificate", "no client certificate")
			return
		}
		peer, err := identity.PeerID(*r.TLS)
		if err != nil {
			refuse(http.StatusForbidden, "no_identity", "no SPIFFE identity: "+err.Error())
			return
		}
		peerID := peer.String()
		if ex != nil {
			ex.Peer = peerID
		}
		path, err := policy.NormalizePath(r.URL.EscapedPath())
		if err != nil {
			refuse(http.StatusBadRequest, "bad_path", err.Error())
			return
		}
		d := s.table.Authorize(r.Context(), policy.Request{
			Source:      policy.Source{Service: peer.Service, SPIFFE: peerID, Namespace: peer.Namespace},
			Destination: s.dest, Method: r.Method, Path: path, Header: r.Header,
		})
		if !d.Allow {
			s.log.Info("request denied", "peer", peerID, "method", r.Method, "path", path, "rule", d.Rule)
			refuse(http.StatusForbidden, d.Rule, d.Reason)
			return
		}
		if ex != nil {
			ex.PolicyRule, ex.PolicyAllowed = d.Rule, true
		}
		if path != r.URL.EscapedPath() {
			u, _ := url.Parse(path) // NormalizePath returns a valid escaped path
			r.URL.Path, r.URL.RawPath = u.Path, u.RawPath
		}
		r.Header.Set(s.header, peerID)
		next.ServeHTTP(w, r)
	})
}

// admit is the TCP inbound's check: it completes the TLS handshake and
// closes the connection of a peer the policy denies.
func (s *security) admit(ctx context.Context, c net.Conn) error {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return errors.New("not a TLS connection")
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls handshake: %w", err)
	}
	peer, err := identity.PeerID(tc.ConnectionState())
	if err != nil {
		return err
	}
	d := s.table.Authorize(ctx, policy.Request{
		Source:      policy.Source{Service: peer.Service, SPIFFE: peer.String(), Namespace: peer.Namespace},
		Destination: s.dest,
	})
	if !d.Allow {
		s.metrics.PolicyDenial(d.Rule)
		return fmt.Errorf("denied %s: %s", peer, d.Reason)
	}
	return nil
}

// stripIdentity removes the identity header from requests to the local
// app when mutual TLS is off, so no caller can claim an identity.
func stripIdentity(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del(config.DefaultIdentityHeader)
		next.ServeHTTP(w, r)
	})
}

// deny answers a request the sidecar refuses to pass to the app: 400 for
// an ambiguous path, 403 for a caller the policy does not allow.
func deny(w http.ResponseWriter, status int, reason string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	kind := "denied"
	if status == http.StatusBadRequest {
		kind = "bad_path"
	}
	h.Set("X-Sidemesh-Error", kind)
	w.WriteHeader(status)
	fmt.Fprintf(w, "sidemesh: %s\n", reason)
}
