package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/policy"
)

// TLS configures mutual TLS between sidecars with SPIFFE identities. With
// it, the inbound listener accepts only callers with a certificate from the
// trust domain, and every upstream connection checks that the server is
// the service it meant to reach.
type TLS struct {
	// Mode is mutual (the default) or off.
	Mode string `yaml:"mode"`
	// Source of certificates: files (the default) or consul (the local
	// agent's Connect CA; needs discovery.consul and a service).
	Source string `yaml:"source"`
	// CertFile, KeyFile and CAFile are the PEM files of the files source:
	// the leaf (with any intermediates), its key, and the trust bundle.
	// They are reloaded when they change on disk.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"`
	// TrustDomain is the SPIFFE trust domain peers must belong to. Default:
	// the trust domain of this sidecar's own certificate.
	TrustDomain string `yaml:"trust_domain"`
	// ReloadInterval is how often the files source looks for changes.
	// Default 2s.
	ReloadInterval time.Duration `yaml:"reload_interval"`
	// IdentityHeader carries the caller's verified SPIFFE ID to the local
	// app; a copy sent by anyone else is removed. Default
	// X-Sidemesh-Peer-Identity.
	IdentityHeader string `yaml:"identity_header"`
}

// Enabled reports whether mutual TLS is on.
func (t *TLS) Enabled() bool { return t != nil && t.Mode == TLSMutual }

// TLS modes and sources.
const (
	TLSMutual       = "mutual"
	TLSOff          = "off"
	TLSSourceFiles  = "files"
	TLSSourceConsul = "consul"
)

// DefaultIdentityHeader is TLS.IdentityHeader's default.
const DefaultIdentityHeader = "X-Sidemesh-Peer-Identity"

// setDefaults fills a TLS section the file is about to overlay.
func (t *TLS) setDefaults() {
	*t = TLS{Mode: TLSMutual, Source: TLSSourceFiles, ReloadInterval: 2 * time.Second, IdentityHeader: DefaultIdentityHeader}
}

// Policy says who may call the local service. Rules apply on the inbound
// side, to callers identified by mutual TLS.
type Policy struct {
	// Default is the decision when no rule matches: deny or allow.
	// Default deny when mutual TLS is on, allow when it is off (there is
	// no identity to decide on).
	Default string `yaml:"default"`
	// Rules are matched most specific first (see the README); at equal
	// specificity a deny beats an allow.
	Rules []PolicyRule `yaml:"rules"`
	// ConsulIntentions applies the service-intentions config entries of
	// the local service, watched live, next to Rules. Default true when
	// discovery.consul is set.
	ConsulIntentions *bool `yaml:"consul_intentions"`
}

// PolicyRule is one authorization rule.
type PolicyRule struct {
	// From lists callers: service names, "*" (any authenticated caller)
	// or SPIFFE IDs, which may end in /* ("spiffe://mesh.local/ns/prod/*").
	From []string `yaml:"from"`
	// To is the destination service, or "*". Default: the local service.
	To string `yaml:"to"`
	// Action is allow or deny. Required.
	Action string `yaml:"action"`
	// Methods limits the rule to these HTTP methods; empty means any.
	Methods []string `yaml:"methods"`
	// Paths limits the rule to paths starting with one of these prefixes
	// (after normalization); ExactPaths to exactly these paths. Both
	// empty means any path.
	Paths      []string `yaml:"paths"`
	ExactPaths []string `yaml:"exact_paths"`
	// Headers must all match.
	Headers []PolicyHeader `yaml:"headers"`
}

// PolicyHeader matches one request header.
type PolicyHeader struct {
	Name    string `yaml:"name"`
	Present bool   `yaml:"present"`
	Exact   string `yaml:"exact"`
	Prefix  string `yaml:"prefix"`
	Invert  bool   `yaml:"invert"`
}

// PolicyRule turns rule i of the policy section into a policy.Rule; an
// empty To means the local service.
func (c *Config) PolicyRule(i int) policy.Rule {
	r := c.Policy.Rules[i]
	action, _ := policy.ParseAction(r.Action)
	to := r.To
	if to == "" && c.Service != nil {
		to = c.Service.Name
	}
	pr := policy.Rule{Name: fmt.Sprintf("policy.rules[%d]", i), From: r.From, To: to, Action: action, Methods: r.Methods}
	for _, p := range r.Paths {
		pr.Paths = append(pr.Paths, policy.PathMatch{Prefix: p})
	}
	for _, p := range r.ExactPaths {
		pr.Paths = append(pr.Paths, policy.PathMatch{Exact: p})
	}
	for _, h := range r.Headers {
		pr.Headers = append(pr.Headers, policy.HeaderMatch{Name: h.Name, Present: h.Present, Exact: h.Exact, Prefix: h.Prefix, Invert: h.Invert})
	}
	return pr
}

