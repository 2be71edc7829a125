package proxy_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

// benchBackend answers every request with a short fixed body.
func benchBackend(b *testing.B) string {
	s := startBackend(b, h1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello from the backend\n")
	}))
	return hostPort(s)
}

// benchGet runs parallel GETs of url through c.
func benchGet(b *testing.B, c *http.Client, url string) {
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = 1024
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

// BenchmarkOutboundHTTP: client -> outbound proxy (Handler, Router,
// Upstream, round robin, HTTP/1.1 transport) -> backend, over loopback.
func BenchmarkOutboundHTTP(b *testing.B) {
	addr, _ := startOutbound(b, "catalog", upstreamOpts{}, benchBackend(b))
	benchGet(b, newClient(b, addr, h1), "http://catalog/bench")
}

// BenchmarkDirectHTTP is BenchmarkOutboundHTTP's client talking to the
// backend itself: the baseline the proxy's cost is measured against.
func BenchmarkDirectHTTP(b *testing.B) {
	benchGet(b, newClient(b, benchBackend(b), h1), "http://catalog/bench")
}

func BenchmarkRequestID(b *testing.B) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var n int
		for pb.Next() {
			n += len(proxy.NewRequestID())
		}
		_ = n
	})
}

func BenchmarkBufferPool(b *testing.B) {
	p := proxy.NewBufferPool(1024)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			buf := p.Get()
			buf[0] = 1
			p.Put(buf)
		}
	})
}
