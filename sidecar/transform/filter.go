// Package transform edits the JSON bodies and query parameters of
// requests, and the JSON bodies of responses, as an edge route's filter
// (config.Transform). See docs/edge.md, "Transformation".
package transform

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// HeaderWarning is the response header that says a body was passed on
// unchanged although the route edits it, and why ("skipped; body too
// large").
const HeaderWarning = "X-Sidemesh-Transform"

// Reasons a body is passed unchanged, the values of HeaderWarning.
const (
	WarnTooLarge        = "skipped; body too large"
	WarnRequestTooLarge = "skipped; request body too large"
	WarnEncoding        = "skipped; unsupported content encoding"
	WarnInvalid         = "skipped; invalid JSON"
)

// Filter is the pipeline.Filter of a route's transform. It edits, in
// this order: the request's query, the request's JSON body, and the
// response's JSON body.
//
// Bodies are held in memory only to be edited, and only up to the
// route's max_body_bytes (after gzip decoding):
//   - A request body is edited when its Content-Type is JSON
//     (application/json or any +json type) and it has no
//     Content-Encoding; Content-Length is set to the edited length. A
//     larger body is sent on unchanged (logged at debug, and the
//     response carries X-Sidemesh-Transform: skipped; request body too
//     large): refusing it would turn a transform into a body limit,
//     which max_body_bytes of the route is for.
//   - A response body is edited when its Content-Type is JSON, its
//     status is not 1xx, 204, 206 or 304, the request is not HEAD, and
//     it declares no trailers. gzip is decoded and the result encoded
//     again; any other Content-Encoding passes unchanged with the
//     warning header. A body whose Content-Length, or whose bytes as
//     they arrive, pass max_body_bytes is passed on unchanged from that
//     point with the warning header (it is sent before the body).
//   - Streaming responses are recognized by their Content-Type
//     (text/event-stream, application/grpc*, and anything not JSON) and
//     are written through, each flush at once. A JSON response is held
//     even when the handler flushes: httputil.ReverseProxy flushes
//     every response without a Content-Length after each write, so a
//     flush cannot tell a stream from a chunked document.
//
// An edited response's Content-Length is set, and a strong ETag made
// weak. Every other header, Set-Cookie lines included, is passed as the
// handler wrote it.
//
// A Filter is immutable and safe for concurrent use.
type Filter struct {
	reqJSON, respJSON *JSONEdit // nil: no edits
	query             *QueryEdit
	max               int64
	log               *slog.Logger
}

// New returns the filter of t, which must have passed config validation
// (New returns the first problem it finds otherwise). log receives the
// debug lines of request bodies passed unchanged; nil means
// slog.Default().
func New(t *config.Transform, log *slog.Logger) (*Filter, error) {
	if log == nil {
		log = slog.Default()
	}
	f := &Filter{max: int64(t.MaxBodyBytes), log: log}
	if f.max <= 0 {
		return nil, fmt.Errorf("transform: max_body_bytes must be positive, got %d", t.MaxBodyBytes)
	}
	var err error
	if rq := t.Request; rq != nil {
		if j := rq.JSON; j != nil {
			if f.reqJSON, err = NewJSONEdit(j.SetValues(), j.Remove, j.Rename); err != nil {
				return nil, fmt.Errorf("transform: request json: %w", err)
			}
		}
		if q := rq.Query; q != nil {
			if f.query, err = NewQueryEdit(q.Set, q.Remove, q.Rename); err != nil {
				return nil, fmt.Errorf("transform: request query: %w", err)
			}
		}
	}
	if rs := t.Response; rs != nil && rs.JSON != nil {
		j := rs.JSON
		if f.respJSON, err = NewJSONEdit(j.SetValues(), j.Remove, j.Rename); err != nil {
			return nil, fmt.Errorf("transform: response json: %w", err)
		}
	}
	return f, nil
}

// Serve implements pipeline.Filter.
func (f *Filter) Serve(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
	if f.query != nil {
		if q, changed := f.query.Apply(r.URL.RawQuery); changed {
			r.URL.RawQuery = q
		}
	}
	if f.reqJSON != nil {
		if err := f.editRequest(w, r); err != nil {
			return err
		}
	}
	if f.respJSON == nil || r.Method == http.MethodHead {
		return next.ServeHTTP(w, r)
	}
	rw := &responseWriter{ResponseWriter: w, f: f}
	err := next.ServeHTTP(rw, r)
	rw.finish()
	return err
}

// editRequest edits r's JSON body in place.
func (f *Filter) editRequest(w http.ResponseWriter, r *http.Request) error {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 || !isJSON(r.Header.Get("Content-Type")) {
		return nil
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		f.log.Debug("transform: encoded request body sent unchanged", "route", routeName(r), "content_encoding", ce)
		return nil
	}
	if r.ContentLength > f.max {
		f.skipRequest(w, r, r.ContentLength)
		return nil
	}
	held, err := io.ReadAll(io.LimitReader(r.Body, f.max+1))
	if err != nil {
		if info := pipeline.InfoFrom(r.Context()); info != nil && info.BodyErr != nil {
			return info.BodyErr.Answer()
		}
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return pipeline.Errorf(http.StatusRequestEntityTooLarge, pipeline.KindBadRequest, "the request body is over %d bytes", tooBig.Limit)
		}
		return pipeline.Errorf(http.StatusBadRequest, pipeline.KindBadRequest, "transform: reading the request body: %v", err)
	}
	if int64(len(held)) > f.max {
		f.skipRequest(w, r, -1)
		r.Body = readCloser{io.MultiReader(bytes.NewReader(held), r.Body), r.Body}
		return nil
	}
	out, changed, err := f.reqJSON.Apply(held)
	if err != nil {
		f.log.Debug("transform: request body passed unchanged", "route", routeName(r), "reason", err)
	}
	if !changed {
		out = held
	}
	r.Body = io.NopCloser(bytes.NewReader(out))
	r.ContentLength = int64(len(out))
	r.TransferEncoding = nil
	r.Header.Set("Content-Length", strconv.Itoa(len(out)))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(out)), nil }
	return nil
}

// skipRequest notes that r's body is too large to edit; size is -1 when
// unknown.
func (f *Filter) skipRequest(w http.ResponseWriter, r *http.Request, size int64) {
	f.log.Debug("transform: request body too large to edit, sent unchanged", "route", routeName(r), "size", size, "max_body_bytes", f.max)
	w.Header().Add(HeaderWarning, WarnRequestTooLarge)
}

func routeName(r *http.Request) string {
	if info := pipeline.InfoFrom(r.Context()); info != nil {
		return info.Route
	}
	return ""
}

// readCloser reads from one reader and closes another.
type readCloser struct {
	io.Reader
	io.Closer
}

// isJSON reports whether a Content-Type is JSON: application/json or a
// +json type (application/problem+json).
func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasSuffix(mt, "+json") && !strings.HasPrefix(mt, "application/grpc")
}

var _ pipeline.Filter = (*Filter)(nil)
