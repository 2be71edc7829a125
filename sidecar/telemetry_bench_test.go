package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/telemetry/otlptest"
)

// BenchmarkTracingCost measures requests through a sidecar's outbound
// listener to a loopback backend, in parallel, with tracing off and with
// tracing on at sample ratio 0 and 1 (spans exported over OTLP gRPC to an
// in-process receiver). Compare the sub-benchmarks of one run: ns/op is
// the inverse of requests per second per core.
func BenchmarkTracingCost(b *testing.B) {
	backend := namedBackend(b, "ok")
	rcv := otlptest.Start(b)
	for _, tc := range []struct{ name, telemetry string }{
		{"off", ""},
		{"ratio=0", fmt.Sprintf("telemetry: { tracing: { otlp_endpoint: %s, sample_ratio: 0 } }", rcv.GRPCAddr())},
		{"ratio=1", fmt.Sprintf("telemetry: { tracing: { otlp_endpoint: %s, sample_ratio: 1 } }", rcv.GRPCAddr())},
	} {
		b.Run(tc.name, func(b *testing.B) {
			out := freeAddr(b)
			cfg, err := config.Parse("bench.yaml", []byte(fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, mtls: false, endpoints: [{ address: %s }] }]
%s
`, out, backend, tc.telemetry)))
			if err != nil {
				b.Fatal(err)
			}
			s := New(cfg, quietLogger())
			if err := s.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				s.Shutdown(ctx)
			}()
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest("GET", "http://"+out+"/", nil)
					req.Host = "svc"
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}
