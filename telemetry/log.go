// Package telemetry holds what sidemesh tells operators about itself: the
// process log; OpenTelemetry traces (W3C propagation, OTLP export) and
// metrics (the Prometheus exposition, OTLP push); the server side of each
// request (BeginServer, EndServer), each outbound try (Client) and the
// access log. It knows nothing of the request pipeline: the sidecar hands
// it plain values.
package telemetry

import (
	"fmt"
	"io"
	"log/slog"
)

// NewLogger returns the process logger writing to w. level is debug, info,
// warn or error; format is text or json. Both are checked by config
// validation; anything else is an error here too.
func NewLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("telemetry: log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		// Durations as "1.5s", as the text format writes them, not as
		// integer nanoseconds.
		opts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				a.Value = slog.StringValue(a.Value.Duration().String())
			}
			return a
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("telemetry: unknown log format %q (want text or json)", format)
	}
}
