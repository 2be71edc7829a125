package identity

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// BenchmarkNewConnection measures what mutual TLS adds to a new
// connection: a TCP connect and close (plain), against a TCP connect, a
// full TLS 1.3 handshake with client certificates, chain and SPIFFE
// checks on both sides, and close (mtls). b.N connections, one at a time.
func BenchmarkNewConnection(b *testing.B) {
	ca, err := NewTestCA("mesh.local")
	if err != nil {
		b.Fatal(err)
	}
	server, _ := ca.Bundle("cart", "default")
	client, _ := ca.Bundle("web", "default")
	ss, cs := NewStaticSource(), NewStaticSource()
	ss.Set(server)
	cs.Set(client)

	for _, tc := range []struct {
		name string
		srv  *tls.Config
		cli  *tls.Config
	}{
		{"plain", nil, nil},
		{"mtls", ServerConfig(ss), ClientConfig(cs, "cart", "")},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						if tc.srv != nil {
							tc := tls.Server(c, tc.srv)
							if tc.Handshake() != nil {
								return
							}
							c = tc
						}
						c.Write([]byte{1})
					}()
				}
			}()
			buf := make([]byte, 1)
			b.ResetTimer()
			for b.Loop() {
				c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				if tc.cli != nil {
					c = tls.Client(c, tc.cli)
				}
				if _, err := c.Read(buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
		})
	}
}
