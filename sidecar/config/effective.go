package config

import (
	"runtime"
	"slices"

	"go.yaml.in/yaml/v3"
)

// Effective returns the config as sidemesh runs it, as plain maps and
// lists with the YAML key names: every default filled in, the defaults
// that depend on other settings resolved (policy.default, hash_on,
// per_try_timeout, each upstream's sources, a sticky cookie's name and
// path, an automatic concurrency as the number the runtime chose), the
// sections of features that are off reduced to what says so (a circuit
// breaker that is off shows "enabled: false" only), and the OTLP
// exporters' headers, the only secrets written inline, shown as
// "[redacted]". `sidemesh validate --print` and the admin API's /config
// show it.
func (c *Config) Effective() map[string]any {
	b, err := yaml.Marshal(c)
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return map[string]any{"error": err.Error()}
	}
	if c.Concurrency == 0 {
		m["concurrency"] = runtime.GOMAXPROCS(0) // automatic: the runtime's choice
	}
	if c.Service == nil {
		delete(m, "service")
		delete(m, "inbound")
	} else if svc, _ := m["service"].(map[string]any); svc != nil {
		svc["id"] = c.ServiceID()
		svc["advertise"] = c.AdvertiseAddr()
		if h := c.Service.Health; h.HTTP == "" && !h.TCP {
			delete(svc, "health")
		}
	}
	for _, k := range []string{"admin", "tls"} {
		if m[k] == nil {
			delete(m, k)
		}
	}
	if c.TLS != nil && !c.TLS.Enabled() {
		m["tls"] = map[string]any{"mode": TLSOff}
	}
	pol, _ := m["policy"].(map[string]any)
	if pol != nil {
		pol["default"] = c.DefaultAction()
		pol["consul_intentions"] = c.UseConsulIntentions()
	}
	if disc, _ := m["discovery"].(map[string]any); disc != nil {
		for _, k := range []string{"consul", "gossip"} {
			if disc[k] == nil {
				delete(disc, k)
			}
		}
	}
	ups, _ := m["upstreams"].([]any)
	for i, raw := range ups {
		u, _ := raw.(map[string]any)
		if u == nil || i >= len(c.Upstreams) {
			continue
		}
		cu := &c.Upstreams[i]
		u["source"] = c.Sources(cu)
		switch cu.Balancer {
		case "consistent_hash":
			if cu.HashOn == "" {
				u["hash_on"] = "source_ip"
			}
		default:
			delete(u, "hash_on")
		}
		if !cu.CircuitBreaker.Enabled {
			u["circuit_breaker"] = map[string]any{"enabled": false}
		}
		if !cu.Outlier.Enabled {
			u["outlier"] = map[string]any{"enabled": false}
		}
		if !cu.HealthCheck.Enabled() {
			delete(u, "health_check")
		}
		if cu.Retries.Attempts == 0 {
			u["retries"] = map[string]any{"attempts": 0}
		}
		if len(cu.Endpoints) == 0 {
			delete(u, "endpoints")
		}
		if !slices.Contains(c.Sources(cu), SourceConsul) {
			delete(u, "consul")
		}
		if cu.Protocol == ProtocolTCP {
			delete(u, "retries")
			delete(u, "timeout")
		}
	}
	if tel, _ := m["telemetry"].(map[string]any); tel != nil {
		for _, section := range []string{"tracing", "metrics"} {
			sec, _ := tel[section].(map[string]any)
			if sec == nil {
				delete(tel, section)
				continue
			}
			headers, _ := sec["headers"].(map[string]any)
			for k := range headers {
				headers[k] = "[redacted]"
			}
		}
	}
	if edge, _ := m["edge"].(map[string]any); edge != nil && c.Edge != nil {
		routes, _ := edge["routes"].([]any)
		for i, raw := range routes {
			r, _ := raw.(map[string]any)
			st, _ := r["sticky"].(map[string]any)
			if st == nil || i >= len(c.Edge.Routes) {
				continue
			}
			rc := &c.Edge.Routes[i]
			if rc.Sticky.Mode != StickyCookieMode {
				delete(st, "cookie")
				continue
			}
			if ck, _ := st["cookie"].(map[string]any); ck != nil {
				ck["name"], ck["path"] = rc.CookieName(), rc.CookiePath()
			}
		}
	}
	prune(m)
	return m
}

// prune removes empty text, lists and maps (what is not set) from m, at
// every depth.
func prune(m map[string]any) {
	for k, v := range m {
		switch v := v.(type) {
		case string:
			if v == "" {
				delete(m, k)
			}
		case []any:
			for _, e := range v {
				if em, ok := e.(map[string]any); ok {
					prune(em)
				}
			}
			if len(v) == 0 {
				delete(m, k)
			}
		case map[string]any:
			prune(v)
			if len(v) == 0 {
				delete(m, k)
			}
		}
	}
}

// EffectiveYAML is Effective written as YAML, for `sidemesh validate
// --print`.
func (c *Config) EffectiveYAML() (string, error) {
	b, err := yaml.Marshal(c.Effective())
	return string(b), err
}
