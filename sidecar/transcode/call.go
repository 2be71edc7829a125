package transcode

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// exchange is one gRPC call sent through a service's pipeline.Handler,
// which runs on its own goroutine and answers into a pipe: the response
// messages are read as they arrive, so server streaming is passed on
// message by message.
type exchange struct {
	w      *pipeWriter
	pr     *io.PipeReader
	cancel context.CancelFunc
	done   chan struct{} // closed when the handler has returned
	err    error         // the handler's, once done
}

// call starts a gRPC call of path ("/package.Service/Method") with the
// length-prefixed messages in frames and the metadata md. The call ends
// when its response is read to the end or close is called.
func call(ctx context.Context, h pipeline.Handler, service, path string, frames []byte, md http.Header) (*exchange, error) {
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+service+path, bytes.NewReader(frames))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("building the gRPC request %s: %w", path, err)
	}
	req.ProtoMajor, req.ProtoMinor, req.Proto = 2, 0, "HTTP/2.0"
	for k, v := range md {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Grpc-Accept-Encoding", "identity")
	if d, ok := ctx.Deadline(); ok {
		req.Header.Set("Grpc-Timeout", grpcTimeout(time.Until(d)))
	}
	req.Host = service
	pr, pw := io.Pipe()
	x := &exchange{w: &pipeWriter{header: http.Header{}, pw: pw, started: make(chan struct{})}, pr: pr, cancel: cancel, done: make(chan struct{})}
	go x.run(h, req)
	return x, nil
}

// run serves req on the handler; it is the exchange's goroutine.
func (x *exchange) run(h pipeline.Handler, req *http.Request) {
	defer close(x.done)
	defer func() {
		if p := recover(); p != nil {
			// httputil.ReverseProxy aborts a response it could not copy
			// (the reader closed the pipe) with http.ErrAbortHandler.
			if p != http.ErrAbortHandler {
				x.err = fmt.Errorf("transcode: the handler of %s panicked: %v", req.URL.Path, p)
			} else {
				x.err = errors.New("the response was cut short")
			}
		}
		x.w.start(0)
		x.w.pw.Close()
	}()
	x.err = h.ServeHTTP(x.w, req)
}

// head waits for the response headers. It returns the handler's error
// when the handler answered nothing.
func (x *exchange) head() (int, http.Header, error) {
	select {
	case <-x.w.started:
	case <-x.done:
	}
	<-x.w.started // closed by run at the latest
	if x.w.status == 0 {
		<-x.done
		if x.err != nil {
			return 0, nil, x.err
		}
		return 0, nil, errors.New("no response")
	}
	return x.w.status, x.w.snapshot, nil
}

// next reads the next message, at most max bytes. It returns io.EOF
// after the last one; errTooLarge for one over max.
func (x *exchange) next(max int) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(x.pr, hdr[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("reading a response message: %w", err)
	}
	if hdr[0] != 0 {
		return nil, errors.New("the service sent a compressed message, which was not asked for")
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if int64(n) > int64(max) {
		return nil, &tooLargeError{size: int64(n), max: max}
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(x.pr, msg); err != nil {
		return nil, fmt.Errorf("reading a response message: %w", err)
	}
	return msg, nil
}

// tooLargeError is a response message over the route's bound.
type tooLargeError struct {
	size int64
	max  int
}

func (e *tooLargeError) Error() string {
	return fmt.Sprintf("a response message is %d bytes; this route passes on at most %d (max_response_bytes)", e.size, e.max)
}

// close abandons what is left of the response and waits for the
// handler to return.
func (x *exchange) close() {
	x.pr.CloseWithError(errAbandoned)
	x.cancel()
	<-x.done
}

var errAbandoned = errors.New("transcode: response abandoned")

// status returns the call's gRPC status from its trailers (or, for a
// trailers-only response, its headers), once the body was read to its
// end.
func (x *exchange) status() *callStatus {
	<-x.done
	h := x.w.header // the handler has returned: no more writes
	get := func(k string) (string, bool) {
		if v, ok := h[http.TrailerPrefix+k]; ok && len(v) > 0 {
			return v[0], true
		}
		if v, ok := h[k]; ok && len(v) > 0 {
			return v[0], true
		}
		return "", false
	}
	raw, ok := get("Grpc-Status")
	if !ok {
		msg := "the response ended without a grpc-status"
		if x.err != nil {
			msg += ": " + x.err.Error()
		}
		return &callStatus{code: codes.Unknown, msg: msg, missing: true}
	}
	n, err := strconv.ParseUint(raw, 10, 32)
	if err != nil {
		return &callStatus{code: codes.Unknown, msg: fmt.Sprintf("invalid grpc-status %q", raw)}
	}
	s := &callStatus{code: codes.Code(n)}
	if m, ok := get("Grpc-Message"); ok {
		s.msg, _ = url.PathUnescape(m)
		if s.msg == "" {
			s.msg = m
		}
	}
	if d, ok := get("Grpc-Status-Details-Bin"); ok {
		s.details, _ = decodeBinary(d)
	}
	s.trailer = http.Header{}
	for k, v := range h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && !reserved(name) {
			s.trailer[http.CanonicalHeaderKey(name)] = v
		}
	}
	return s
}

// callStatus is the gRPC status a call ended with.
type callStatus struct {
	code    codes.Code
	msg     string
	details []byte // a serialized google.rpc.Status, or nil
	trailer http.Header
	missing bool // no grpc-status arrived
}

// decodeBinary decodes a "-bin" metadata value (base64, padded or not).
func decodeBinary(s string) ([]byte, error) {
	if len(s)%4 == 0 {
		return base64.StdEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// reserved reports whether a header belongs to HTTP or gRPC framing, not
// to the application's metadata.
func reserved(k string) bool {
	k = strings.ToLower(k)
	switch k {
	case "content-type", "content-length", "te", "trailer", "connection", "transfer-encoding", "date", "host", "user-agent", "keep-alive", "upgrade", "proxy-connection":
		return true
	}
	return strings.HasPrefix(k, "grpc-") || strings.HasPrefix(k, ":") || strings.HasPrefix(k, "x-sidemesh-")
}

// pipeWriter is the http.ResponseWriter an exchange's handler answers
// into. Header and status belong to the handler's goroutine until
// started is closed; snapshot is the header as it was then. The body
// goes into the pipe.
type pipeWriter struct {
	header   http.Header
	pw       *io.PipeWriter
	once     sync.Once
	started  chan struct{}
	status   int
	snapshot http.Header
}

func (w *pipeWriter) Header() http.Header { return w.header }

// start records the final status (0: none) once.
func (w *pipeWriter) start(code int) {
	w.once.Do(func() {
		w.status = code
		w.snapshot = w.header.Clone()
		close(w.started)
	})
}

// WriteHeader records the final status; informational ones are ignored.
func (w *pipeWriter) WriteHeader(code int) {
	if code >= 200 {
		w.start(code)
	}
}

func (w *pipeWriter) Write(p []byte) (int, error) {
	w.start(http.StatusOK)
	return w.pw.Write(p)
}

// Flush does nothing: writes reach the reader unbuffered. It spares the
// proxy's flushes an http.ErrNotSupported.
func (w *pipeWriter) Flush() {}

var _ http.Flusher = (*pipeWriter)(nil)

// grpcTimeout formats d as a grpc-timeout value, in milliseconds
// (at most 8 digits).
func grpcTimeout(d time.Duration) string {
	ms := max(d.Milliseconds(), 1)
	return strconv.FormatInt(min(ms, 99999999), 10) + "m"
}
