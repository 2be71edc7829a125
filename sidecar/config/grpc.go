package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/transcode"
)

// GRPCTranscode makes a route answer HTTP/JSON requests by calling the
// gRPC methods of a mesh service, bound to paths by their
// google.api.http options (GET /v1/shelves/{shelf}/books/{book}), instead
// of passing the request on. The calls go through the service's
// balancer, breakers, retries and mutual TLS as a backend's would. See
// docs/edge.md, "HTTP/JSON to gRPC".
type GRPCTranscode struct {
	// Service is the mesh service called; its upstreams entry must have
	// protocol: grpc. Required.
	Service string `yaml:"service"`
	// Descriptors names a FileDescriptorSet file (protoc
	// --include_imports --descriptor_set_out, or buf build -o) holding
	// the service's methods, relative to the config file. It is read
	// when the config is loaded (and by validate): a file that does not
	// parse, or binds no method, fails the config. Exactly one of
	// descriptors and reflection.
	Descriptors string `yaml:"descriptors"`
	// Reflection fetches the methods from the service's gRPC server
	// reflection (grpc.reflection.v1, else v1alpha) on the first request,
	// again once they are older than RefreshInterval, and when a request
	// matches no method (at most once a second). Default false.
	Reflection bool `yaml:"reflection"`
	// RefreshInterval is how old reflected methods may get before a
	// request fetches them again, in the background. Default 30s.
	RefreshInterval time.Duration `yaml:"refresh_interval"`
	// Strict answers 400 to JSON fields and query parameters the request
	// message does not have. Default true; false ignores them.
	Strict bool `yaml:"strict"`
	// MaxRequestBytes bounds the request body; a larger one is answered
	// 413 before anything is sent. Default 4 MiB (4194304).
	MaxRequestBytes int `yaml:"max_request_bytes"`
	// MaxResponseBytes bounds each response message; a larger one is
	// answered 502 with a JSON error (in a stream already started, an
	// error line ends it). Default 4 MiB (4194304).
	MaxResponseBytes int `yaml:"max_response_bytes"`
	// Headers names the request headers sent on as gRPC metadata, e.g.
	// [Authorization]. Besides these a call sends X-Request-Id, the
	// X-Forwarded-* headers and the trace context. The response's
	// metadata comes back as Grpc-Metadata-<name> headers, its trailers
	// as Grpc-Trailer-<name>. Empty: none.
	Headers []string `yaml:"headers"`
}

func (g *GRPCTranscode) setDefaults() {
	*g = GRPCTranscode{
		Strict: true, RefreshInterval: transcode.DefaultRefreshInterval,
		MaxRequestBytes: transcode.DefaultMaxRequestBytes, MaxResponseBytes: transcode.DefaultMaxResponseBytes,
	}
}

// grpcFiles returns the descriptor-set files of the edge's grpc routes,
// for path resolution and checking.
func (e *Edge) grpcFiles() []fileField {
	if e == nil {
		return nil
	}
	var fs []fileField
	for i := range e.Routes {
		if g := e.Routes[i].GRPC; g != nil {
			fs = append(fs, fileField{fmt.Sprintf("edge.routes[%d].grpc.descriptors", i), &g.Descriptors})
		}
	}
	return fs
}

// checkDescriptors reports a descriptor-set file at path that cannot be
// read or bound.
func (v *validator) checkDescriptors(path, file string) {
	if _, err := transcode.ReadDescriptorSet(file); err != nil {
		if pe := (*os.PathError)(nil); errors.As(err, &pe) {
			v.errorf(path, "%s", fileError(pe))
		} else {
			v.errorf(path, "%v", err)
		}
	}
}

// grpcTranscode checks route r's grpc section, at path (its descriptor
// file is read with the other files, by checkFiles).
func (v *validator) grpcTranscode(c *Config, path string, r *Route) {
	g := r.GRPC
	if g == nil {
		return
	}
	path += ".grpc"
	if len(r.Backends) > 0 || r.Aggregate != nil || r.Redirect != nil {
		v.errorf(path, "a route has one of backends, aggregate, redirect and grpc")
	}
	if r.Rewrite != nil && r.Rewrite.Path != nil {
		v.errorf(path, "a grpc route has no path rewrite: the path selects the gRPC method")
	}
	if v.name(path+".service", g.Service) {
		for _, u := range c.Upstreams {
			if u.Service != g.Service {
				continue
			}
			if u.Protocol != ProtocolGRPC {
				v.errorf(path+".service", "upstream %s has protocol %s: declare it with protocol: grpc, which a grpc route calls over HTTP/2", quote(g.Service), quote(u.Protocol))
			}
		}
	}
	switch {
	case g.Descriptors == "" && !g.Reflection:
		v.errorf(path, "required: descriptors (a FileDescriptorSet file) or reflection: true")
	case g.Descriptors != "" && g.Reflection:
		v.errorf(path+".reflection", "descriptors and reflection: true exclude each other")
	}
	v.positive(path+".refresh_interval", g.RefreshInterval)
	if g.MaxRequestBytes < 1 {
		v.errorf(path+".max_request_bytes", "must be at least 1, got %d", g.MaxRequestBytes)
	}
	if g.MaxResponseBytes < 1 {
		v.errorf(path+".max_response_bytes", "must be at least 1, got %d", g.MaxResponseBytes)
	}
	for i, h := range g.Headers {
		lh := strings.ToLower(h)
		switch {
		case !validHeaderName(h):
			v.errorf(fmt.Sprintf("%s.headers[%d]", path, i), "invalid header name %s", quote(h))
		case strings.HasPrefix(lh, "grpc-") || lh == "content-type" || lh == "te" || lh == "host" || lh == "connection":
			v.errorf(fmt.Sprintf("%s.headers[%d]", path, i), "%s belongs to gRPC's framing and cannot be sent as metadata", quote(h))
		}
	}
}
