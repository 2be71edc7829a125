package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// grpcTestServer implements UnaryCall and FullDuplexCall of the gRPC
// interop TestService: it echoes payloads, reports the :authority it was
// called with, sets header and trailer metadata, and fails with the
// status a request asks for.
type grpcTestServer struct {
	testpb.UnimplementedTestServiceServer
}

func (grpcTestServer) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	grpc.SetHeader(ctx, metadata.Pairs("x-header", "unary"))
	if st := req.GetResponseStatus(); st.GetCode() != 0 {
		grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "failed", "x-trailer-bin", "\x00\x01"))
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "done"))
	md, _ := metadata.FromIncomingContext(ctx)
	return &testpb.SimpleResponse{Payload: req.GetPayload(), Hostname: firstOf(md[":authority"])}, nil
}

func (grpcTestServer) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	n := 0
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			stream.SetTrailer(metadata.Pairs("x-count", strconv.Itoa(n)))
			return nil
		}
		if err != nil {
			return err
		}
		if st := req.GetResponseStatus(); st.GetCode() != 0 {
			stream.SetTrailer(metadata.Pairs("x-count", strconv.Itoa(n)))
			return status.Error(codes.Code(st.GetCode()), st.GetMessage())
		}
		n++
		body := append([]byte("echo:"), req.GetPayload().GetBody()...)
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}); err != nil {
			return err
		}
	}
}

func firstOf(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

// startGRPCBackend serves grpcTestServer on loopback.
func startGRPCBackend(t testing.TB) string {
	t.Helper()
	ln := listen(t)
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, grpcTestServer{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(ln)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return ln.Addr().String()
}

// grpcClient returns a TestService client for target whose connections
// all go to the proxy at addr, as an app's would go to its sidecar.
func grpcClient(t testing.TB, addr, target string) testpb.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

// startGRPCOutbound is the usual gRPC setup: client -> outbound proxy (h2c)
// -> upstream speaking HTTP/2 -> grpc-go server.
func startGRPCOutbound(t testing.TB) testpb.TestServiceClient {
	t.Helper()
	backend := startGRPCBackend(t)
	addr, _ := startOutbound(t, "catalog", upstreamOpts{HTTP2: true}, backend)
	return grpcClient(t, addr, "catalog.mesh:9000")
}

func TestGRPCUnary(t *testing.T) {
	client := startGRPCOutbound(t)
	ctx := testCtx(t, testTimeout)
	for i := range 3 {
		var header, trailer metadata.MD
		body := []byte(fmt.Sprintf("ping %d", i))
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}},
			grpc.Header(&header), grpc.Trailer(&trailer))
		if err != nil {
			t.Fatalf("UnaryCall: %v", err)
		}
		if string(resp.GetPayload().GetBody()) != string(body) {
			t.Errorf("payload = %q, want %q", resp.GetPayload().GetBody(), body)
		}
		if resp.GetHostname() != "catalog.mesh:9000" {
			t.Errorf("backend :authority = %q", resp.GetHostname())
		}
		if firstOf(header["x-header"]) != "unary" || firstOf(trailer["x-trailer"]) != "done" {
			t.Errorf("header %v trailer %v", header, trailer)
		}
	}
}

func TestGRPCErrorStatusAndTrailers(t *testing.T) {
	client := startGRPCOutbound(t)
	var header, trailer metadata.MD
	_, err := client.UnaryCall(testCtx(t, testTimeout), &testpb.SimpleRequest{
		ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "no such item: 42"},
	}, grpc.Header(&header), grpc.Trailer(&trailer))
	st, _ := status.FromError(err)
	if st.Code() != codes.NotFound || st.Message() != "no such item: 42" {
		t.Errorf("status = %v, want NotFound %q", err, "no such item: 42")
	}
	if firstOf(trailer["x-trailer"]) != "failed" || firstOf(trailer["x-trailer-bin"]) != "\x00\x01" {
		t.Errorf("trailer = %v", trailer)
	}
	if firstOf(header["x-header"]) != "unary" {
		t.Errorf("header = %v", header)
	}
}

func TestGRPCBidiStreaming(t *testing.T) {
	backend := startGRPCBackend(t)
	addr, bal := startOutbound(t, "catalog", upstreamOpts{HTTP2: true}, backend)
	client := grpcClient(t, addr, "catalog")

	for _, tc := range []struct {
		name    string
		failAt  int // after this many echoes the client asks for an error
		wantErr codes.Code
	}{
		{name: "clean end", failAt: -1, wantErr: codes.OK},
		{name: "error after messages", failAt: 3, wantErr: codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t, testTimeout)
			stream, err := client.FullDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// Strictly interleaved: the next message goes out only after
			// the previous echo came back, so nothing may sit in a buffer.
			const rounds = 10
			for i := range rounds {
				if i == tc.failAt {
					break
				}
				msg := fmt.Sprintf("msg %d", i)
				if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
				resp, err := stream.Recv()
				if err != nil {
					t.Fatalf("recv %d: %v", i, err)
				}
				if got := string(resp.GetPayload().GetBody()); got != "echo:"+msg {
					t.Fatalf("recv %d = %q", i, got)
				}
				if i == 0 {
					if n := bal.Endpoints()[0].InFlight(); n != 1 {
						t.Errorf("InFlight during the stream = %d, want 1", n)
					}
				}
			}
			sent := rounds
			if tc.failAt >= 0 {
				sent = tc.failAt
				err = stream.Send(&testpb.StreamingOutputCallRequest{
					ResponseStatus: &testpb.EchoStatus{Code: int32(tc.wantErr), Message: "stream says no"}})
				if err != nil {
					t.Fatal(err)
				}
			} else if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			_, err = stream.Recv()
			if tc.wantErr == codes.OK {
				if !errors.Is(err, io.EOF) {
					t.Errorf("end of stream: %v, want EOF", err)
				}
			} else if st, _ := status.FromError(err); st.Code() != tc.wantErr || st.Message() != "stream says no" {
				t.Errorf("end of stream: %v, want %v %q", err, tc.wantErr, "stream says no")
			}
			if got := firstOf(stream.Trailer()["x-count"]); got != strconv.Itoa(sent) {
				t.Errorf("trailer x-count = %q, want %d", got, sent)
			}
			waitIdle(t, bal)
		})
	}
}

// TestGRPCProxyErrorIsAGRPCStatus: when the proxy answers itself (the
// endpoint refuses connections), a gRPC caller gets a gRPC status its
// library reads — UNAVAILABLE, which gRPC clients may retry — with
// sidemesh's reason, not an HTTP 503 the library reports as a protocol
// error.
func TestGRPCProxyErrorIsAGRPCStatus(t *testing.T) {
	addr, _ := startOutbound(t, "catalog", upstreamOpts{HTTP2: true}, deadAddr(t))
	client := grpcClient(t, addr, "catalog.mesh:9000")
	var trailer metadata.MD // a trailers-only response: its headers are the trailer
	_, err := client.UnaryCall(testCtx(t, testTimeout), &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable || !strings.HasPrefix(st.Message(), "sidemesh: upstream \"catalog\"") {
		t.Fatalf("got %v (status %v): want UNAVAILABLE from sidemesh", err, st)
	}
	if v := firstOf(trailer["x-sidemesh-error"]); v != "connect_failure" {
		t.Errorf("x-sidemesh-error = %q, want connect_failure", v)
	}
}
