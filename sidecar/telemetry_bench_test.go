package sidecar

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

// otlpSinkEnv, set, makes the test binary an OTLP collector that accepts
// and drops every export (see TestMain).
const otlpSinkEnv = "SIDEMESH_TEST_OTLP_SINK"

// sink is an OTLP trace service that accepts everything and keeps nothing.
type sink struct {
	coltracepb.UnimplementedTraceServiceServer
}

func (sink) Export(context.Context, *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// runOTLPSink serves sink on a loopback port, prints the address on
// stdout, and returns when stdin closes (the parent went away).
func runOTLPSink() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, sink{})
	go srv.Serve(ln)
	fmt.Println(ln.Addr().String())
	io.Copy(io.Discard, os.Stdin)
	srv.Stop()
}

// startOTLPSink starts the sink process and returns its address.
func startOTLPSink(b *testing.B) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), otlpSinkEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("OTLP sink process: %v", err)
	}
	return strings.TrimSpace(addr)
}

// BenchmarkTracingCost measures requests through a sidecar's outbound
// listener to a loopback backend, in parallel, with tracing off and with
// tracing on at sample ratio 0 and 1, spans exported over OTLP gRPC to a
// collector in another process (this test binary, re-executed as a sink
// that accepts and drops them), so that receiving them is not counted.
// Compare the sub-benchmarks of one run: requests per second is 1e9 /
// ns/op.
func BenchmarkTracingCost(b *testing.B) {
	backend := namedBackend(b, "ok")
	collector := startOTLPSink(b)
	for _, tc := range []struct{ name, telemetry string }{
		{"off", ""},
		{"ratio=0", fmt.Sprintf("telemetry: { tracing: { otlp_endpoint: %s, sample_ratio: 0 } }", collector)},
		{"ratio=1", fmt.Sprintf("telemetry: { tracing: { otlp_endpoint: %s, sample_ratio: 1 } }", collector)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			out := listenAddr(b)
			cfg, err := config.Parse("bench.yaml", []byte(fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, mtls: false, endpoints: [{ address: %s }] }]
%s
`, out, backend, tc.telemetry)))
			if err != nil {
				b.Fatal(err)
			}
			s := New(cfg, quietLogger(), handedFor(cfg))
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
