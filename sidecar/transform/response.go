package transform

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// WarnGzip is the HeaderWarning value of a gzip response body that could
// not be decoded.
const WarnGzip = "skipped; invalid gzip"

// responseWriter holds a JSON response to edit it when the handler is
// done (finish), and writes any other response through. It belongs to
// the request's handler goroutine; httputil.ReverseProxy may call Flush
// from a timer goroutine, but never at the same time as Write.
type responseWriter struct {
	http.ResponseWriter
	f      *Filter
	mode   writeMode
	status int
	gzip   bool
	buf    bytes.Buffer
}

type writeMode int

const (
	undecided writeMode = iota
	through             // written through unchanged
	held                // held in buf until finish
)

func (w *responseWriter) WriteHeader(code int) {
	switch {
	case w.mode == through:
		w.ResponseWriter.WriteHeader(code) // net/http reports the superfluous call
	case w.mode == held:
	case code < 200 && code != http.StatusSwitchingProtocols:
		w.ResponseWriter.WriteHeader(code) // interim: 100 Continue, 103 Early Hints
	default:
		w.decide(code)
	}
}

// decide chooses, when the response starts, whether it is held.
func (w *responseWriter) decide(code int) {
	h := w.Header()
	switch code {
	case http.StatusSwitchingProtocols, http.StatusNoContent, http.StatusPartialContent, http.StatusNotModified:
		w.pass(code, "")
		return
	}
	if !isJSON(h.Get("Content-Type")) || h.Get("Trailer") != "" {
		w.pass(code, "")
		return
	}
	switch ce := h.Get("Content-Encoding"); {
	case ce == "" || strings.EqualFold(ce, "identity"):
	case strings.EqualFold(ce, "gzip") || strings.EqualFold(ce, "x-gzip"):
		w.gzip = true
	default:
		w.pass(code, WarnEncoding)
		return
	}
	if n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil && n > w.f.max {
		w.pass(code, WarnTooLarge)
		return
	}
	w.mode, w.status = held, code
}

// pass starts writing the response through, with a warning when warn is
// set.
func (w *responseWriter) pass(code int, warn string) {
	w.mode = through
	if warn != "" {
		w.Header().Add(HeaderWarning, warn)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.mode == undecided {
		w.WriteHeader(http.StatusOK)
	}
	if w.mode == through {
		return w.ResponseWriter.Write(p)
	}
	if int64(w.buf.Len()+len(p)) > w.f.max {
		// Over the bound: what is held goes first, the rest through.
		w.pass(w.status, WarnTooLarge)
		_, err := w.ResponseWriter.Write(w.buf.Bytes())
		w.buf = bytes.Buffer{}
		if err != nil {
			return 0, err
		}
		return w.ResponseWriter.Write(p)
	}
	return w.buf.Write(p)
}

// Flush flushes a response written through; a held one is written when
// the handler is done.
func (w *responseWriter) Flush() {
	if w.mode == undecided {
		w.WriteHeader(http.StatusOK)
	}
	if w.mode == through {
		http.NewResponseController(w.ResponseWriter).Flush()
	}
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish edits and writes a held response. It runs once the handler has
// returned.
func (w *responseWriter) finish() {
	if w.mode != held {
		return
	}
	body := w.buf.Bytes()
	doc := body
	if w.gzip {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err == nil {
			doc, err = io.ReadAll(io.LimitReader(zr, w.f.max+1))
		}
		switch {
		case err != nil:
			w.send(body, WarnGzip)
			return
		case int64(len(doc)) > w.f.max:
			w.send(body, WarnTooLarge)
			return
		}
	}
	if len(bytes.TrimSpace(doc)) == 0 {
		w.send(body, "")
		return
	}
	out, changed, err := w.f.respJSON.Apply(doc)
	switch {
	case err != nil:
		w.send(body, WarnInvalid)
		return
	case !changed:
		w.send(body, "")
		return
	}
	if w.gzip {
		var zbuf bytes.Buffer
		zw := gzip.NewWriter(&zbuf)
		zw.Write(out) // writes to a bytes.Buffer do not fail
		zw.Close()
		out = zbuf.Bytes()
	}
	h := w.Header()
	h.Set("Content-Length", strconv.Itoa(len(out)))
	if etag := h.Get("Etag"); etag != "" && !strings.HasPrefix(etag, "W/") {
		// Another body: no longer byte-for-byte the entity tagged.
		h.Set("Etag", "W/"+etag)
	}
	w.send(out, "")
}

// send writes the held response's header and then body.
func (w *responseWriter) send(body []byte, warn string) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.pass(w.status, warn)
	w.ResponseWriter.Write(body) // a client gone away is the server's to notice
}

var (
	_ http.Flusher                              = (*responseWriter)(nil)
	_ interface{ Unwrap() http.ResponseWriter } = (*responseWriter)(nil)
)
