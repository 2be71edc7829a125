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

// accessEntry is what one access log line says.
type accessEntry struct {
	listener, service string
	r                 *http.Request
	status            int
	bytesIn, bytesOut int64
	duration          time.Duration
	ex                *Exchange
	span              trace.SpanContext
}

// logAccess writes e's line:
//
//	{"time":"...","msg":"access","listener":"outbound","service":"catalog",
//	 "method":"GET","host":"catalog","path":"/items","proto":"HTTP/1.1",
//	 "status":200,"duration_ms":1.93,"bytes_in":0,"bytes_out":512,
//	 "client":"127.0.0.1","upstream":"catalog","endpoint":"10.0.0.7:21000",
//	 "tries":1,"retries":0,"request_id":"...","trace_id":"...","span_id":"..."}
//
// error (the proxy's failure kind), peer (the caller's SPIFFE ID),
// policy_rule, user_agent and the trace ids appear when known.
func (t *Telemetry) logAccess(ctx context.Context, e accessEntry) {
	r, ex := e.r, e.ex
	attrs := make([]slog.Attr, 0, 24)
	attrs = append(attrs,
		slog.String("listener", e.listener),
		slog.String("service", e.service),
		slog.String("method", r.Method),
		slog.String("host", r.Host),
		slog.String("path", r.URL.Path),
		slog.String("proto", r.Proto),
		slog.Int("status", e.status),
		slog.Float64("duration_ms", float64(e.duration.Microseconds())/1000),
		slog.Int64("bytes_in", e.bytesIn),
		slog.Int64("bytes_out", e.bytesOut),
		slog.String("client", remoteHost(r.RemoteAddr)),
	)
	if ex.Upstream != "" {
		attrs = append(attrs,
			slog.String("upstream", ex.Upstream),
			slog.String("endpoint", ex.Endpoint),
			slog.Int("tries", ex.Tries),
			slog.Int("retries", max(ex.Tries-1, 0)),
		)
	}
	if ex.ErrorKind != "" {
		attrs = append(attrs, slog.String("error", ex.ErrorKind))
	}
	if ex.Peer != "" {
		attrs = append(attrs, slog.String("peer", ex.Peer))
	}
	if ex.PolicyRule != "" {
		attrs = append(attrs, slog.String("policy_rule", ex.PolicyRule))
	}
	if id := ex.RequestID; id != "" {
		attrs = append(attrs, slog.String("request_id", id))
	} else if id := r.Header.Get("X-Request-Id"); id != "" {
		attrs = append(attrs, slog.String("request_id", id))
	}
	if ua := r.UserAgent(); ua != "" {
		attrs = append(attrs, slog.String("user_agent", ua))
	}
	if e.span.IsValid() {
		attrs = append(attrs,
			slog.String("trace_id", e.span.TraceID().String()),
			slog.String("span_id", e.span.SpanID().String()),
			slog.Bool("sampled", e.span.IsSampled()),
		)
	}
	t.access.LogAttrs(ctx, slog.LevelInfo, "access", attrs...)
}
