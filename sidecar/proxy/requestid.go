package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"unsafe"

	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// headerRequestID names the header that carries a request's ID through the
// mesh. The first proxy that sees a request without one generates it.
const headerRequestID = "X-Request-Id"

// RequestID is the filter that gives every request an X-Request-Id (a
// random UUID v4) unless it carries one, and records it in the request's
// Info. It runs after Hygiene, so a caller cannot have it removed by
// naming it in Connection.
var RequestID pipeline.Filter = requestIDFilter{}

type requestIDFilter struct{}

func (requestIDFilter) Serve(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
	id := r.Header.Get(headerRequestID)
	if id == "" {
		v := newRequestIDValue()
		id = v[0]
		r.Header[headerRequestID] = v
	}
	if info := pipeline.InfoFrom(r.Context()); info != nil {
		info.RequestID = id
	}
	return next.ServeHTTP(w, r)
}

// newRequestID returns a random version 4 UUID.
func newRequestID() string { return newRequestIDValue()[0] }

// newRequestIDValue returns a header value holding a random version 4
// UUID, in one allocation: the value slice and the string's bytes.
func newRequestIDValue() []string {
	v := new(struct {
		s [1]string
		b [36]byte
	})
	encodeUUID(&v.b)
	v.s[0] = unsafe.String(&v.b[0], len(v.b)) // v.b is never written again
	return v.s[:]
}

// encodeUUID writes a random version 4 UUID to b.
func encodeUUID(b *[36]byte) {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never returns an error
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
}
