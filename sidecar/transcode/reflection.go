package transcode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// The reflection methods, newest first. v1alpha's messages are v1's on
// the wire, so both are read with v1's types.
var reflectionPaths = []string{
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}

// maxReflectionBytes bounds one reflection response message.
const maxReflectionBytes = 16 << 20

// fetchReflection asks service's gRPC server reflection, through h, for
// its services and the files that define them, and compiles their
// bindings. Each step is one call of the bidirectional stream with
// every request sent at once: the server answers each in turn and ends
// the stream when the requests end.
func fetchReflection(ctx context.Context, h pipeline.Handler, service string) (*table, error) {
	var lastErr error
	for _, path := range reflectionPaths {
		t, err := reflectVia(ctx, h, service, path)
		if err == nil {
			return t, nil
		}
		lastErr = err
		var se *statusError
		if !errors.As(err, &se) || se.code != codes.Unimplemented {
			break
		}
	}
	return nil, fmt.Errorf("reflection of service %q: %w", service, lastErr)
}

// statusError is a reflection call that ended with a gRPC status other
// than OK.
type statusError struct {
	code codes.Code
	msg  string
}

func (e *statusError) Error() string { return fmt.Sprintf("%s: %s", e.code, e.msg) }

func reflectVia(ctx context.Context, h pipeline.Handler, service, path string) (*table, error) {
	list, err := reflectCall(ctx, h, service, path, []*rpb.ServerReflectionRequest{
		{MessageRequest: &rpb.ServerReflectionRequest_ListServices{ListServices: "*"}},
	})
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, errors.New("the server answered no list of services")
	}
	var reqs []*rpb.ServerReflectionRequest
	for _, s := range list[0].GetListServicesResponse().GetService() {
		if strings.HasPrefix(s.GetName(), "grpc.reflection.") {
			continue
		}
		reqs = append(reqs, &rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: s.GetName()}})
	}
	if len(reqs) == 0 {
		return nil, errors.New("the server lists no service")
	}
	files := map[string]*descriptorpb.FileDescriptorProto{}
	var order []string
	asked := map[string]bool{}
	for round := 0; len(reqs) > 0; round++ {
		if round == 8 {
			return nil, errors.New("the server's files import more levels than expected")
		}
		resps, err := reflectCall(ctx, h, service, path, reqs)
		if err != nil {
			return nil, err
		}
		for _, r := range resps {
			for _, raw := range r.GetFileDescriptorResponse().GetFileDescriptorProto() {
				fd := new(descriptorpb.FileDescriptorProto)
				if err := proto.Unmarshal(raw, fd); err != nil {
					return nil, fmt.Errorf("a file descriptor does not parse: %w", err)
				}
				if files[fd.GetName()] == nil {
					files[fd.GetName()] = fd
					order = append(order, fd.GetName())
				}
			}
		}
		// Ask for the imports not sent yet; those the server does not
		// have are taken from this binary (google/api, the well-known
		// types) when building.
		reqs = nil
		for _, name := range order {
			for _, dep := range files[name].GetDependency() {
				if files[dep] != nil || asked[dep] {
					continue
				}
				if _, err := protoregistry.GlobalFiles.FindFileByPath(dep); err == nil {
					continue
				}
				asked[dep] = true
				reqs = append(reqs, &rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_FileByFilename{FileByFilename: dep}})
			}
		}
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, name := range order {
		set.File = append(set.File, files[name])
	}
	reg, err := buildFiles(set)
	if err != nil {
		return nil, err
	}
	t, err := compile(reg)
	if err != nil {
		return nil, err
	}
	t.loaded = time.Now()
	return t, nil
}

// reflectCall sends reqs on one reflection stream and returns the
// response to each.
func reflectCall(ctx context.Context, h pipeline.Handler, service, path string, reqs []*rpb.ServerReflectionRequest) ([]*rpb.ServerReflectionResponse, error) {
	var frames []byte
	for _, r := range reqs {
		b, err := proto.Marshal(r)
		if err != nil {
			return nil, err
		}
		frames = append(frames, frame(b)...)
	}
	ctx = pipeline.WithInfo(ctx, &pipeline.Info{Start: time.Now(), Service: service})
	x, err := call(ctx, h, service, path, frames, nil)
	if err != nil {
		return nil, err
	}
	defer x.close()
	status, hdr, err := x.head()
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK || !isGRPC(hdr.Get("Content-Type")) {
		return nil, fmt.Errorf("%s answered HTTP %d %q, not gRPC", path, status, hdr.Get("Content-Type"))
	}
	var out []*rpb.ServerReflectionResponse
	for {
		raw, err := x.next(maxReflectionBytes)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		r := new(rpb.ServerReflectionResponse)
		if err := proto.Unmarshal(raw, r); err != nil {
			return nil, fmt.Errorf("a reflection response does not parse: %w", err)
		}
		if e := r.GetErrorResponse(); e != nil && r.GetFileDescriptorResponse() == nil {
			if codes.Code(e.GetErrorCode()) == codes.NotFound {
				continue // a file the server does not have
			}
			return nil, &statusError{code: codes.Code(e.GetErrorCode()), msg: e.GetErrorMessage()}
		}
		out = append(out, r)
	}
	if st := x.status(); st.code != codes.OK || st.missing {
		return nil, &statusError{code: st.code, msg: st.msg}
	}
	return out, nil
}
