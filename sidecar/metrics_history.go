package sidecar

import (
	"sort"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/admin"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/telemetry"
)

// adminHistory is the admin API's /history: the traffic history the
// telemetry samples every telemetry.HistoryInterval, for the local
// service (inbound) and for every configured HTTP upstream (outbound),
// in that order, upstreams by name. Each has a series, empty until its
// first request. Requests for no upstream ("unknown") and TCP proxying
// are left out.
func (s *Sidecar) adminHistory() admin.History {
	h := admin.History{
		IntervalSeconds: telemetry.HistoryInterval.Seconds(),
		WindowSeconds:   (telemetry.HistoryInterval * telemetry.HistoryPoints).Seconds(),
	}
	type key struct{ listener, service string }
	recorded := map[key]telemetry.HistorySeries{}
	for _, hs := range s.tel.History() {
		recorded[key{hs.Listener, hs.Service}] = hs
	}
	if svc := s.Config().Service; svc != nil && svc.Protocol != config.ProtocolTCP {
		h.Series = append(h.Series, historySeries(telemetry.ListenerInbound, svc.Name, recorded[key{telemetry.ListenerInbound, svc.Name}], false))
	}
	t := s.routes.Load()
	names := make([]string, 0, len(t.byName))
	for name, u := range t.byName {
		if u.proxy != nil {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		retries := t.byName[name].cfg.Retries.Attempts > 0
		h.Series = append(h.Series, historySeries(telemetry.ListenerOutbound, name, recorded[key{telemetry.ListenerOutbound, name}], retries))
	}
	return h
}

// historySeries converts one recorded series (the zero value when there
// is none yet) for the admin API; retries adds the retry counts.
func historySeries(listener, service string, hs telemetry.HistorySeries, retries bool) admin.HistorySeries {
	n := len(hs.Points)
	out := admin.HistorySeries{
		Listener: listener, Service: service,
		Time:              make([]int64, n),
		RequestsPerSecond: make([]float64, n),
		ErrorsPerSecond:   make([]float64, n),
		P50MS:             make([]float64, n),
		P99MS:             make([]float64, n),
	}
	if retries {
		out.Retries = &admin.RetryHistory{
			Total: hs.RetriesTotal, BudgetExhaustedTotal: hs.RetryBudgetExhaustedTotal,
			PerInterval: make([]uint64, n), BudgetExhaustedPerInterval: make([]uint64, n),
		}
	}
	for i, p := range hs.Points {
		out.Time[i] = p.End.UnixMilli()
		if p.Seconds > 0 {
			out.RequestsPerSecond[i] = float64(p.Requests) / p.Seconds
			out.ErrorsPerSecond[i] = float64(p.Errors) / p.Seconds
		}
		out.P50MS[i] = float64(p.P50) / float64(time.Millisecond)
		out.P99MS[i] = float64(p.P99) / float64(time.Millisecond)
		if out.Retries != nil {
			out.Retries.PerInterval[i] = p.Retries
			out.Retries.BudgetExhaustedPerInterval[i] = p.RetryBudgetExhausted
		}
	}
	return out
}
