// Package consul is the Consul discovery backend: a Registrar that publishes
// the local service and its sidecar to the local Consul agent the way
// Consul's own service mesh does (a service plus a connect-proxy service
// with TTL and alias checks), and a Source that watches services with
// blocking queries and feeds full snapshots to the balancers.
//
// Both talk to Consul through a *api.Client built by NewClient, which reads
// the standard CONSUL_HTTP_* environment variables for whatever the Config
// leaves empty.
package consul

import (
	"fmt"
	"log/slog"

	"github.com/hashicorp/consul/api"
)

// Config says how to reach Consul. Every zero field falls back to the
// standard environment variable api.DefaultConfig reads (shown in
// parentheses), then to the api defaults (http://127.0.0.1:8500, no token,
// the agent's datacenter, no TLS).
//
// The token is a secret: Config's String and LogValue methods redact it,
// and this package never logs it.
type Config struct {
	// Address is "host:port" or a URL ("https://host:port") of the Consul
	// HTTP API (CONSUL_HTTP_ADDR).
	Address string
	// Token is the ACL token sent as X-Consul-Token (CONSUL_HTTP_TOKEN).
	Token string
	// TokenFile names a file holding the ACL token (CONSUL_HTTP_TOKEN_FILE).
	// When both Token and TokenFile are set, TokenFile wins, as in the
	// consul CLI. The file is read once, by NewClient.
	TokenFile string
	// Datacenter is the default datacenter of requests; "" means the
	// agent's own datacenter.
	Datacenter string
	// CAFile verifies the server certificate (CONSUL_CACERT).
	CAFile string
	// CertFile and KeyFile are the client certificate and key for mutual
	// TLS (CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY).
	CertFile, KeyFile string
	// TLSServerName is the server name expected in the server certificate
	// (CONSUL_TLS_SERVER_NAME).
	TLSServerName string
}

// NewClient returns a Consul API client for c. It reads the token file, if
// any, and fails when it cannot; it does not contact Consul. The returned
// client is safe for concurrent use and is meant to be shared by a
// Registrar and any number of Sources.
func NewClient(c Config) (*api.Client, error) {
	cfg := api.DefaultConfig()
	if c.Address != "" {
		cfg.Address = c.Address
	}
	if c.Token != "" {
		cfg.Token = c.Token
	}
	if c.TokenFile != "" {
		cfg.TokenFile = c.TokenFile
	}
	if c.Datacenter != "" {
		cfg.Datacenter = c.Datacenter
	}
	if c.CAFile != "" {
		cfg.TLSConfig.CAFile = c.CAFile
	}
	if c.CertFile != "" {
		cfg.TLSConfig.CertFile = c.CertFile
	}
	if c.KeyFile != "" {
		cfg.TLSConfig.KeyFile = c.KeyFile
	}
	if c.TLSServerName != "" {
		cfg.TLSConfig.Address = c.TLSServerName
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		// api.NewClient's errors name the token file, never the token.
		return nil, fmt.Errorf("consul: new client: %w", err)
	}
	return client, nil
}

// String describes c with the token redacted.
func (c Config) String() string {
	return fmt.Sprintf("consul.Config{Address:%q Token:%s TokenFile:%q Datacenter:%q CAFile:%q CertFile:%q KeyFile:%q TLSServerName:%q}",
		c.Address, redact(c.Token), c.TokenFile, c.Datacenter, c.CAFile, c.CertFile, c.KeyFile, c.TLSServerName)
}

// GoString is String, so that %#v does not print the token either.
func (c Config) GoString() string { return c.String() }

// LogValue implements slog.LogValuer so that logging a Config never prints
// the token.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("address", c.Address),
		slog.String("token", redact(c.Token)),
		slog.String("token_file", c.TokenFile),
		slog.String("datacenter", c.Datacenter),
		slog.String("ca_file", c.CAFile),
		slog.String("cert_file", c.CertFile),
		slog.String("key_file", c.KeyFile),
		slog.String("tls_server_name", c.TLSServerName),
	)
}

func redact(secret string) string {
	if secret == "" {
		return `""`
	}
	return "<redacted>"
}

// discardLogger is the logger of components given none.
var discardLogger = slog.New(slog.DiscardHandler)

var (
	_ fmt.Stringer   = Config{}
	_ fmt.GoStringer = Config{}
	_ slog.LogValuer = Config{}
)
