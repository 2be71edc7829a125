package transcode

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/transcode/transcodetest"
)

// BenchmarkTranscodeUnary: the transcoder's own cost for one unary call
// of about 1 KiB each way (match, JSON to protobuf, the exchange's
// goroutine and pipe, protobuf to JSON), against a handler that answers
// a canned gRPC response with no network.
func BenchmarkTranscodeUnary(b *testing.B) {
	d, err := Compile(transcodetest.Compile(b, false))
	if err != nil {
		b.Fatal(err)
	}
	bk, _ := d.t.match(http.MethodPost, "/v1/shelves/s1/books")
	title := strings.Repeat("x", 1000)
	out := dynamicpb.NewMessage(bk.rpc.Output())
	out.Set(out.Descriptor().Fields().ByName("title"), protoreflect.ValueOfString(title))
	out.Set(out.Descriptor().Fields().ByName("isbn"), protoreflect.ValueOfInt64(transcodetest.ISBN))
	wire, _ := proto.Marshal(out)
	resp := frame(wire)
	backend := pipeline.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(http.StatusOK)
		w.Write(resp)
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
		return nil
	})
	h := New(Options{Service: "library", Handler: backend, Descriptors: d})
	body := `{"title":"` + title + `","isbn":"9007199254740993"}`
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, "/v1/shelves/s1/books", strings.NewReader(body))
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r); err != nil || w.Code != 200 {
			b.Fatalf("%d %v %s", w.Code, err, w.Body)
		}
	}
}
