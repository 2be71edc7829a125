// Package transcode is the route backend that answers HTTP/JSON requests
// by calling gRPC methods of a mesh service (config.GRPCTranscode).
//
// A request flows like this (Handler.ServeHTTP):
//
//  1. Its method and path are matched against the google.api.http
//     bindings of the service's methods (most specific template first).
//     The descriptors come from a descriptor-set file, or from the
//     service's gRPC server reflection, fetched on the first request,
//     again in the background once they are older than the refresh
//     interval, and at once (at most once a second) when a request
//     matches no binding, so a method the backend gains is found without
//     a restart.
//  2. The request message is built with protojson from the body (body:
//     "*" or a field), then the path variables, then the query (nested
//     fields "a.b=1", repeated fields by repeating the parameter). A
//     body over the bound is refused (413) before anything is sent.
//  3. The message is sent as a gRPC call (POST /package.Service/Method,
//     application/grpc, TE: trailers) through the service's
//     pipeline.Handler: its balancer, breakers, retries and mutual TLS.
//  4. The response message is answered as JSON (protojson: json_name
//     field names, int64 as strings, enums by name); a server-streaming
//     method's messages as newline-delimited JSON, flushed one by one.
//     A non-OK gRPC status is answered with its HTTP status and a
//     google.rpc.Status JSON body; a message over the bound with a 502.
package transcode

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// Defaults of Options.
const (
	DefaultMaxRequestBytes  = 4 << 20
	DefaultMaxResponseBytes = 4 << 20
	DefaultRefreshInterval  = 30 * time.Second
)

// missInterval is the least time between two reflection fetches caused
// by requests that match no binding: a client probing paths does not
// make the edge call the service's reflection on each request.
var missInterval = time.Second

// fetchTimeout bounds one reflection fetch.
var fetchTimeout = 10 * time.Second

// Options configure New.
type Options struct {
	// Service is the mesh service called, used as the requests' Host and
	// in errors. Required.
	Service string
	// Handler sends a request to Service (edge.Backends.Handler); it must
	// speak HTTP/2 to the service's endpoints (an upstream of protocol
	// grpc). Required.
	Handler pipeline.Handler
	// Descriptors are the compiled bindings (ReadDescriptorSet, Compile).
	// Nil: they are fetched with the service's server reflection.
	Descriptors *Descriptors
	// RefreshInterval is how old reflected descriptors may get before a
	// request triggers a fetch in the background. Zero means
	// DefaultRefreshInterval (30s). Unused with Descriptors.
	RefreshInterval time.Duration
	// Lenient ignores JSON fields and query parameters the request
	// message does not have. Default false: they are answered 400
	// INVALID_ARGUMENT.
	Lenient bool
	// MaxRequestBytes bounds the request body; a larger one is answered
	// 413 before anything is sent. Zero means DefaultMaxRequestBytes
	// (4 MiB).
	MaxRequestBytes int
	// MaxResponseBytes bounds each response message; a larger one is
	// answered 502 (or, in a stream already started, ends it with an
	// error line). Zero means DefaultMaxResponseBytes (4 MiB).
	MaxResponseBytes int
	// Headers names the request headers sent on as gRPC metadata, e.g.
	// [Authorization]. Besides them a call sends X-Request-Id, the
	// X-Forwarded-* headers and the trace context. Empty: none.
	Headers []string
	// Logger receives reflection failures. Nil means slog.Default().
	Logger *slog.Logger
}

// Handler is a gRPC transcoding route's backend: a pipeline.Handler.
// Safe for concurrent use; requests read an immutable snapshot of the
// bindings, which a refresh replaces atomically.
type Handler struct {
	o       Options
	headers []string // canonical
	table   atomic.Pointer[table]
	static  bool

	mu       sync.Mutex
	inflight *fetch // the reflection fetch under way, or nil
	missAt   time.Time
	fetchCtx context.Context // ends with Close
	stop     context.CancelFunc
}

// fetch is one reflection fetch that requests may wait for.
type fetch struct {
	done chan struct{}
	err  error
}

