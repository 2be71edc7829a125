package pipeline

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// Route is where a router sends a request: a name for logs and spans, the
// service it is for (a metric label, so only configured names), and the
// chain built for it when the config was applied.
type Route struct {
	Name    string
	Service string
	Handler Handler
}

// Router chooses the route of a request. A router must answer every
// request: one that matches nothing gets a fallback route whose handler
// says so (a 502 no_route, a 404). Route must not block; it is called on
// every request, from many goroutines.
type Router interface {
	Route(r *http.Request) *Route
}

// Observer watches every exchange on a listener: Begin once the route is
// known and before its chain runs, End when the response is complete
// (after an error was rendered, and even when the handler panicked).
// Telemetry is an observer rather than a filter so that it sees the final
// response, including one the renderer wrote. Both must be safe for
// concurrent use.
type Observer interface {
	// Begin returns the context the chain runs in (with a span, say).
	Begin(ctx context.Context, r *http.Request, info *Info) context.Context
	// End is called with the context Begin returned.
	End(ctx context.Context, r *http.Request, info *Info)
}

// ListenerOptions configure NewListener.
type ListenerOptions struct {
	// Name is the listener's role, as Info.Listener: inbound, outbound,
	// upstream/<name>.
	Name string
	// Router chooses each request's route. Required.
	Router Router
	// Renderer answers errors no handler answered. Nil means Text.
	Renderer Renderer
	// Observer, when set, watches every exchange.
	Observer Observer
	// BodyTimeout is the longest a request body may go without a byte
	// arriving: a body that stalls longer is cut (BodyError), so a client
	// cannot hold a connection and a goroutine by sending part of what it
	// announced. gRPC calls and upgraded connections are exempt (streams
	// may idle; HTTP/2 pings watch them). Zero means no limit.
	BodyTimeout time.Duration
}

// Listener is the http.Handler of one listener: it runs each request
// through the chain of its route. Safe for concurrent use.
type Listener struct {
	name        string
	router      Router
	render      Renderer
	obs         Observer
	bodyTimeout time.Duration
}

// NewListener returns the handler for o.
func NewListener(o ListenerOptions) *Listener {
	if o.Renderer == nil {
		o.Renderer = Text
	}
	return &Listener{name: o.Name, router: o.Router, render: o.Renderer, obs: o.Observer, bodyTimeout: o.BodyTimeout}
}

// exchange is a request's state on a listener, allocated once. It is also
// the request's context: the server's, with the Info added. (A
// context.WithValue would cost another allocation on every request.)
type exchange struct {
	context.Context
	info Info
	rw   recorder
	body countingBody
}

// Value returns the request's Info for InfoFrom, and what the server's
// context holds for any other key.
func (x *exchange) Value(key any) any {
	if key == (infoKey{}) {
		return &x.info
	}
	return x.Context.Value(key)
}

// ServeHTTP implements http.Handler.
func (l *Listener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{Context: r.Context(), rw: recorder{ResponseWriter: w}}
	info := &x.info
	info.Listener, info.Start = l.name, time.Now()
	route := l.router.Route(r)
	if route == nil {
		route = &unrouted
	}
	info.Route, info.Service = route.Name, route.Service
	var ctx context.Context = x
	if l.obs != nil {
		ctx = l.obs.Begin(ctx, r, info)
	}
	// The chain gets a copy of the request: the server's own keeps its
	// body, which net/http inspects after the handler to decide whether
	// the connection can carry another request.
	r = r.WithContext(ctx)
	if r.Body != nil && r.Body != http.NoBody {
		x.body.ReadCloser, x.body.info = r.Body, info
		if l.bodyTimeout > 0 && !IsGRPC(r) && r.Header.Get("Upgrade") == "" {
			x.body.rc, x.body.timeout = http.NewResponseController(w), l.bodyTimeout
		}
		r.Body = &x.body
	}
	defer l.end(ctx, r, x)
	err := route.Handler.ServeHTTP(&x.rw, r)
	if info.BodyErr != nil && err == nil && x.rw.status == 0 {
		err = info.BodyErr.Answer()
	}
	if info.BodyErr != nil {
		// A body that could not be read to a clean end leaves the
		// connection at an unknown place in the stream: whatever follows
		// could be read as a new request (request smuggling). Close it.
		closeConnection(&x.rw, r)
	}
	if err != nil {
		e := AsError(err)
		info.Err = e
		if x.rw.status == 0 {
			l.render.Render(&x.rw, r, e)
		}
	}
}

