package telemetry

import (
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
)

// exportErrorInterval is the least time between two log lines about
// failing exports: a collector that is down fails every batch.
const exportErrorInterval = 30 * time.Second

// errorLog logs the OpenTelemetry SDK's errors (mostly failed exports) to
// the process log, at most one line per exportErrorInterval, saying how
// many were left out in between.
type errorLog struct {
	log *slog.Logger

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// Handle implements otel.ErrorHandler.
func (e *errorLog) Handle(err error) {
	e.mu.Lock()
	now := time.Now()
	if now.Sub(e.last) < exportErrorInterval {
		e.suppressed++
		e.mu.Unlock()
		return
	}
	suppressed := e.suppressed
	e.last, e.suppressed = now, 0
	e.mu.Unlock()
	e.log.Warn("telemetry export failing; spans and metrics are dropped until it recovers",
		"err", err, "similar_errors_since_last_line", suppressed)
}

// installErrorLog sends the OpenTelemetry SDK's errors, which are
// process-wide, to log.
func installErrorLog(log *slog.Logger) {
	otel.SetErrorHandler(&errorLog{log: log})
}
