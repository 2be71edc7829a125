package transcode

import (
	"net/http"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// HTTPStatus returns the HTTP status of a gRPC status code, as
// google.rpc.Code documents it (and grpc-gateway answers): NOT_FOUND 404,
// INVALID_ARGUMENT 400, UNAVAILABLE 503, and so on; 500 for a code it
// does not know.
func HTTPStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.Canceled:
		return 499 // Client Closed Request
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError // Unknown, Internal, DataLoss
}

// statusJSON renders a google.rpc.Status: {"code", "message",
// "details"}. details, when set, is the serialized google.rpc.Status the
// service sent (grpc-status-details-bin), whose details are kept when
// types can render them.
func statusJSON(code codes.Code, msg string, details []byte, types *resolver) []byte {
	st := &spb.Status{Code: int32(code), Message: msg}
	if len(details) > 0 {
		var full spb.Status
		if proto.Unmarshal(details, &full) == nil {
			st.Details = full.Details
		}
	}
	mo := protojson.MarshalOptions{}
	if types != nil {
		mo.Resolver = types
	}
	b, err := mo.Marshal(st)
	if err != nil {
		// A detail of a type nobody knows: drop the details.
		st.Details = nil
		b, _ = protojson.Marshal(st)
	}
	return b
}

// writeStatus answers with a google.rpc.Status JSON body and the HTTP
// status of code (or status, when not zero).
func writeStatus(w http.ResponseWriter, status int, code codes.Code, msg string, details []byte, types *resolver) {
	if status == 0 {
		status = HTTPStatus(code)
	}
	b := statusJSON(code, msg, details, types)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
