package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/sidemesh/sidemesh/telemetry/otlptest"
)

// echoService is the gRPC interop TestService's UnaryCall (which fails
// with the status asked for) and FullDuplexCall (which echoes and reports
// the message count in a trailer).
type echoService struct {
	testpb.UnimplementedTestServiceServer
}

func (echoService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if st := req.GetResponseStatus(); st.GetCode() != 0 {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

func (echoService) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	for n := 0; ; n++ {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			stream.SetTrailer(metadata.Pairs("x-count", strconv.Itoa(n)))
			return nil
		}
		if err != nil {
			return err
		}
		body := append([]byte("echo:"), req.GetPayload().GetBody()...)
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}); err != nil {
			return err
		}
	}
}

// TestGRPCThroughTracedSidecars runs a bidirectional stream and a failing
// unary call through client → sidecar A → sidecar B → gRPC app with
// tracing on: messages, trailers and status codes arrive intact through
// both sidecars' telemetry, and the stream is one trace across both.
func TestGRPCThroughTracedSidecars(t *testing.T) {
	rcv := otlptest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, echoService{})
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	appPort := ln.Addr().(*net.TCPAddr).Port

	inB, outA := listenAddr(t), listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: echo, port: %d, protocol: grpc }
inbound: { listen: %s }
outbound: { listen: %s }
telemetry: { tracing: { otlp_endpoint: %s } }
`, appPort, inB, listenAddr(t), rcv.GRPCAddr())))
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: echo, protocol: grpc, endpoints: [{ address: %s }] }]
telemetry: { tracing: { otlp_endpoint: %s } }
`, outA, inB, rcv.GRPCAddr())))

	conn, err := grpc.NewClient(outA, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		msg := fmt.Sprint("m", i)
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil || string(resp.GetPayload().GetBody()) != "echo:"+msg {
			t.Fatalf("message %d: %v %v", i, resp, err)
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("end of stream: %v", err)
	}
	if got := stream.Trailer().Get("x-count"); len(got) != 1 || got[0] != "5" {
		t.Errorf("trailer x-count = %v, want [5]", got)
	}

	_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "no such item"}})
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "no such item" {
		t.Errorf("unary error = %v, want NotFound: no such item", err)
	}

	// The stream's trace: A's server and client spans, B's server and
	// client spans, one trace id.
	spans := rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		n := 0
		for _, sp := range s {
			if sp.Attributes["url.path"] == "/grpc.testing.TestService/FullDuplexCall" {
				n++
			}
		}
		return n == 2 // the two server spans carry url.path
	})
	var traceID string
	for _, s := range spans {
		if s.Attributes["url.path"] == "/grpc.testing.TestService/FullDuplexCall" && s.Resource["service.name"] == "sidemesh" {
			traceID = s.TraceID
		}
	}
	tr := spansOf(rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool { return len(spansOf(s, traceID)) >= 4 }), traceID)
	if len(tr) != 4 {
		t.Fatalf("the stream's trace has %d spans, want 4:%s", len(tr), describeSpans(tr))
	}
	for _, s := range tr {
		if s.Attributes["http.request.method"] != "POST" || s.Attributes["network.protocol.version"] != nil && s.Attributes["network.protocol.version"] != "2" {
			t.Errorf("span %s %s: attrs %v", s.Kind, s.SpanID, s.Attributes)
		}
		if s.Kind == tracepb.Span_SPAN_KIND_SERVER && s.Attributes["http.response.status_code"] != int64(200) {
			t.Errorf("server span status %v, want 200 (gRPC statuses travel in trailers)", s.Attributes["http.response.status_code"])
		}
	}
}

// TestWebSocketThroughTracedSidecars: a WebSocket upgrade crosses both
// sidecars with tracing and an access log on, and messages flow both
// ways.
func TestWebSocketThroughTracedSidecars(t *testing.T) {
	rcv := otlptest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, data, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo:"), data...)); err != nil {
				return
			}
		}
	})}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })

	inB, outA := listenAddr(t), listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: ws, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
telemetry: { tracing: { otlp_endpoint: %s }, access_log: %s }
`, ln.Addr().(*net.TCPAddr).Port, inB, listenAddr(t), rcv.GRPCAddr(), t.TempDir()+"/access.log")))
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: ws, endpoints: [{ address: %s }] }]
telemetry: { tracing: { otlp_endpoint: %s } }
`, outA, inB, rcv.GRPCAddr())))

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+outA+"/chat", &websocket.DialOptions{Host: "ws"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	for i := range 3 {
		msg := fmt.Sprint("hello ", i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != "echo:"+msg {
			t.Fatalf("message %d: %q %v", i, got, err)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
	rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		n := 0
		for _, sp := range s {
			if sp.Kind == tracepb.Span_SPAN_KIND_SERVER && sp.Attributes["http.response.status_code"] == int64(101) {
				n++
			}
		}
		return n == 2 // one server span per sidecar, status 101
	})
}
