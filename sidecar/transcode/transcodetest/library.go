// Package transcodetest serves a small gRPC Library service for the
// tests of HTTP/JSON transcoding: its proto is compiled at run time (no
// protoc), its methods are served with dynamicpb messages, and its
// server reflection answers from the compiled files, which a test can
// swap for a version with one more method while the server runs.
package transcodetest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/bufbuild/protocompile"
	_ "google.golang.org/genproto/googleapis/api/annotations" // google/api/annotations.proto
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	rpbgrpc "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// libraryProto is the Library service; %s is where the second version
// adds a method.
const libraryProto = `syntax = "proto3";
package library.v1;
import "google/api/annotations.proto";

enum Genre { GENRE_UNSPECIFIED = 0; FICTION = 1; SCIENCE = 2; }

message Author { string name = 1; int32 born_year = 2; }

message Book {
  string name = 1;
  string title = 2;
  int64 isbn = 3;
  Genre genre = 4;
  repeated string tags = 5;
  Author author = 6;
  string shelf_id = 7;
  string note = 8;
}

message Filter { int32 min_year = 1; Genre genre = 2; }

message GetBookRequest {
  string shelf = 1;
  string book = 2;
  bool include_reviews = 3;
  Filter filter = 4;
  repeated string fields = 5;
  int64 revision = 6;
}

message CreateBookRequest { string shelf = 1; Book book = 2; }
message ListBooksRequest { string shelf = 1; int32 count = 2; }
message DeleteBookRequest { string shelf = 1; string book = 2; }
message Shelf { string name = 1; string theme = 2; }
message GetShelfRequest { string name = 1; }
message UpdateBookRequest { Book book = 1; }
message BookEnvelope { Book book = 1; string etag = 2; }

service Library {
  rpc GetBook(GetBookRequest) returns (Book) {
    option (google.api.http) = { get: "/v1/shelves/{shelf}/books/{book}" };
  }
  rpc CreateBook(CreateBookRequest) returns (Book) {
    option (google.api.http) = { post: "/v1/shelves/{shelf}/books" body: "book" };
  }
  rpc ListBooks(ListBooksRequest) returns (stream Book) {
    option (google.api.http) = { get: "/v1/shelves/{shelf}/books:stream" };
  }
  rpc GetShelf(GetShelfRequest) returns (Shelf) {
    option (google.api.http) = {
      get: "/v1/{name=shelves/*}"
      additional_bindings { get: "/v1beta/{name=shelves/*}" }
    };
  }
  rpc UpdateBook(UpdateBookRequest) returns (BookEnvelope) {
    option (google.api.http) = { patch: "/v1/{book.name=shelves/*/books/*}" body: "*" response_body: "book" };
  }
%s}
`

const deleteMethod = `  rpc DeleteBook(DeleteBookRequest) returns (Book) {
    option (google.api.http) = { delete: "/v1/shelves/{shelf}/books/{book}" };
  }
`

// ISBN is the int64 every book the server makes has: above 2^53, so a
// JSON number would lose its last digit.
const ISBN = 9007199254740993

// Compile compiles the Library proto, with the DeleteBook method when
// v2, and returns it as a descriptor set of its one file (its imports
// are linked into the binary).
func Compile(t testing.TB, v2 bool) *descriptorpb.FileDescriptorSet {
	t.Helper()
	extra := ""
	if v2 {
		extra = deleteMethod
	}
	src := fmt.Sprintf(libraryProto, extra)
	c := protocompile.Compiler{Resolver: protocompile.CompositeResolver{
		&protocompile.SourceResolver{Accessor: protocompile.SourceAccessorFromMap(map[string]string{"library.proto": src})},
		protocompile.ResolverFunc(func(path string) (protocompile.SearchResult, error) {
			fd, err := protoregistry.GlobalFiles.FindFileByPath(path)
			if err != nil {
				return protocompile.SearchResult{}, err
			}
			return protocompile.SearchResult{Desc: fd}, nil
		}),
	}}
	files, err := c.Compile(context.Background(), "library.proto")
	if err != nil {
		t.Fatalf("compiling library.proto: %v", err)
	}
	// Through the wire form, so that the options are plain descriptorpb
	// messages, as they would be read from a file.
	b, err := proto.Marshal(protodesc.ToFileDescriptorProto(files[0]))
	if err != nil {
		t.Fatal(err)
	}
	fdp := new(descriptorpb.FileDescriptorProto)
	if err := proto.Unmarshal(b, fdp); err != nil {
		t.Fatal(err)
	}
	return &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{fdp}}
}

