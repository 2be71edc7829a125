package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

// Certificates are a TLS listener's certificates, chosen by SNI and
// reloaded when their files change: new handshakes get the new ones,
// established connections keep theirs. Safe for concurrent use.
type Certificates struct {
	files    []config.EdgeCertificate
	interval time.Duration
	log      *slog.Logger
	set      atomic.Pointer[certSet]
}

// certSet is one generation of loaded certificates, by name.
type certSet struct {
	exact map[string]*tls.Certificate
	// wild is keyed by what follows "*." in a wildcard name: it covers
	// exactly one more label (RFC 6125).
	wild  map[string]*tls.Certificate
	def   *tls.Certificate
	stamp []fileStamp
}

// fileStamp tells whether a file changed.
type fileStamp struct {
	mod  time.Time
	size int64
}

// LoadCertificates loads files; every pair must load and hold at least
// one DNS name (or be the default). interval is how often Run checks the
// files; log receives reloads and failures.
func LoadCertificates(files []config.EdgeCertificate, interval time.Duration, log *slog.Logger) (*Certificates, error) {
	c := &Certificates{files: files, interval: interval, log: log}
	set, err := c.load()
	if err != nil {
		return nil, err
	}
	c.set.Store(set)
	return c, nil
}

func (c *Certificates) load() (*certSet, error) {
	set := &certSet{exact: map[string]*tls.Certificate{}, wild: map[string]*tls.Certificate{}}
	for _, f := range c.files {
		pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("edge certificate %s: %w", f.CertFile, err)
		}
		cert := &pair
		names := pair.Leaf.DNSNames
		if len(names) == 0 && !f.Default {
			return nil, fmt.Errorf("edge certificate %s names no DNS host: SNI could never choose it (mark it default, or issue it for a name)", f.CertFile)
		}
		for _, n := range names {
			n = strings.ToLower(n)
			if suffix, ok := strings.CutPrefix(n, "*."); ok {
				if _, taken := set.wild[suffix]; !taken {
					set.wild[suffix] = cert
				}
			} else if _, taken := set.exact[n]; !taken {
				set.exact[n] = cert
			}
		}
		if f.Default {
			set.def = cert
		}
		for _, p := range []string{f.CertFile, f.KeyFile} {
			st, err := os.Stat(p)
			if err != nil {
				return nil, err
			}
			set.stamp = append(set.stamp, fileStamp{st.ModTime(), st.Size()})
		}
	}
	return set, nil
}

// changed reports whether any file differs from set's stamps.
func (c *Certificates) changed(set *certSet) bool {
	i := 0
	for _, f := range c.files {
		for _, p := range []string{f.CertFile, f.KeyFile} {
			st, err := os.Stat(p)
			if err != nil || i >= len(set.stamp) || !st.ModTime().Equal(set.stamp[i].mod) || st.Size() != set.stamp[i].size {
				return true
			}
			i++
		}
	}
	return false
}

// Run reloads the certificates whenever their files change, until ctx is
// done. A set that fails to load (a key written before its certificate)
// is logged and the previous one kept; the next check tries again.
func (c *Certificates) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !c.changed(c.set.Load()) {
			continue
		}
		set, err := c.load()
		if err != nil {
			if !failing {
				c.log.Warn("edge certificates changed but do not load; keeping the previous ones", "err", err)
			}
			failing = true
			continue
		}
		failing = false
		c.set.Store(set)
		c.log.Info("edge certificates reloaded", "certificates", len(c.files))
	}
}

// errNoCertificate refuses a handshake no certificate covers.
var errNoCertificate = errors.New("edge: no certificate for this server name, and no default")

// ForName returns the certificate a handshake for name gets: an exact
// DNS name, else a wildcard one label up, else the default; nil when none
// applies.
func (c *Certificates) ForName(name string) *tls.Certificate {
	set := c.set.Load()
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if cert := set.exact[name]; cert != nil {
		return cert
	}
	if i := strings.IndexByte(name, '.'); i >= 0 {
		if cert := set.wild[name[i+1:]]; cert != nil {
			return cert
		}
	}
	return set.def
}

// TLSConfig returns the server TLS config choosing certificates by SNI,
// offering h2 and http/1.1, with minVersion ("1.2" or "1.3").
func (c *Certificates) TLSConfig(minVersion string) *tls.Config {
	min := uint16(tls.VersionTLS12)
	if minVersion == config.TLSVersion13 {
		min = tls.VersionTLS13
	}
	return &tls.Config{
		MinVersion: min,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if cert := c.ForName(hello.ServerName); cert != nil {
				return cert, nil
			}
			return nil, errNoCertificate
		},
	}
}
