package pipeline

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Renderer writes the response for an error no handler answered. It is
// called at most once per request, before anything was written. It must
// be safe for concurrent use.
type Renderer interface {
	Render(w http.ResponseWriter, r *http.Request, e *Error)
}

// Text is the sidecar listeners' renderer: the error's status, a one-line
// plain-text body ("sidemesh: <message>") and X-Sidemesh-Error naming its
// kind. A gRPC caller (content type application/grpc*) gets a gRPC error
// instead, which its client library can read: HTTP 200 with grpc-status
// and grpc-message in a trailers-only response, and X-Sidemesh-Error too.
var Text Renderer = textRenderer{}

type textRenderer struct{}

func (textRenderer) Render(w http.ResponseWriter, r *http.Request, e *Error) {
	h := w.Header()
	h.Set(HeaderError, string(e.Kind))
	if IsGRPC(r) {
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(GRPCCode(e)))
		h.Set("Grpc-Message", grpcMessage("sidemesh: "+e.Error()))
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		io.WriteString(w, "sidemesh: "+e.Error()+"\n")
	}
}

// JSON is the edge listeners' renderer: the error's status and an RFC 9457
// problem document (application/problem+json) with the kind and the
// message, and X-Sidemesh-Error; gRPC callers get a gRPC status, as with
// Text.
var JSON Renderer = jsonRenderer{}

type jsonRenderer struct{}

func (jsonRenderer) Render(w http.ResponseWriter, r *http.Request, e *Error) {
	if IsGRPC(r) {
		Text.Render(w, r, e)
		return
	}
	h := w.Header()
	h.Set(HeaderError, string(e.Kind))
	h.Set("Content-Type", "application/problem+json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	if r.Method == http.MethodHead {
		return
	}
	body, _ := json.Marshal(struct {
		Title  string `json:"title"`
		Status int    `json:"status"`
		Kind   Kind   `json:"kind"`
		Detail string `json:"detail"`
	}{http.StatusText(e.Status), e.Status, e.Kind, e.Error()})
	w.Write(append(body, '\n'))
}

// IsGRPC reports whether r is a gRPC call: HTTP/2 with a content type of
// application/grpc or one of its subtypes (application/grpc+proto).
func IsGRPC(r *http.Request) bool {
	if r.ProtoMajor != 2 {
		return false
	}
	ct := r.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc") &&
		(len(ct) == len("application/grpc") || ct[len("application/grpc")] == '+' || ct[len("application/grpc")] == ';')
}

// gRPC status codes (google.golang.org/grpc/codes), the few sidemesh
// answers with.
const (
	grpcInvalidArgument  = 3
	grpcDeadlineExceeded = 4
	grpcPermissionDenied = 7
	grpcUnimplemented    = 12
	grpcInternal         = 13
	grpcUnavailable      = 14
	grpcUnauthenticated  = 16
)

// GRPCCode returns the gRPC status code a gRPC caller gets for e: by kind
// where the kind says more than the status (a timeout is
// DEADLINE_EXCEEDED, not UNAVAILABLE), else by status as gRPC's
// "HTTP to gRPC status code mapping" does. Failures to reach an endpoint
// are UNAVAILABLE, which gRPC clients may retry.
func GRPCCode(e *Error) int {
	switch e.Kind {
	case KindTimeout:
		return grpcDeadlineExceeded
	case KindDenied:
		return grpcPermissionDenied
	case KindUnauthenticated:
		return grpcUnauthenticated
	case KindBadPath, KindBadRequest:
		return grpcInvalidArgument
	case KindNoRoute:
		return grpcUnimplemented
	case KindNoEndpoints, KindConnectFailure, KindReset, KindProtocol:
		return grpcUnavailable
	}
	switch e.Status {
	case http.StatusUnauthorized:
		return grpcUnauthenticated
	case http.StatusForbidden:
		return grpcPermissionDenied
	case http.StatusNotFound:
		return grpcUnimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return grpcUnavailable
	}
	return grpcInternal
}

// grpcMessage percent-encodes s as the grpc-message header requires:
// every byte outside printable ASCII, and '%'.
func grpcMessage(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}
