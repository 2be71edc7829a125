package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/policy/authn"
)

// fileField is a field of a Config that names a file.
type fileField struct {
	path string  // the field's path, for errors
	ptr  *string // the value
}

// fileFields returns the fields of c that name files, set or not.
func (c *Config) fileFields() []fileField {
	var fs []fileField
	if t := c.TLS; t != nil {
		fs = append(fs, fileField{"tls.cert_file", &t.CertFile}, fileField{"tls.key_file", &t.KeyFile}, fileField{"tls.ca_file", &t.CAFile})
	}
	if cs := c.Discovery.Consul; cs != nil {
		fs = append(fs, fileField{"discovery.consul.token_file", &cs.TokenFile}, fileField{"discovery.consul.ca_file", &cs.CAFile},
			fileField{"discovery.consul.cert_file", &cs.CertFile}, fileField{"discovery.consul.key_file", &cs.KeyFile})
	}
	if g := c.Discovery.Gossip; g != nil {
		fs = append(fs, fileField{"discovery.gossip.key_file", &g.KeyFile})
	}
	if a := c.Telemetry.AccessLog; a != AccessLogOff && a != AccessLogStdout && a != AccessLogStderr {
		fs = append(fs, fileField{"telemetry.access_log", &c.Telemetry.AccessLog})
	}
	fs = append(fs, c.Edge.stickyFiles()...)
	fs = append(fs, c.Edge.jwksFiles()...)
	fs = append(fs, c.Edge.apiKeyFiles()...)
	fs = append(fs, c.Edge.grpcFiles()...)
	return fs
}

// resolvePaths makes the relative file paths of c relative to the
// config file's directory, as Caddy, Envoy and systemd users expect, so
// that a config works whatever directory sidemesh is started from.
func (c *Config) resolvePaths() {
	dir := filepath.Dir(c.file)
	if c.file == "" || dir == "." {
		return
	}
	for _, f := range c.fileFields() {
		if *f.ptr != "" && !filepath.IsAbs(*f.ptr) {
			*f.ptr = filepath.Join(dir, *f.ptr)
		}
	}
}

// checkFiles reports the files c names that are missing or do not hold
// what they should: a certificate and its key that do not form a pair, a
// CA file without a certificate, a gossip key that is not one, an empty
// token file, an access log whose directory does not exist. Load runs it,
// so `sidemesh validate` catches what `run` would fail on.
func (c *Config) checkFiles() ErrorList {
	v := &validator{c: c}
	if t := c.TLS; t.Enabled() && t.Source == TLSSourceFiles && t.CertFile != "" && t.KeyFile != "" {
		if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
			v.errorf("tls.cert_file", "%s", fileError(err))
		}
	}
	if t := c.TLS; t.Enabled() && t.CAFile != "" {
		v.checkCA("tls.ca_file", t.CAFile)
	}
	if cs := c.Discovery.Consul; cs != nil {
		if cs.TokenFile != "" {
			if b, err := os.ReadFile(cs.TokenFile); err != nil {
				v.errorf("discovery.consul.token_file", "%s", fileError(err))
			} else if strings.TrimSpace(string(b)) == "" {
				v.errorf("discovery.consul.token_file", "%s is empty", cs.TokenFile)
			}
		}
		if cs.CAFile != "" {
			v.checkCA("discovery.consul.ca_file", cs.CAFile)
		}
		if cs.CertFile != "" && cs.KeyFile != "" {
			if _, err := tls.LoadX509KeyPair(cs.CertFile, cs.KeyFile); err != nil {
				v.errorf("discovery.consul.cert_file", "%s", fileError(err))
			}
		}
	}
	if g := c.Discovery.Gossip; g != nil && !g.Insecure && g.KeyFile != "" {
		if _, err := gossip.LoadKey(g.KeyFile); err != nil {
			v.errorf("discovery.gossip.key_file", "%s", strings.TrimPrefix(err.Error(), "gossip: load key: "))
		}
	}
	for _, f := range c.Edge.stickyFiles() {
		if *f.ptr == "" {
			continue
		}
		if key, err := gossip.LoadKey(*f.ptr); err != nil {
			v.errorf(f.path, "%s", strings.TrimPrefix(err.Error(), "gossip: load key: "))
		} else if len(key) != 32 {
			v.errorf(f.path, "%s holds a %d-byte key; sticky sessions need 32 bytes (`sidemesh keygen`)", *f.ptr, len(key))
		}
	}
	if c.Edge != nil {
		for _, f := range c.Edge.jwksFiles() {
			if *f.ptr == "" {
				continue
			}
			if _, err := authn.NewProvider(authn.ProviderConfig{Name: "check", JWKSFile: *f.ptr}); err != nil {
				v.errorf(f.path, "%s", strings.TrimPrefix(err.Error(), "authn: provider check: "))
			}
		}
		for _, f := range c.Edge.grpcFiles() {
			if *f.ptr != "" {
				v.checkDescriptors(f.path, *f.ptr)
			}
		}
		for _, f := range c.Edge.apiKeyFiles() {
			if *f.ptr == "" {
				continue
			}
			if _, err := authn.LoadKeySet("check", *f.ptr); err != nil {
				v.errorf(f.path, "%s", strings.TrimPrefix(err.Error(), "authn: api keys check: "))
			}
		}
	}
	if a := c.Telemetry.AccessLog; a != AccessLogOff && a != AccessLogStdout && a != AccessLogStderr && a != "" {
		if st, err := os.Stat(filepath.Dir(a)); err != nil || !st.IsDir() {
			v.errorf("telemetry.access_log", "the directory of %s does not exist", a)
		}
	}
	return v.errs
}

// checkCA reports a CA bundle file that holds no certificate.
func (v *validator) checkCA(path, file string) {
	b, err := os.ReadFile(file)
	if err != nil {
		v.errorf(path, "%s", fileError(err))
		return
	}
	n := 0
	for block, rest := pem.Decode(b); block != nil; block, rest = pem.Decode(rest) {
		if block.Type == "CERTIFICATE" {
			if _, err := x509.ParseCertificate(block.Bytes); err != nil {
				v.errorf(path, "%s: a certificate does not parse: %v", file, err)
				return
			}
			n++
		}
	}
	if n == 0 {
		v.errorf(path, "%s holds no PEM certificate", file)
	}
}

// fileError words a file error for a config problem: the path and what
// is wrong, without Go's "open" prefix.
func fileError(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return fmt.Sprintf("%s: %v", pe.Path, pe.Err)
	}
	return err.Error()
}
