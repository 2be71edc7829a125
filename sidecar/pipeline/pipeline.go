// Package pipeline is what every listener shares: handlers that return
// errors, filters that wrap a next handler, chains built once per config,
// the per-request Info, and the renderers that turn an error into a
// response.
//
// A request on a listener flows like this (Listener.ServeHTTP):
//
//  1. The listener allocates the request's state once: its Info and a
//     response recorder.
//  2. The Router picks the Route: its name, the service it is for, and the
//     Handler chain built for it when the config was applied. A request
//     that matches nothing gets the router's fallback route, so it is
//     measured and answered like any other.
//  3. The Observer begins (telemetry: the server span, requests in
//     flight), with the route already known: nothing is resolved twice.
//  4. The route's chain runs: filters in order (fs[0] of Chain outermost),
//     then the handler (the proxy, the local app, a redirect...). A filter
//     may answer on its own (a 403) or return an error.
//  5. An error that no one answered is rendered once, by the listener's
//     Renderer: a text body with X-Sidemesh-Error, or a gRPC status for
//     gRPC callers.
//  6. The Observer ends (span, metrics, access log) with the final status
//     and byte counts, even when the handler panicked.
package pipeline

import "net/http"

// Handler serves a request, or returns the error that kept it from being
// served. A handler that returns an error must not have written the
// response: the listener renders it. An error after the response started
// (a body cut short) is returned all the same; it is recorded, and the
// listener knows not to write.
type Handler interface {
	ServeHTTP(w http.ResponseWriter, r *http.Request) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// ServeHTTP calls f.
func (f HandlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

// Filter is one step in front of a handler: it may change the request,
// answer it itself, or call next. Filters are built once per config and
// shared by every request: they must be safe for concurrent use and keep
// per-request state in the request (its Info, its context).
type Filter interface {
	Serve(w http.ResponseWriter, r *http.Request, next Handler) error
}

// FilterFunc adapts a function to Filter.
type FilterFunc func(w http.ResponseWriter, r *http.Request, next Handler) error

// Serve calls f.
func (f FilterFunc) Serve(w http.ResponseWriter, r *http.Request, next Handler) error {
	return f(w, r, next)
}

// Chain returns h behind the filters fs: fs[0] sees the request first and
// the response last. Nil filters are skipped, so optional steps can be
// listed unconditionally. The chain is built once; calling it allocates
// nothing.
func Chain(h Handler, fs ...Filter) Handler {
	for i := len(fs) - 1; i >= 0; i-- {
		if fs[i] != nil {
			h = link{f: fs[i], next: h}
		}
	}
	return h
}

// link is one filter and what follows it.
type link struct {
	f    Filter
	next Handler
}

func (l link) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return l.f.Serve(w, r, l.next) }
