package edge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/transcode/transcodetest"
)

// startTranscodingEdge starts the Library and an edge whose route
// /v1/shelves transcodes to it, with grpc (the route's grpc section
// without its service).
func startTranscodingEdge(t *testing.T, grpc string) (*transcodetest.Library, string) {
	t.Helper()
	lib := transcodetest.Start(t, meshtest.Listen(t))
	ln := meshtest.Listen(t)
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: library
      matches: [{ path: { prefix: /v1/shelves } }]
      grpc: { service: library, %s }
upstreams:
  - { service: library, protocol: grpc, endpoints: [{ address: %s }] }
`, ln.Addr(), grpc, lib.Addr), ln)
	return lib, "http://" + ln.Addr().String()
}

// jsonCall sends a request and decodes the JSON object answered.
func jsonCall(t *testing.T, c *http.Client, method, url, body string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: %d, not a JSON object: %q", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode, out
}

func TestGRPCTranscodeThroughEdge(t *testing.T) {
	lib, base := startTranscodingEdge(t, "reflection: true, max_request_bytes: 256")
	c := newClient(t)

	t.Run("GET binds path and query", func(t *testing.T) {
		code, got := jsonCall(t, c, "GET", base+"/v1/shelves/s1/books/b1?include_reviews=true&filter.min_year=1990&fields=a&fields=b", "")
		if code != 200 || got["name"] != "shelves/s1/books/b1" || got["note"] != "reviews=true min_year=1990 genre=0 revision=0 fields=a,b" {
			t.Errorf("%d %v", code, got)
		}
		if got["isbn"] != fmt.Sprint(transcodetest.ISBN) || got["genre"] != "FICTION" || got["shelfId"] != "s1" {
			t.Errorf("int64 as a string, enum by name, json_name: %v", got)
		}
	})
	t.Run("POST with body and int64 round trip", func(t *testing.T) {
		code, got := jsonCall(t, c, "POST", base+"/v1/shelves/s1/books", `{"title":"Dune","isbn":"9223372036854775807"}`)
		if code != 200 || got["title"] != "Dune" || got["isbn"] != "9223372036854775807" || got["name"] != "shelves/s1/books/new" {
			t.Errorf("%d %v", code, got)
		}
	})
	t.Run("NOT_FOUND and INVALID_ARGUMENT", func(t *testing.T) {
		code, got := jsonCall(t, c, "GET", base+"/v1/shelves/s1/books/missing", "")
		if code != 404 || got["code"] != float64(5) || !strings.Contains(fmt.Sprint(got["message"]), "not found") {
			t.Errorf("NOT_FOUND: %d %v", code, got)
		}
		code, got = jsonCall(t, c, "GET", base+"/v1/shelves/bad/books/b", "")
		if code != 400 || got["code"] != float64(3) || len(got["details"].([]any)) != 1 {
			t.Errorf("INVALID_ARGUMENT: %d %v", code, got)
		}
	})
	t.Run("oversized request refused before anything is sent", func(t *testing.T) {
		before := lib.Calls.Load()
		code, got := jsonCall(t, c, "POST", base+"/v1/shelves/s1/books", `{"title":"`+strings.Repeat("x", 300)+`"}`)
		if code != 413 {
			t.Errorf("%d %v, want 413", code, got)
		}
		if n := lib.Calls.Load() - before; n != 0 {
			t.Errorf("the server saw %d calls", n)
		}
	})
	t.Run("server streaming flushed per message", func(t *testing.T) {
		step := make(chan struct{})
		lib.SetStep(step)
		defer lib.SetStep(nil)
		resp, err := c.Get(base + "/v1/shelves/s1/books:stream?count=3")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		transcodetest.ReadStream(t, resp.Body, step, "s1", 3)
	})
	t.Run("a method added to the backend is found without a restart", func(t *testing.T) {
		if code, got := jsonCall(t, c, "DELETE", base+"/v1/shelves/s1/books/b1", ""); code != 404 {
			t.Fatalf("before: %d %v, want 404", code, got)
		}
		lib.SetVersion(t, true)
		// A miss fetches the methods again at most once a second.
		meshtest.Eventually(t, 5*time.Second, "the edge to find DeleteBook", func() error {
			if code, got := jsonCall(t, c, "DELETE", base+"/v1/shelves/s1/books/b1", ""); code != 200 || got["name"] != "shelves/s1/books/b1" {
				return fmt.Errorf("after the backend gained DeleteBook: %d %v", code, got)
			}
			return nil
		})
	})
}

func TestGRPCTranscodeDescriptorSetFile(t *testing.T) {
	file := transcodetest.WriteDescriptorSet(t, t.TempDir(), transcodetest.Compile(t, false))
	_, base := startTranscodingEdge(t, fmt.Sprintf("descriptors: %q", file))
	code, got := jsonCall(t, newClient(t), "GET", base+"/v1/shelves/s1/books/b1?filter.genre=SCIENCE", "")
	if code != 200 || got["name"] != "shelves/s1/books/b1" || !strings.Contains(fmt.Sprint(got["note"]), "genre=2") || got["isbn"] != fmt.Sprint(transcodetest.ISBN) {
		t.Errorf("%d %v", code, got)
	}
}

// BenchmarkGRPCTranscodeUnary: one unary call of about 1 KiB each way
// through one edge, transcoded from HTTP/JSON against the same call made
// by a gRPC client through a plain gRPC route. Allocations are the
// whole process's: client, edge and server.
func BenchmarkGRPCTranscodeUnary(b *testing.B) {
	lib := transcodetest.Start(b, meshtest.Listen(b))
	ln := meshtest.Listen(b)
	cfg, err := config.Parse("bench.yaml", []byte(fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - { name: json, matches: [{ path: { prefix: /v1/shelves } }], grpc: { service: library, reflection: true } }
    - { name: grpc, matches: [{ path: { prefix: /library.v1.Library } }], backends: [{ service: library }] }
upstreams:
  - { service: library, protocol: grpc, endpoints: [{ address: %s }] }
`, ln.Addr(), lib.Addr)))
	if err != nil {
		b.Fatal(err)
	}
	s := sidecar.New(cfg, slog.New(slog.DiscardHandler), sidecar.WithListeners(ln))
	if err := s.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	title := strings.Repeat("x", 1000)

	b.Run("transcoded_json", func(b *testing.B) {
		tr := &http.Transport{MaxIdleConnsPerHost: 4}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr}
		body := `{"title":"` + title + `","isbn":"9007199254740993"}`
		b.ReportAllocs()
		for b.Loop() {
			resp, err := c.Post("http://"+ln.Addr().String()+"/v1/shelves/s1/books", "application/json", strings.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || n < 1000 {
				b.Fatalf("%d, %d bytes", resp.StatusCode, n)
			}
		}
	})
	b.Run("grpc_proxied", func(b *testing.B) {
		set := transcodetest.Compile(b, false)
		files, err := protodesc.NewFiles(&descriptorpb.FileDescriptorSet{File: append([]*descriptorpb.FileDescriptorProto{
			protodesc.ToFileDescriptorProto(annotations.File_google_api_annotations_proto),
			protodesc.ToFileDescriptorProto(annotations.File_google_api_http_proto),
			protodesc.ToFileDescriptorProto(descriptorpb.File_google_protobuf_descriptor_proto),
		}, set.File...)})
		if err != nil {
			b.Fatal(err)
		}
		d, _ := files.FindDescriptorByName("library.v1.CreateBookRequest")
		in := dynamicpb.NewMessage(d.(protoreflect.MessageDescriptor))
		in.Set(in.Descriptor().Fields().ByName("shelf"), protoreflect.ValueOfString("s1"))
		book := in.Mutable(in.Descriptor().Fields().ByName("book")).Message()
		book.Set(book.Descriptor().Fields().ByName("title"), protoreflect.ValueOfString(title))
		book.Set(book.Descriptor().Fields().ByName("isbn"), protoreflect.ValueOfInt64(transcodetest.ISBN))
		cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Close()
		out := dynamicpb.NewMessage(book.Descriptor())
		b.ReportAllocs()
		for b.Loop() {
			if err := cc.Invoke(context.Background(), "/library.v1.Library/CreateBook", in, out); err != nil {
				b.Fatal(err)
			}
		}
	})
}
