package aggregate

import (
	"bytes"
	"errors"
	"net/http"
)

// recorder is the http.ResponseWriter a leg's handler answers into: it
// keeps the status, the headers and up to max bytes of body. It belongs
// to the leg's goroutine.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
	max    int
	// over is set when the body went past max; Write then fails.
	over bool
	// onHeader, when set, is called once when the final status is
	// written.
	onHeader func()
}

// errTooLarge fails a leg's Write past its bound; the proxy then aborts
// the response.
var errTooLarge = errors.New("aggregate: leg response body over its bound")

func (w *recorder) Header() http.Header { return w.header }

// WriteHeader records the final status; informational (1xx) ones are
// ignored.
func (w *recorder) WriteHeader(code int) {
	if w.status != 0 || code < 200 {
		return
	}
	w.status = code
	if w.onHeader != nil {
		w.onHeader()
	}
}

func (w *recorder) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.over || w.body.Len()+len(p) > w.max {
		w.over = true
		return 0, errTooLarge
	}
	return w.body.Write(p)
}

// Flush does nothing: the body is kept until the leg ends. It spares the
// proxy's flushes an http.ErrNotSupported.
func (w *recorder) Flush() {}

var _ http.Flusher = (*recorder)(nil)
