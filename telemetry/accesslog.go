package telemetry

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// newAccessLogger returns the access log's logger: JSON lines on w, one
// per request, with slog's time, level and msg keys and the fields
// logAccess adds. Writes to w are serialised by slog.
func newAccessLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.LevelKey {
				return slog.Attr{} // every line is the same level
			}
			return a
		},
	}))
}

// logAccess writes rec's line, d its duration and span its trace:
//
//	{"time":"...","msg":"access","listener":"outbound","service":"catalog",
//	 "method":"GET","host":"catalog","path":"/items","proto":"HTTP/1.1",
//	 "status":200,"duration_ms":1.93,"bytes_in":0,"bytes_out":512,
//	 "client":"127.0.0.1","upstream":"catalog","endpoint":"10.0.0.7:21000",
//	 "tries":1,"retries":0,"request_id":"...","trace_id":"...","span_id":"..."}
//
// error (the failure kind), peer (the caller's SPIFFE ID), policy_rule
// and policy_decision (allow or deny), user_agent and the trace ids
// appear when known.
func (t *Telemetry) logAccess(ctx context.Context, r *http.Request, rec *ServerRecord, d time.Duration, span trace.SpanContext) {
	attrs := make([]slog.Attr, 0, 24)
	attrs = append(attrs,
		slog.String("listener", rec.Listener),
		slog.String("service", rec.Service),
		slog.String("method", r.Method),
		slog.String("host", r.Host),
		slog.String("path", r.URL.Path),
		slog.String("proto", r.Proto),
		slog.Int("status", rec.Status),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.Int64("bytes_in", rec.BytesIn),
		slog.Int64("bytes_out", rec.BytesOut),
		slog.String("client", remoteHost(r.RemoteAddr)),
	)
	if rec.Route != "" {
		attrs = append(attrs, slog.String("route", rec.Route))
	}
	if rec.Principal != "" {
		attrs = append(attrs, slog.String("principal", rec.Principal))
	}
	if rec.Sticky != "" {
		attrs = append(attrs, slog.String("sticky", rec.Sticky))
	}
	if rec.Upstream != "" {
		attrs = append(attrs,
			slog.String("upstream", rec.Upstream),
			slog.String("endpoint", rec.Endpoint),
			slog.Int("tries", rec.Tries),
			slog.Int("retries", max(rec.Tries-1, 0)),
		)
	}
	if rec.ErrorKind != "" {
		attrs = append(attrs, slog.String("error", rec.ErrorKind))
	}
	if rec.Peer != "" {
		attrs = append(attrs, slog.String("peer", rec.Peer))
	}
	if rec.PolicyRule != "" {
		decision := "deny"
		if rec.PolicyAllowed {
			decision = "allow"
		}
		attrs = append(attrs, slog.String("policy_rule", rec.PolicyRule), slog.String("policy_decision", decision))
	}
	if id := rec.RequestID; id != "" {
		attrs = append(attrs, slog.String("request_id", id))
	} else if id := r.Header.Get("X-Request-Id"); id != "" {
		attrs = append(attrs, slog.String("request_id", id))
	}
	if ua := r.UserAgent(); ua != "" {
		attrs = append(attrs, slog.String("user_agent", ua))
	}
	if span.IsValid() {
		attrs = append(attrs,
			slog.String("trace_id", span.TraceID().String()),
			slog.String("span_id", span.SpanID().String()),
			slog.Bool("sampled", span.IsSampled()),
		)
	}
	t.access.LogAttrs(ctx, slog.LevelInfo, "access", attrs...)
}
