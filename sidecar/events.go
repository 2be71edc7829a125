package sidecar

import (
	"fmt"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/admin"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

// The admin API's /events lists the last availability events: an
// endpoint's breaker, ejection and health changes (recorded by the
// balancer's event hook, recordEvent in upstreams.go), gossip members
// joining and leaving (found by telemetry polling the pool), and config
// reloads (RecordReload). They are kept in the telemetry's event log.

// Event kinds of config reloads.
const (
	eventConfigReloaded = "config_reloaded"
	eventConfigRejected = "config_rejected"
)

// RecordReload records a config reload in the admin API's event list:
// applied when err is nil, refused with err otherwise. Reload records
// the configs it applies or refuses; the command line calls it for a
// config file that does not even load, which never reaches Reload. Call
// it after Start; it does not block, and does nothing before Start or on
// a nil s.
func (s *Sidecar) RecordReload(err error) {
	if s == nil {
		return
	}
	if err != nil {
		s.tel.RecordEvent(eventConfigRejected, "config", "reload refused; the running config keeps serving: "+err.Error())
		return
	}
	n := len(s.routes.Load().byName)
	s.tel.RecordEvent(eventConfigReloaded, "config", fmt.Sprintf("new config applied: %d upstream%s", n, plural(n)))
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// describeEvent returns the subject and detail of a balancer event:
// "upstream/host:port" (the endpoint's ID when it has already left), and
// what happened in words.
func describeEvent(ev balancer.Event) (subject, detail string) {
	addr := ev.Addr
	if addr == "" {
		addr = ev.Endpoint
	}
	subject = ev.Service + "/" + addr
	switch ev.Kind {
	case balancer.BreakerOpened:
		detail = "circuit breaker opened: no requests until it half-opens"
	case balancer.BreakerHalfOpen:
		detail = "circuit breaker half-open: a few requests probe the endpoint"
	case balancer.BreakerClosed:
		detail = "circuit breaker closed: the endpoint takes requests again"
	case balancer.Ejected:
		detail = "ejected as an outlier"
		if !ev.Until.IsZero() {
			detail += " until " + ev.Until.UTC().Format(time.RFC3339)
		}
	case balancer.Restored:
		detail = "back from its ejection"
	case balancer.Unhealthy:
		detail = "failing its active health checks"
	case balancer.Healthy:
		detail = "passing its active health checks again"
	default:
		detail = string(ev.Kind)
	}
	if ev.Endpoint != "" && ev.Endpoint != addr {
		detail += " (endpoint " + ev.Endpoint + ")"
	}
	return subject, detail
}

// adminEvents converts the telemetry's event log for the admin API.
func (s *Sidecar) adminEvents() []admin.Event {
	evs := s.tel.Events()
	out := make([]admin.Event, len(evs))
	for i, e := range evs {
		out[i] = admin.Event{Seq: e.Seq, Time: e.Time, Kind: e.Kind, Subject: e.Subject, Detail: e.Detail}
	}
	return out
}
