package telemetry

import (
	"slices"
	"sync"
	"time"
)

// DefaultEventLogSize is how many events an EventLog made by New keeps.
const DefaultEventLogSize = 100

// Event kinds telemetry records by itself, from Observed.Members. The
// callers of RecordEvent add their own (the sidecar: an endpoint's
// breaker_opened, ejected, unhealthy..., config_reloaded).
const (
	EventMemberJoined = "member_joined"
	EventMemberLeft   = "member_left"
	EventMemberFailed = "member_failed"
)

// Event is one thing that happened to the availability of what the
// process depends on: an endpoint's breaker opening, a gossip member
// leaving, a config reload.
type Event struct {
	// Seq numbers events from 1 in the order they were recorded.
	Seq  uint64
	Time time.Time
	// Kind says what happened, in snake_case: breaker_opened,
	// member_joined, config_reloaded...
	Kind string
	// Subject is what it happened to: "upstream/host:port" for an
	// endpoint, a member's name, "config".
	Subject string
	// Detail says more, for a person.
	Detail string
}

// EventLog keeps the last events recorded, in a ring of fixed size. It is
// safe for concurrent use; Add takes a mutex for a few stores and never
// blocks otherwise, so request paths may call it. A nil *EventLog records
// nothing.
type EventLog struct {
	mu   sync.Mutex
	ring []Event
	next int    // where the next event goes
	seq  uint64 // the Seq of the last event
}

// NewEventLog returns a log that keeps the last size events (at least 1).
func NewEventLog(size int) *EventLog {
	return &EventLog{ring: make([]Event, 0, max(size, 1))}
}

// Add records an event that happens now.
func (l *EventLog) Add(kind, subject, detail string) {
	if l == nil {
		return
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	e := Event{Seq: l.seq, Time: now, Kind: kind, Subject: subject, Detail: detail}
	if len(l.ring) < cap(l.ring) {
		l.ring = append(l.ring, e)
		return
	}
	l.ring[l.next] = e
	l.next = (l.next + 1) % len(l.ring)
}

// Events returns the events kept, newest first, as a copy.
func (l *EventLog) Events() []Event {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Event, 0, len(l.ring))
	for i := range l.ring {
		// The newest is just before next (the end, until the ring wraps).
		j := (l.next - 1 - i + 2*len(l.ring)) % len(l.ring)
		out = append(out, l.ring[j])
	}
	return out
}

// RecordEvent adds an event to the process's event log (see Events).
// Safe for concurrent use and cheap enough for request paths; a nil t
// records nothing.
func (t *Telemetry) RecordEvent(kind, subject, detail string) {
	if t != nil {
		t.events.Add(kind, subject, detail)
	}
}

// Events returns the last DefaultEventLogSize events, newest first: those
// given to RecordEvent and the gossip membership changes telemetry finds
// by polling Observed.Members. Nil for a nil t.
func (t *Telemetry) Events() []Event {
	if t == nil {
		return nil
	}
	return t.events.Events()
}

// RecordEvent adds an event to the log of the Telemetry m belongs to: the
// way for code that holds only the instruments (a balancer's event hook)
// to record one. Safe for concurrent use; a nil m records nothing.
func (m *Metrics) RecordEvent(kind, subject, detail string) {
	if m != nil {
		m.events.Add(kind, subject, detail)
	}
}

// Member is a gossip pool member as Observed.Members reports it.
type Member struct {
	Name string
	// Addr is the member's gossip "host:port".
	Addr string
	// State is alive, dead (declared dead by failure detection) or left
	// (left gracefully).
	State string
}

// memberWatch turns successive views of the gossip pool into events.
// Called from one goroutine.
type memberWatch struct {
	known map[string]Member // nil until the first poll
}

// poll compares members with the previous view and records what changed
// in log: a member that appears alive (or comes back) joined; one that
// was alive and is now left, or gone from the view, left; one declared
// dead failed. The first poll only takes the view in: members present
// at startup are not news.
func (w *memberWatch) poll(members []Member, log *EventLog) {
	next := make(map[string]Member, len(members))
	for _, m := range members {
		next[m.Name] = m
	}
	if w.known == nil {
		w.known = next
		return
	}
	for _, m := range members {
		before, seen := w.known[m.Name]
		switch {
		case m.State == "alive" && (!seen || before.State != "alive"):
			log.Add(EventMemberJoined, m.Name, "joined the gossip pool at "+m.Addr)
		case m.State == "left" && seen && before.State == "alive":
			log.Add(EventMemberLeft, m.Name, "left the gossip pool")
		case m.State == "dead" && seen && before.State == "alive":
			log.Add(EventMemberFailed, m.Name, "declared dead by the gossip pool's failure detection")
		}
	}
	var gone []string
	for name, before := range w.known {
		if _, ok := next[name]; !ok && before.State == "alive" {
			gone = append(gone, name)
		}
	}
	slices.Sort(gone)
	for _, name := range gone {
		log.Add(EventMemberLeft, name, "no longer in the gossip pool")
	}
	w.known = next
}