// WriteDescriptorSet writes set, with every file it imports (as protoc
// --include_imports does), to dir/library.pb and returns the path.
func WriteDescriptorSet(t testing.TB, dir string, set *descriptorpb.FileDescriptorSet) string {
	t.Helper()
	out := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imps := fd.Imports()
		for i := range imps.Len() {
			add(imps.Get(i).FileDescriptor)
		}
		out.File = append(out.File, protodesc.ToFileDescriptorProto(fd))
	}
	for _, f := range set.File {
		fd, err := protodesc.NewFile(f, protoregistry.GlobalFiles)
		if err != nil {
			t.Fatal(err)
		}
		add(fd)
	}
	b, err := proto.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "library.pb")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Library is the running test server. Its fields are safe for
// concurrent use.
type Library struct {
	// Addr is the server's address.
	Addr string
	// Calls counts the calls of every method but reflection's.
	Calls atomic.Int64
	files atomic.Pointer[protoregistry.Files]
	mu    sync.Mutex
	md    metadata.MD // of the last call
	step  chan struct{}
}

// SetStep makes ListBooks wait for a value on step before each book but
// the first, so a test can prove the client saw a book before the next
// was sent. Nil: no waiting.
func (l *Library) SetStep(step chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.step = step
}

// Start serves the Library (version 1) on ln, with server reflection,
// until the test ends.
func Start(t testing.TB, ln net.Listener) *Library {
	t.Helper()
	l := &Library{Addr: ln.Addr().String()}
	l.SetVersion(t, false)
	srv := grpc.NewServer(grpc.UnknownServiceHandler(l.handle))
	rpbgrpc.RegisterServerReflectionServer(srv, reflection.NewServerV1(reflectionOptions(l)))
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return l
}

func reflectionOptions(l *Library) reflection.ServerOptions {
	return reflection.ServerOptions{Services: services{l}, DescriptorResolver: resolver{l}}
}

// SetVersion serves the proto with (v2) or without DeleteBook from now
// on, for calls and for reflection alike.
func (l *Library) SetVersion(t testing.TB, v2 bool) {
	t.Helper()
	files, err := protodesc.NewFiles(withImports(t, Compile(t, v2)))
	if err != nil {
		t.Fatal(err)
	}
	l.files.Store(files)
}