// New returns the Handler of o. With o.Descriptors nil, the first request
// fetches them.
func New(o Options) *Handler {
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = DefaultRefreshInterval
	}
	if o.MaxRequestBytes <= 0 {
		o.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if o.MaxResponseBytes <= 0 {
		o.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	h := &Handler{o: o}
	h.fetchCtx, h.stop = context.WithCancel(context.Background())
	for _, k := range append(slices.Clone(forwarded), o.Headers...) {
		h.headers = append(h.headers, http.CanonicalHeaderKey(k))
	}
	if o.Descriptors != nil {
		h.static = true
		h.table.Store(o.Descriptors.t)
	}
	return h
}

// Close cancels a reflection fetch under way; requests waiting for it
// fail. The Handler still serves with the descriptors it has.
func (h *Handler) Close() { h.stop() }

// forwarded are the request headers every call sends on as metadata.
var forwarded = []string{"X-Request-Id", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"}

// ServeHTTP transcodes r into a gRPC call and its response into JSON. It
// returns a *pipeline.Error when the service could not be called at all
// (no endpoint, a connection failure); every other answer it writes
// itself, with a google.rpc.Status body.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	t, err := h.snapshot(r.Context())
	if err != nil {
		writeStatus(w, http.StatusServiceUnavailable, codes.Unavailable, fmt.Sprintf("the methods of service %q are not known: %v", h.o.Service, err), nil, nil)
		return nil
	}
	path := r.URL.EscapedPath()
	b, vals := t.match(r.Method, path)
	if b == nil && !h.static {
		if t2, ok := h.onMiss(r.Context()); ok {
			t = t2
			b, vals = t.match(r.Method, path)
		}
	}
	if b == nil {
		writeStatus(w, http.StatusNotFound, codes.NotFound, fmt.Sprintf("no gRPC method of service %q is bound to %s %s", h.o.Service, r.Method, r.URL.Path), nil, t.types)
		return nil
	}
	body, err := h.readBody(r, b)
	if err != nil {
		var tl *tooLargeError
		if errors.As(err, &tl) {
			writeStatus(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument, fmt.Sprintf("the request body is over %d bytes (max_request_bytes)", tl.max), nil, t.types)
			return nil
		}
		writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, err.Error(), nil, t.types)
		return nil
	}
	msg, err := buildRequest(b, body, vals, r.URL.Query(), !h.o.Lenient, t.types)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, err.Error(), nil, t.types)
		return nil
	}
	wire, err := proto.Marshal(msg)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, fmt.Sprintf("encoding %s: %v", b.rpc.Input().FullName(), err), nil, t.types)
		return nil
	}
	if len(wire) > h.o.MaxRequestBytes {
		writeStatus(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument, fmt.Sprintf("the request message is %d bytes, over %d (max_request_bytes)", len(wire), h.o.MaxRequestBytes), nil, t.types)
		return nil
	}
	x, err := call(r.Context(), h.o.Handler, h.o.Service, b.path, frame(wire), h.metadata(r.Header))
	if err != nil {
		return pipeline.Errorf(http.StatusInternalServerError, pipeline.KindBadRequest, "%v", err)
	}
	defer x.close()
	status, hdr, err := x.head()
	if err != nil {
		return pipeline.AsError(err)
	}
	if status != http.StatusOK || !isGRPC(hdr.Get("Content-Type")) {
		writeStatus(w, http.StatusBadGateway, codes.Unavailable, fmt.Sprintf("service %q answered %s %s with HTTP %d %q, not gRPC", h.o.Service, r.Method, b.path, status, hdr.Get("Content-Type")), nil, t.types)
		return nil
	}
	if b.rpc.IsStreamingServer() {
		h.stream(w, x, b, hdr, t)
		return nil
	}
	h.unary(w, x, b, hdr, t)
	return nil
}

