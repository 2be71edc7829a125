//go:build linux

package main

import (
	"fmt"
	"os"
	"strings"
	"text/template"
)

// The configs of the proxies, as text templates: what each row runs is
// written to the work folder, where -keep leaves it to be read.

// nginxTemplate is an nginx that proxies to one upstream, set up as a
// production nginx in front of an app would be: two workers, keep-alive
// connections to the upstream, no access log.
//
// Modes: "plain" listens for HTTP/1.1 on .H1 and h2c on .H2; "tls"
// terminates TLS (HTTP/1.1 and h2 by ALPN) on .H1; "pair-front" is the
// client side of an mTLS pair (plain in, mutual TLS out, checking the
// server's certificate name as a sidecar checks its identity);
// "pair-back" the server side (mutual TLS in, the caller's certificate
// required and its subject checked, plain out).
var nginxTemplate = template.Must(template.New("nginx").Parse(`# nginx for sidemesh's bench-compare, row {{.Row}} ({{.Mode}}); run as
#   nginx -p {{.Dir}} -c {{.Dir}}/nginx.conf -e {{.Dir}}/error.log
daemon off;
master_process on;
worker_processes 2;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path {{.Dir}}/client_body;
  proxy_temp_path {{.Dir}}/proxy;
  fastcgi_temp_path {{.Dir}}/fastcgi;
  uwsgi_temp_path {{.Dir}}/uwsgi;
  scgi_temp_path {{.Dir}}/scgi;
  # nginx closes a client's keep-alive connection after 1,000 requests by
  # default (and an upstream one likewise); the other proxies never do.
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  upstream app {
    server {{.Upstream}};
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
{{- if eq .Mode "pair-back"}}
  map $ssl_client_s_dn $caller_allowed { "CN=client" 1; default 0; }
{{- end}}
  server {
{{- if eq .Mode "plain" "pair-front"}}
    listen 127.0.0.1:{{.H1}};
    listen 127.0.0.1:{{.H2}} http2;
{{- else if eq .Mode "tls"}}
    listen 127.0.0.1:{{.H1}} ssl http2;
    ssl_certificate {{.Certs}}/edge.pem;
    ssl_certificate_key {{.Certs}}/edge-key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
{{- else if eq .Mode "pair-back"}}
    listen 127.0.0.1:{{.H1}} ssl;
    ssl_certificate {{.Certs}}/app.pem;
    ssl_certificate_key {{.Certs}}/app-key.pem;
    ssl_protocols TLSv1.3;
    ssl_client_certificate {{.Certs}}/ca.pem;
    ssl_verify_client on;
    ssl_verify_depth 2;
    # As the sidecar's policy allows only the client service: the
    # caller's certificate must be the client's.
    if ($caller_allowed = 0) { return 403; }
{{- end}}
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{{- if eq .Mode "pair-front"}}
      proxy_pass https://app;
      proxy_ssl_certificate {{.Certs}}/client.pem;
      proxy_ssl_certificate_key {{.Certs}}/client-key.pem;
      proxy_ssl_trusted_certificate {{.Certs}}/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 2;
      proxy_ssl_name app;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse on;
{{- else}}
      proxy_pass http://app;
{{- end}}
    }
  }
}
`))

// haproxyTemplate is HAProxy with two threads (nginx has two workers, Go
// two Ps): HTTP/1.1 on .H1, h2c on .H2, keep-alive to the backend (its
// default, http-reuse safe).
var haproxyTemplate = template.Must(template.New("haproxy").Parse(`# HAProxy for sidemesh's bench-compare; run as
#   haproxy -db -f {{.Dir}}/haproxy.cfg
global
  nbthread 2
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 120s
  timeout server 30s
  timeout http-keep-alive 120s
frontend h1
  bind 127.0.0.1:{{.H1}}
  default_backend app
frontend h2
  bind 127.0.0.1:{{.H2}} proto h2
  default_backend app
backend app
  server app {{.Upstream}}
`))

// sidemeshTemplate is a sidemesh config in its real format
// (docs/configuration.md, docs/edge.md): static discovery, defaults
// everywhere else (metrics on: the admin API serves /metrics).
//
// Modes: "outbound", a sidecar's outbound listener in front of the app
// (one hop); "pair-front", a client-only sidecar speaking mutual TLS to
// the pair's other sidecar; "pair-back", the app's sidecar, whose
// inbound listener takes mutual TLS and whose policy allows the client;
// "edge", the edge gateway terminating TLS; "edge-jwt", the same with a
// JWT and a rate limit on its route.
var sidemeshTemplate = template.Must(template.New("sidemesh").Parse(`# sidemesh for sidemesh's bench-compare, row {{.Row}} ({{.Mode}}); run as
#   sidemesh run -c {{.Path}}
{{- if eq .Mode "pair-back"}}
service: { name: app, port: {{.UpstreamPort}} }
inbound: { listen: 127.0.0.1:{{.Listen}} }
outbound: { listen: 127.0.0.1:{{.Spare}} }   # unused; every sidecar has one
{{- else if eq .Mode "outbound" "pair-front"}}
outbound: { listen: 127.0.0.1:{{.Listen}} }
{{- else}}
edge:
  listeners:
    - listen: 127.0.0.1:{{.Listen}}
      tls: { certificates: [{ cert_file: {{.Certs}}/edge.pem, key_file: {{.Certs}}/edge-key.pem, default: true }] }
{{- if eq .Mode "edge-jwt"}}
  jwt_providers:
    - { name: bench, issuer: "{{.Issuer}}", audiences: [bench], jwks_file: {{.JWKS}}, algorithms: [ES256] }
{{- end}}
  routes:
    - name: app
      matches: [{ path: { prefix: / } }]
      backends: [{ service: app }]
{{- if eq .Mode "edge-jwt"}}
      auth: { jwt: bench }
      rate_limits: [{ rate: 10000000/s }]   # per client address; high enough never to refuse
{{- end}}
{{- end}}
admin: { listen: 127.0.0.1:{{.Admin}} }     # /metrics
{{- if eq .Mode "pair-front" "pair-back"}}
tls:
  mode: mutual
  source: files
  cert_file: {{.Certs}}/{{if eq .Mode "pair-front"}}client{{else}}app{{end}}.pem
  key_file: {{.Certs}}/{{if eq .Mode "pair-front"}}client{{else}}app{{end}}-key.pem
  ca_file: {{.Certs}}/ca.pem
  trust_domain: {{.TrustDomain}}
{{- end}}
{{- if eq .Mode "pair-back"}}
policy: { rules: [{ from: [client], to: app, action: allow }] }   # default deny
{{- else}}
upstreams:
  - service: app
    endpoints: [{ address: {{.Upstream}} }]
{{- end}}
drain_timeout: 1s
`))

// configData is what the templates are filled with.
type configData struct {
	Row, Mode, Dir, Path, Certs string
	Upstream                    string // host:port of the next hop
	UpstreamPort                int    // its port, for service.port
	H1, H2                      int    // nginx, HAProxy: listening ports
	Listen, Admin, Spare        int    // sidemesh: listening ports
	TrustDomain, Issuer, JWKS   string
}

// writeConfig fills tmpl with d and writes it to path.
func writeConfig(tmpl *template.Template, d configData, path string) error {
	var b strings.Builder
	if err := tmpl.Execute(&b, d); err != nil {
		return fmt.Errorf("%s config of row %s: %w", tmpl.Name(), d.Row, err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("%s config of row %s: %w", tmpl.Name(), d.Row, err)
	}
	return nil
}