// withImports adds the files set imports, from this binary.
func withImports(t testing.TB, set *descriptorpb.FileDescriptorSet) *descriptorpb.FileDescriptorSet {
	dir := t.TempDir()
	b, err := os.ReadFile(WriteDescriptorSet(t, dir, set))
	if err != nil {
		t.Fatal(err)
	}
	out := new(descriptorpb.FileDescriptorSet)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Metadata returns the metadata of the last call.
func (l *Library) Metadata() metadata.MD {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.md
}

// handle serves every method of the current files.
func (l *Library) handle(_ any, stream grpc.ServerStream) error {
	full, _ := grpc.MethodFromServerStream(stream)
	svc, method, _ := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	d, err := l.files.Load().FindDescriptorByName(protoreflect.FullName(svc))
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if err != nil || !ok || sd.Methods().ByName(protoreflect.Name(method)) == nil {
		return status.Errorf(codes.Unimplemented, "unknown method %s", full)
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	l.Calls.Add(1)
	in := dynamicpb.NewMessage(md.Input())
	if err := stream.RecvMsg(in); err != nil {
		return err
	}
	meta, _ := metadata.FromIncomingContext(stream.Context())
	l.mu.Lock()
	l.md = meta
	l.mu.Unlock()
	stream.SetHeader(metadata.Pairs("x-library-version", "1"))
	stream.SetTrailer(metadata.Pairs("x-library-served", method))
	get := func(name string) protoreflect.Value {
		return in.Get(md.Input().Fields().ByName(protoreflect.Name(name)))
	}
	book := func(shelf, name string) *dynamicpb.Message {
		b := dynamicpb.NewMessage(md.Output())
		set := func(f string, v protoreflect.Value) { b.Set(md.Output().Fields().ByName(protoreflect.Name(f)), v) }
		set("name", protoreflect.ValueOfString("shelves/"+shelf+"/books/"+name))
		set("isbn", protoreflect.ValueOfInt64(ISBN))
		set("genre", protoreflect.ValueOfEnum(1))
		set("shelf_id", protoreflect.ValueOfString(shelf))
		return b
	}
	switch method {
	case "GetBook":
		shelf, name := get("shelf").String(), get("book").String()
		switch {
		case name == "missing":
			return status.Errorf(codes.NotFound, "book %q not found on shelf %q", name, shelf)
		case shelf == "bad":
			st, _ := status.New(codes.InvalidArgument, "shelf \"bad\" is not a shelf").WithDetails(&errdetails.BadRequest{
				FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "shelf", Description: "must not be bad"}},
			})
			return st.Err()
		}
		b := book(shelf, name)
		filter := get("filter").Message()
		fields := get("fields").List()
		var tags []string
		for i := range fields.Len() {
			tags = append(tags, fields.Get(i).String())
		}
		note := fmt.Sprintf("reviews=%v min_year=%d genre=%d revision=%d fields=%s",
			get("include_reviews").Bool(), filter.Get(filter.Descriptor().Fields().ByName("min_year")).Int(),
			filter.Get(filter.Descriptor().Fields().ByName("genre")).Enum(), get("revision").Int(), strings.Join(tags, ","))
		b.Set(md.Output().Fields().ByName("note"), protoreflect.ValueOfString(note))
		return stream.SendMsg(b)
	case "CreateBook":
		b := get("book").Message()
		out := dynamicpb.NewMessage(md.Output())
		b.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			out.Set(out.Descriptor().Fields().ByNumber(fd.Number()), v)
			return true
		})
		out.Set(md.Output().Fields().ByName("name"), protoreflect.ValueOfString("shelves/"+get("shelf").String()+"/books/new"))
		return stream.SendMsg(out)
	case "ListBooks":
		n := int(get("count").Int())
		l.mu.Lock()
		step := l.step
		l.mu.Unlock()
		for i := range n {
			if i > 0 && step != nil {
				select {
				case <-step:
				case <-stream.Context().Done():
					return stream.Context().Err()
				}
			}
			if err := stream.SendMsg(book(get("shelf").String(), fmt.Sprint(i))); err != nil {
				return err
			}
		}
		return nil
	case "GetShelf":
		out := dynamicpb.NewMessage(md.Output())
		out.Set(md.Output().Fields().ByName("name"), get("name"))
		out.Set(md.Output().Fields().ByName("theme"), protoreflect.ValueOfString("science fiction"))
		return stream.SendMsg(out)
	case "UpdateBook":
		out := dynamicpb.NewMessage(md.Output())
		out.Set(md.Output().Fields().ByName("book"), get("book"))
		out.Set(md.Output().Fields().ByName("etag"), protoreflect.ValueOfString("e1"))
		return stream.SendMsg(out)
	case "DeleteBook":
		return stream.SendMsg(book(get("shelf").String(), get("book").String()))
	}
	return status.Errorf(codes.Unimplemented, "method %s has no implementation", method)
}

// services lists the current files' services for reflection.
type services struct{ l *Library }

func (s services) GetServiceInfo() map[string]grpc.ServiceInfo {
	out := map[string]grpc.ServiceInfo{}
	s.l.files.Load().RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			out[string(sd.FullName())] = grpc.ServiceInfo{Metadata: fd.Path()}
		}
		return true
	})
	return out
}

// resolver answers reflection from the current files.
type resolver struct{ l *Library }

func (r resolver) FindFileByPath(p string) (protoreflect.FileDescriptor, error) {
	return r.l.files.Load().FindFileByPath(p)
}

func (r resolver) FindDescriptorByName(n protoreflect.FullName) (protoreflect.Descriptor, error) {
	return r.l.files.Load().FindDescriptorByName(n)
}

// ReadStream reads the n books of a ListBooks stream of shelf from r, one
// newline-delimited JSON line each, releasing the server's next book
// through step only once the line before has arrived: a transcoder that
// held the stream back would block here. The server must have step set
// (SetStep). It fails t on a line that is not the next book, or on
// anything after the last.
func ReadStream(t testing.TB, r io.Reader, step chan<- struct{}, shelf string, n int) {
	t.Helper()
	rd := bufio.NewReader(r)
	for i := range n {
		if i > 0 {
			step <- struct{}{} // the server sends book i only now
		}
		line, err := rd.ReadBytes('\n')
		var b map[string]any
		if err != nil || json.Unmarshal(line, &b) != nil || b["name"] != fmt.Sprintf("shelves/%s/books/%d", shelf, i) {
			t.Fatalf("line %d of the stream: %q %v", i, line, err)
		}
	}
	if rest, _ := io.ReadAll(rd); len(rest) != 0 {
		t.Errorf("after the last book: %q", rest)
	}
}
