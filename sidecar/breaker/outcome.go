// Package breaker keeps endpoints that keep failing out of the way of
// requests: a circuit breaker per endpoint (Breaker) and outlier ejection
// per upstream (Outlier, with a Host per endpoint).
//
// Both are built for a balancer's pickers: Breaker.Allow and Host.Ejected
// are lock-free, never allocate and never block, so they can be asked on
// every pick. Outcomes are fed back with Breaker.Record and Outlier.Record
// when a request ends. State changes are reported through callbacks that
// are never called with one of this package's locks held, are delivered in
// the order the changes happened, one at a time, and must not block for
// long (see New and NewOutlier).
//
// A client that hangs up says nothing about the endpoint: outcomes marked
// Local are never counted, in the manner of Caddy's passive health checks.
package breaker

// Outcome is what became of one request, as the breaker and outlier
// detection see it.
type Outcome struct {
	// Status is the HTTP status of the response, 0 when there was no
	// response. A zero Status without Transport (a TCP connection that
	// ended cleanly, say) counts as a success.
	Status int
	// Transport is set when there was no usable response from the
	// endpoint: connect failure, timeout or reset. It always counts as a
	// failure (and as a 5xx and a gateway error for outlier detection).
	Transport bool
	// Local is set when the request ended for a reason that says nothing
	// about the endpoint (the client hung up). Local outcomes are never
	// counted, whatever Status and Transport say.
	Local bool
}

// is5xx reports whether o counts as a 5xx for outlier detection: a status
// from 500 to 599, or a transport failure. Local outcomes never do.
func (o Outcome) is5xx() bool {
	return !o.Local && (o.Transport || o.Status >= 500 && o.Status <= 599)
}

// isGatewayError reports whether o counts as a gateway error for outlier
// detection: 502, 503, 504 or a transport failure. Local outcomes never do.
func (o Outcome) isGatewayError() bool {
	return !o.Local && (o.Transport || o.Status == 502 || o.Status == 503 || o.Status == 504)
}
