package proxy

// NewRequestID exposes newRequestID to the external tests and benchmarks.
var NewRequestID = newRequestID