// unary answers the one response message of x, or its status.
func (h *Handler) unary(w http.ResponseWriter, x *exchange, b *binding, hdr http.Header, t *table) {
	raw, err := x.next(h.o.MaxResponseBytes)
	if err != nil && err != io.EOF {
		writeStatus(w, http.StatusBadGateway, codes.Internal, fmt.Sprintf("service %q, %s: %v", h.o.Service, b.path, err), nil, t.types)
		return
	}
	gotMsg := err == nil
	if gotMsg {
		// The trailers follow the single message.
		if _, err := x.next(h.o.MaxResponseBytes); err != io.EOF {
			writeStatus(w, http.StatusBadGateway, codes.Internal, fmt.Sprintf("service %q, %s: more than one response message to a unary call", h.o.Service, b.path), nil, t.types)
			return
		}
	}
	st := x.status()
	copyMetadata(w.Header(), hdr, "Grpc-Metadata-")
	if st.code != codes.OK || st.missing {
		code := st.code
		status := 0
		if st.missing {
			status = http.StatusBadGateway
		}
		copyMetadata(w.Header(), st.trailer, "Grpc-Trailer-")
		writeStatus(w, status, code, st.msg, st.details, t.types)
		return
	}
	if !gotMsg {
		writeStatus(w, http.StatusBadGateway, codes.Internal, fmt.Sprintf("service %q, %s: the call succeeded without a response message", h.o.Service, b.path), nil, t.types)
		return
	}
	out, err := h.render(raw, b, t)
	if err != nil {
		writeStatus(w, http.StatusBadGateway, codes.Internal, fmt.Sprintf("service %q, %s: %v", h.o.Service, b.path, err), nil, t.types)
		return
	}
	copyMetadata(w.Header(), st.trailer, "Grpc-Trailer-")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(append(out, '\n'))
}

// stream answers a server stream as newline-delimited JSON, one line per
// message, flushed as it arrives. A status that is not OK before the
// first message is answered as for a unary call; after it, it ends the
// stream with a line {"error": <google.rpc.Status>}.
func (h *Handler) stream(w http.ResponseWriter, x *exchange, b *binding, hdr http.Header, t *table) {
	rc := http.NewResponseController(w)
	started := false
	fail := func(status int, code codes.Code, msg string, details []byte) {
		if !started {
			writeStatus(w, status, code, msg, details, t.types)
			return
		}
		line := append([]byte(`{"error":`), statusJSON(code, msg, details, t.types)...)
		w.Write(append(line, '}', '\n'))
		rc.Flush()
	}
	for {
		raw, err := x.next(h.o.MaxResponseBytes)
		if err == io.EOF {
			break
		}
		if err != nil {
			fail(http.StatusBadGateway, codes.Internal, fmt.Sprintf("service %q, %s: %v", h.o.Service, b.path, err), nil)
			return
		}
		out, err := h.render(raw, b, t)
		if err != nil {
			fail(http.StatusBadGateway, codes.Internal, fmt.Sprintf("service %q, %s: %v", h.o.Service, b.path, err), nil)
			return
		}
		if !started {
			started = true
			copyMetadata(w.Header(), hdr, "Grpc-Metadata-")
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
		}
		if _, err := w.Write(append(out, '\n')); err != nil {
			return // the client went away
		}
		rc.Flush()
	}
	st := x.status()
	switch {
	case st.missing:
		fail(http.StatusBadGateway, codes.Unknown, st.msg, nil)
	case st.code != codes.OK:
		fail(0, st.code, st.msg, st.details)
	case !started:
		copyMetadata(w.Header(), hdr, "Grpc-Metadata-")
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
	}
}

// render decodes a response message of b and encodes it as JSON.
func (h *Handler) render(raw []byte, b *binding, t *table) ([]byte, error) {
	m := dynamicpb.NewMessage(b.rpc.Output())
	if err := (proto.UnmarshalOptions{Resolver: t.types}).Unmarshal(raw, m); err != nil {
		return nil, fmt.Errorf("the response is not a %s: %w", b.rpc.Output().FullName(), err)
	}
	var out proto.Message = m
	if b.responseBody != "" {
		fd := b.rpc.Output().Fields().ByName(protoreflect.Name(b.responseBody))
		out = m.Get(fd).Message().Interface()
	}
	return protojson.MarshalOptions{Resolver: t.types}.Marshal(out)
}

