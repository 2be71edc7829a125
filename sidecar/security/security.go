// Package security is a sidecar's running identity and authorization: the
// certificate source behind its mutual TLS, the policy table (the config's
// rules and Consul intentions), and the pipeline filters and TCP check
// that enforce them on the inbound listener.
package security

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
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/policy"
	"github.com/sidemesh/sidemesh/policy/identity"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/telemetry"
)

// identityReadyTimeout bounds the wait at start for a first certificate.
const identityReadyTimeout = 15 * time.Second

// Security is the running identity (certificate source) and the
// authorization table of a sidecar with mutual TLS. It is created at
// start; the tls section cannot change on reload, the policy rules can.
// A nil *Security is a sidecar without mutual TLS: its methods return nil
// configs and its filters only strip a forged identity header. Safe for
// concurrent use.
type Security struct {
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

// Start loads the certificate source cfg names and builds the policy
// table; it returns nil when mutual TLS is off. consulClient is the Consul
// client of discovery (nil without it), for the Connect CA and
// intentions. metrics counts denials.
func Start(cfg *config.Config, consulClient *api.Client, metrics *telemetry.Metrics, log *slog.Logger) (*Security, error) {
	if !cfg.TLS.Enabled() {
		return nil, nil
	}
	log = log.With("component", "mtls")
	ctx, cancel := context.WithCancel(context.Background())
	s := &Security{cfg: cfg.TLS, header: cfg.TLS.IdentityHeader, log: log, metrics: metrics, stop: cancel}
	if cfg.Service != nil {
		s.dest = cfg.Service.Name
	}
	switch cfg.TLS.Source {
	case config.TLSSourceConsul:
		ca := consul.NewCASource(consulClient, cfg.Service.Name, consul.CAOptions{Logger: log})
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
			s.Close()
			return nil, fmt.Errorf("tls: this sidecar's certificate is for trust domain %q, the config says %q", b.ID.TrustDomain, td)
		}
		// The source logged the identity it loaded.
	case <-time.After(identityReadyTimeout):
		log.Warn("no certificate yet; inbound handshakes fail until one arrives", "waited", identityReadyTimeout.String())
	}

	s.table = policy.NewTable(policy.Deny)
	p, err := s.CheckPolicy(cfg)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.ApplyPolicy(p)
	if cfg.UseConsulIntentions() && cfg.Service != nil {
		in := consul.NewIntentions(consulClient, cfg.Service.Name, consul.IntentionOptions{Logger: log})
		ch, err := in.Watch(ctx)
		if err != nil {
			s.Close()
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

// Policy is a checked policy section, ready to apply.
type Policy struct {
	def   policy.Action
	rules []policy.Rule
}

// CheckPolicy compiles the policy section of cfg (its default and rules)
// without applying it, so that a reload can refuse a config before it
// changes anything.
func (s *Security) CheckPolicy(cfg *config.Config) (Policy, error) {
	def, err := policy.ParseAction(cfg.DefaultAction())
	if err != nil {
		return Policy{}, fmt.Errorf("policy: %w", err)
	}
	p := Policy{def: def, rules: make([]policy.Rule, len(cfg.Policy.Rules))}
	for i := range p.rules {
		p.rules[i] = cfg.PolicyRule(i)
	}
	if _, err := policy.NewPolicy(p.rules, def); err != nil {
		return Policy{}, fmt.Errorf("policy: %w", err)
	}
	return p, nil
}

// ApplyPolicy makes p the policy of the config file; Consul intentions
// are kept. p must come from CheckPolicy. A nil s ignores it.
func (s *Security) ApplyPolicy(p Policy) {
	if s == nil {
		return
	}
	s.table.SetDefault(p.def)
	if err := s.table.SetRules("config", p.rules); err != nil {
		// CheckPolicy compiled these very rules.
		s.log.Error("policy rules rejected after they were checked", "err", err)
	}
}

// Compatible reports whether cfg can be applied without a restart.
func (s *Security) Compatible(cfg *config.Config) error {
	var now *config.TLS
	if s != nil {
		now = s.cfg
	}
	if now == nil && !cfg.TLS.Enabled() {
		return nil // off before and after, whether or not written out
	}
	if !reflect.DeepEqual(now, cfg.TLS) {
		return errors.New("the tls section changed; restart sidemesh to apply it")
	}
	return nil
}

// Close stops the certificate source and the intentions watch.
func (s *Security) Close() {
	if s == nil {
		return
	}
	s.stop()
	s.wg.Wait()
}

// Current returns the sidecar's certificate and trust bundle; nil before
// the first one arrives, or without mutual TLS.
func (s *Security) Current() *identity.Bundle {
	if s == nil {
		return nil
	}
	return s.src.Current()
}

// ServerTLS is the inbound listener's TLS config; nil without mutual TLS.
func (s *Security) ServerTLS() *tls.Config {
	if s == nil {
		return nil
	}
	return identity.ServerConfig(s.src)
}

// ClientTLS is the TLS config toward the sidecars of service, checking
// their identity; nil without mutual TLS.
func (s *Security) ClientTLS(service string) *tls.Config {
	if s == nil {
		return nil
	}
	return identity.ClientConfig(s.src, service, "")
}

// Filter returns the inbound chain's authorization filter. It runs after
// proxy.Hygiene, so the header it sets cannot be removed by the caller.
// It removes any identity header the caller sent; with mutual TLS it then
// requires the caller's SPIFFE identity, normalizes the path (refusing
// ambiguous ones with 400 bad_path), asks the policy table, refuses with
// 403 denied, and otherwise hands the app the normalized path and the
// caller's verified identity in the identity header. Without mutual TLS
// (a nil s) it only removes the header, so no caller can claim an
// identity.
func (s *Security) Filter() pipeline.Filter {
	if s == nil {
		return pipeline.FilterFunc(func(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
			r.Header.Del(config.DefaultIdentityHeader)
			return next.ServeHTTP(w, r)
		})
	}
	return authorizer{s}
}

type authorizer struct{ s *Security }

func (a authorizer) Serve(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
	s := a.s
	r.Header.Del(s.header)
	info := pipeline.InfoFrom(r.Context())
	if info == nil {
		info = new(pipeline.Info)
	}
	// refuse answers a request no rule may see; rule names the check
	// that failed, for metrics and the trace.
	refuse := func(status int, kind pipeline.Kind, rule, reason string) error {
		s.metrics.PolicyDenial(rule)
		info.PolicyRule = rule
		return &pipeline.Error{Status: status, Kind: kind, Msg: reason}
	}
	if r.TLS == nil {
		return refuse(http.StatusForbidden, pipeline.KindDenied, "no_certificate", "no client certificate")
	}
	peer, err := identity.PeerID(*r.TLS)
	if err != nil {
		return refuse(http.StatusForbidden, pipeline.KindDenied, "no_identity", "no SPIFFE identity: "+err.Error())
	}
	peerID := peer.String()
	info.Peer = peerID
	escaped := r.URL.EscapedPath()
	if strings.IndexByte(escaped, ';') >= 0 {
		// Path parameters: Tomcat, Jetty and others strip "/secret;x" to
		// "/secret" before routing, so a rule on "/secret" would not see
		// the path the app serves. Refused, as Spring's StrictHttpFirewall
		// does.
		return refuse(http.StatusBadRequest, pipeline.KindBadPath, "bad_path", "path parameters (';') are not allowed: an app may read the path without them")
	}
	path, err := policy.NormalizePath(escaped)
	if err != nil {
		return refuse(http.StatusBadRequest, pipeline.KindBadPath, "bad_path", err.Error())
	}
	d := s.table.Authorize(r.Context(), policy.Request{
		Source:      policy.Source{Service: peer.Service, SPIFFE: peerID, Namespace: peer.Namespace},
		Destination: s.dest, Method: r.Method, Path: path, Header: r.Header,
	})
	if !d.Allow {
		s.log.Info("request denied", "peer", peerID, "method", r.Method, "path", path, "rule", d.Rule)
		return refuse(http.StatusForbidden, pipeline.KindDenied, d.Rule, d.Reason)
	}
	info.PolicyRule, info.PolicyAllowed = d.Rule, true
	if path != r.URL.EscapedPath() {
		u, _ := url.Parse(path) // NormalizePath returns a valid escaped path
		r.URL.Path, r.URL.RawPath = u.Path, u.RawPath
	}
	r.Header.Set(s.header, peerID)
	return next.ServeHTTP(w, r)
}

// Admit is the TCP inbound's check: it completes the TLS handshake and
// refuses (the caller closes the connection) a peer the policy denies.
func (s *Security) Admit(ctx context.Context, c net.Conn) error {
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
