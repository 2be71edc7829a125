package pipeline

import (
	"context"
	"net/http"

	"github.com/sidemesh/sidemesh/telemetry"
)

// Telemetry returns the Observer that records every exchange in t: the
// server span, the request metrics and the access log line. A nil t
// returns nil, which a listener takes as no observer.
func Telemetry(t *telemetry.Telemetry) Observer {
	if t == nil {
		return nil
	}
	return telemetryObserver{t}
}

type telemetryObserver struct{ t *telemetry.Telemetry }

func (o telemetryObserver) Begin(ctx context.Context, r *http.Request, info *Info) context.Context {
	return o.t.BeginServer(ctx, r, info.Listener, info.Service, info.Start)
}

func (o telemetryObserver) End(ctx context.Context, r *http.Request, info *Info) {
	rec := telemetry.ServerRecord{
		Listener: info.Listener, Service: info.Service, Route: info.Route, Start: info.Start,
		Status: info.Status, BytesIn: info.BytesIn, BytesOut: info.BytesOut,
		Upstream: info.Upstream, Endpoint: info.Endpoint, Tries: info.Tries,
		Peer: info.Peer, PolicyRule: info.PolicyRule, PolicyAllowed: info.PolicyAllowed,
		RequestID: info.RequestID, Sticky: info.Sticky, Principal: info.Principal,
	}
	if info.Err != nil {
		rec.ErrorKind = string(info.Err.Kind)
	}
	o.t.EndServer(ctx, r, rec)
}