// readBody reads r's body when b takes one, up to the bound.
func (h *Handler) readBody(r *http.Request, b *binding) ([]byte, error) {
	if r.ContentLength > int64(h.o.MaxRequestBytes) {
		return nil, &tooLargeError{size: r.ContentLength, max: h.o.MaxRequestBytes}
	}
	if b.body == "" || r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(h.o.MaxRequestBytes)+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &tooLargeError{size: mbe.Limit + 1, max: int(mbe.Limit)}
		}
		return nil, fmt.Errorf("reading the request body: %w", err)
	}
	if len(body) > h.o.MaxRequestBytes {
		return nil, &tooLargeError{size: int64(len(body)), max: h.o.MaxRequestBytes}
	}
	return body, nil
}

// metadata returns the headers of the call: the allowed request headers.
func (h *Handler) metadata(in http.Header) http.Header {
	md := http.Header{}
	for _, k := range h.headers {
		if v := in[k]; len(v) > 0 && !reserved(k) {
			md[k] = slices.Clone(v)
		}
	}
	return md
}

// copyMetadata adds the application metadata of src to dst, each name
// under prefix.
func copyMetadata(dst, src http.Header, prefix string) {
	for k, v := range src {
		if !reserved(k) {
			dst[prefix+http.CanonicalHeaderKey(k)] = v
		}
	}
}

// frame length-prefixes a gRPC message (uncompressed).
func frame(msg []byte) []byte {
	out := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(out[1:5], uint32(len(msg)))
	copy(out[5:], msg)
	return out
}

// isGRPC reports whether a Content-Type is gRPC's.
func isGRPC(ct string) bool {
	return ct == "application/grpc" || len(ct) > 16 && ct[:16] == "application/grpc" && (ct[16] == '+' || ct[16] == ';')
}

// snapshot returns the current bindings; the first call with reflection
// fetches them, and a call finding them older than the refresh interval
// starts a fetch in the background.
func (h *Handler) snapshot(ctx context.Context) (*table, error) {
	t := h.table.Load()
	if t == nil {
		if err := h.refresh(ctx, true); err != nil {
			return nil, err
		}
		return h.table.Load(), nil
	}
	if !h.static && time.Since(t.loaded) > h.o.RefreshInterval {
		h.refresh(ctx, false)
	}
	return t, nil
}

// onMiss fetches the descriptors again for a request that matched no
// binding, unless a fetch for a miss ran less than missInterval ago. It
// returns the new snapshot.
func (h *Handler) onMiss(ctx context.Context) (*table, bool) {
	h.mu.Lock()
	if time.Since(h.missAt) < missInterval {
		h.mu.Unlock()
		return nil, false
	}
	h.missAt = time.Now()
	h.mu.Unlock()
	if err := h.refresh(ctx, true); err != nil {
		return nil, false
	}
	return h.table.Load(), true
}

// refresh starts a reflection fetch, or joins the one under way; with
// wait it returns that fetch's error once it has ended (or ctx has).
func (h *Handler) refresh(ctx context.Context, wait bool) error {
	h.mu.Lock()
	f := h.inflight
	if f == nil {
		f = &fetch{done: make(chan struct{})}
		h.inflight = f
		go func() {
			defer func() {
				h.mu.Lock()
				h.inflight = nil
				h.mu.Unlock()
				close(f.done)
			}()
			fctx, cancel := context.WithTimeout(h.fetchCtx, fetchTimeout)
			defer cancel()
			t, err := fetchReflection(fctx, h.o.Handler, h.o.Service)
			if err != nil {
				f.err = err
				h.o.Logger.Warn("grpc reflection failed", "service", h.o.Service, "err", err)
				if old := h.table.Load(); old != nil {
					// Keep serving the old methods; try again after
					// the refresh interval.
					h.table.Store(&table{bindings: old.bindings, types: old.types, loaded: time.Now()})
				}
				return
			}
			h.table.Store(t)
		}()
	}
	h.mu.Unlock()
	if !wait {
		return nil
	}
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

var _ pipeline.Handler = (*Handler)(nil)