// DefaultAction returns the policy's default decision: "allow" or "deny".
func (c *Config) DefaultAction() string {
	if c.Policy.Default != "" {
		return c.Policy.Default
	}
	if c.TLS.Enabled() {
		return "deny"
	}
	return "allow"
}

// UseConsulIntentions reports whether Consul intentions are applied.
func (c *Config) UseConsulIntentions() bool {
	if c.Policy.ConsulIntentions != nil {
		return *c.Policy.ConsulIntentions
	}
	return c.Discovery.Consul != nil && c.TLS.Enabled()
}

func (v *validator) security(c *Config) {
	if t := c.TLS; t != nil {
		v.oneOf("tls.mode", "mode", t.Mode, []string{TLSMutual, TLSOff})
		v.oneOf("tls.source", "source", t.Source, []string{TLSSourceFiles, TLSSourceConsul})
		if t.Enabled() {
			switch t.Source {
			case TLSSourceFiles:
				for _, f := range []struct{ path, value string }{
					{"tls.cert_file", t.CertFile}, {"tls.key_file", t.KeyFile}, {"tls.ca_file", t.CAFile},
				} {
					if f.value == "" {
						v.errorf(f.path, "required with source files")
					}
				}
			case TLSSourceConsul:
				if c.Discovery.Consul == nil {
					v.errorf("tls.source", "source consul needs a discovery.consul section")
				}
				if c.Service == nil {
					v.errorf("tls.source", "source consul needs a service: its certificate is issued for the service name")
				}
			}
			if t.TrustDomain != "" && (strings.ToLower(t.TrustDomain) != t.TrustDomain || strings.ContainsAny(t.TrustDomain, "/:")) {
				v.errorf("tls.trust_domain", "invalid trust domain %s: want lowercase letters, digits, '.', '-' and '_'", quote(t.TrustDomain))
			}
			v.positive("tls.reload_interval", t.ReloadInterval)
			if t.IdentityHeader == "" {
				v.errorf("tls.identity_header", "required")
			}
		}
	}
	p := &c.Policy
	if p.Default != "" {
		v.oneOf("policy.default", "action", p.Default, []string{"allow", "deny"})
	}
	if len(p.Rules) > 0 && !c.TLS.Enabled() {
		v.errorf("policy.rules", "rules need mutual TLS (a tls section): without it no caller has an identity")
	}
	if p.Default == "deny" && !c.TLS.Enabled() {
		// Without identities nothing could be enforced: the sidecar would
		// let every request through while the file says deny.
		v.errorf("policy.default", "deny needs mutual TLS (a tls section): without it no caller has an identity and every request would be let through")
	}
	if p.ConsulIntentions != nil && *p.ConsulIntentions && c.Discovery.Consul == nil {
		v.errorf("policy.consul_intentions", "needs a discovery.consul section")
	}
	for i, r := range p.Rules {
		path := fmt.Sprintf("policy.rules[%d]", i)
		if len(r.From) == 0 {
			v.errorf(path+".from", "required: list callers, or \"*\" for any authenticated caller")
		}
		for j, f := range r.From {
			if kind, _, ok := strings.Cut(f, ":"); ok && (kind == "jwt" || kind == "apikey" || kind == "cidr") {
				v.errorf(fmt.Sprintf("%s.from[%d]", path, j), "%s names an edge caller; mesh callers are workloads (service names, SPIFFE IDs): put it in edge.policy", quote(f))
			}
		}
		v.oneOf(path+".action", "action", r.Action, []string{"allow", "deny"})
		for j, pth := range append(append([]string(nil), r.Paths...), r.ExactPaths...) {
			if !strings.HasPrefix(pth, "/") {
				v.errorf(fmt.Sprintf("%s.paths[%d]", path, j), "must start with /, got %s", quote(pth))
			}
		}
		for j, h := range r.Headers {
			if h.Name == "" {
				v.errorf(fmt.Sprintf("%s.headers[%d].name", path, j), "required")
			}
		}
		if len(r.From) > 0 && (r.Action == "allow" || r.Action == "deny") {
			// The policy package is the judge of patterns and paths.
			if err := c.PolicyRule(i).Validate(); err != nil {
				for line := range strings.Lines(err.Error()) {
					line = strings.TrimPrefix(strings.TrimSpace(line), "rule "+path+": ")
					v.errorf(path, "%s", line)
				}
			}
		}
	}
}