// closeConnection makes sure r's HTTP/1 connection carries no further
// request: "Connection: close" when the response has not started, else
// the connection is taken over and closed once the response so far is
// flushed. HTTP/2 needs nothing: each request is its own stream.
func closeConnection(w *recorder, r *http.Request) {
	if r.ProtoMajor != 1 {
		return
	}
	if w.status == 0 {
		w.Header().Set("Connection", "close")
		return
	}
	if conn, _, err := http.NewResponseController(w.ResponseWriter).Hijack(); err == nil {
		conn.Close()
	}
}

// end completes info and tells the observer. It runs deferred, so a
// handler that panicked (httputil.ReverseProxy aborting a response whose
// body broke) is still counted.
func (l *Listener) end(ctx context.Context, r *http.Request, x *exchange) {
	info := &x.info
	info.Status, info.BytesIn, info.BytesOut = x.rw.status, x.body.n, x.rw.bytes
	if l.obs != nil {
		l.obs.End(ctx, r, info)
	}
}

// unrouted is the route of a request a router returned nil for.
var unrouted = Route{
	Service: "unknown",
	Handler: HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return &Error{Status: http.StatusBadGateway, Kind: KindNoRoute, Msg: "no route for this request"}
	}),
}

// recorder records the status and body size of a response. It unwraps
// for http.ResponseController, so flushing, hijacking and full-duplex
// reach the server's writer.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *recorder) WriteHeader(code int) {
	// The first final status counts: 1xx interim responses (100
	// Continue, 103 Early Hints) do not, except 101, which is final for
	// an upgrade.
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Flush is here as well as through Unwrap because httputil.ReverseProxy
// and others test for http.Flusher directly.
func (w *recorder) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack takes over the connection, for a protocol upgrade: the reverse
// proxy hijacks to write the endpoint's 101 itself, so the status is
// recorded as 101 (Switching Protocols) here.
func (w *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && w.status == 0 {
		w.status = http.StatusSwitchingProtocols
	}
	return conn, brw, err
}

// Unwrap returns the server's writer, for http.ResponseController.
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the request body bytes read, records in Info the
// error that kept it from being read to its end, and, with a timeout,
// extends the connection's read deadline before each read.
type countingBody struct {
	io.ReadCloser
	n       int64
	info    *Info
	rc      *http.ResponseController // nil without a timeout
	timeout time.Duration
}

func (b *countingBody) Read(p []byte) (int, error) {
	if b.rc != nil {
		b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	}
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	if err != nil && err != io.EOF && b.info.BodyErr == nil {
		b.info.BodyErr = &BodyError{Err: err, Timeout: errors.Is(err, os.ErrDeadlineExceeded)}
	}
	return n, err
}

// BodyError is the error that kept a request body from being read to its
// end: the client sent a malformed body, stopped sending (Timeout), or went
// away. It is the client's failure, never the endpoint's.
type BodyError struct {
	Err     error
	Timeout bool
}

func (e *BodyError) Error() string {
	if e.Timeout {
		return "request body stalled: " + e.Err.Error()
	}
	return "reading the request body: " + e.Err.Error()
}

func (e *BodyError) Unwrap() error { return e.Err }

// Answer returns the error a request whose body failed is answered with:
// 408 when the body stalled, else 400.
func (e *BodyError) Answer() *Error {
	var tooBig *http.MaxBytesError
	if errors.As(e.Err, &tooBig) {
		return &Error{Status: http.StatusRequestEntityTooLarge, Kind: KindBadRequest, Msg: fmt.Sprintf("the request body is over %d bytes", tooBig.Limit), Err: e}
	}
	if e.Timeout {
		return &Error{Status: http.StatusRequestTimeout, Kind: KindBadRequest, Msg: e.Error(), Err: e}
	}
	return &Error{Status: http.StatusBadRequest, Kind: KindBadRequest, Msg: e.Error(), Err: e}
}
