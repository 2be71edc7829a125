package gossip

import (
	"slices"
	"strconv"
	"strings"
	"time"
)

// MemberState is a member's state as far as this member knows.
type MemberState int

const (
	// MemberAlive: the member is in the pool. memberlist v0.7.0 does not
	// expose suspicion, so a suspected member is reported alive until it
	// is declared dead.
	MemberAlive MemberState = iota
	// MemberDead: memberlist's failure detection declared it dead.
	MemberDead
	// MemberLeft: it left gracefully.
	MemberLeft
)

// String returns "alive", "dead" or "left".
func (s MemberState) String() string {
	switch s {
	case MemberAlive:
		return "alive"
	case MemberDead:
		return "dead"
	case MemberLeft:
		return "left"
	}
	return "MemberState(" + strconv.Itoa(int(s)) + ")"
}

// Member is one member of the pool, for admin views.
type Member struct {
	Name string
	// Addr is the member's gossip "host:port".
	Addr  string
	State MemberState
	// Since is when this member last saw the state change.
	Since time.Time
}

// member is what a Store knows of one node's membership.
type member struct {
	incarnation uint64
	addr        string
	state       MemberState
	since       time.Time
}

// updateMemberLocked applies f to the record of node name (creating it
// if needed) and signals the keys whose visibility changed. Caller holds
// s.mu.
func (s *Store) updateMemberLocked(name string, now time.Time, f func(m *member)) {
	keys := s.byOwner[name]
	before := make(map[string]bool, len(keys))
	for k := range keys {
		before[k] = s.visibleLocked(s.records[k], now)
	}
	m := s.members[name]
	if m == nil {
		m = &member{}
		s.members[name] = m
	}
	f(m)
	var alive int64
	for _, m := range s.members {
		if m.state == MemberAlive {
			alive++
		}
	}
	s.alive.Store(alive)
	for k := range keys {
		if s.visibleLocked(s.records[k], now) != before[k] {
			s.changedLocked(k)
		}
	}
}

// memberAlive records that incarnation of node name is alive at addr
// (memberlist NotifyJoin or NotifyUpdate). Tied entries of any other
// incarnation of name are hidden from then on.
func (s *Store) memberAlive(name string, incarnation uint64, addr string) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.members[name]; name == s.node || (m != nil && m.incarnation == incarnation && m.state != MemberDead) {
		if m != nil {
			m.addr = addr // a left incarnation never comes back
		}
		return
	}
	s.updateMemberLocked(name, now, func(m *member) {
		*m = member{incarnation: incarnation, addr: addr, state: MemberAlive, since: now}
	})
}

// memberGone records that node name left or was declared dead (memberlist
// NotifyLeave); its tied entries are hidden at once.
func (s *Store) memberGone(name string) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.members[name]; name == s.node || m == nil || m.state != MemberAlive {
		return
	}
	s.updateMemberLocked(name, now, func(m *member) {
		m.state = MemberDead
		m.since = now
	})
}

// memberLeavingLocked records a leave intent: incarnation of node name is
// leaving gracefully. It reports whether this was news, to be passed on.
func (s *Store) memberLeavingLocked(name string, incarnation uint64, now time.Time) bool {
	m := s.members[name]
	if name == s.node || (m != nil && (m.incarnation != incarnation || m.state == MemberLeft)) {
		return false
	}
	s.updateMemberLocked(name, now, func(m *member) {
		m.incarnation = incarnation
		m.state = MemberLeft
		m.since = now
	})
	return true
}

// leave marks this node as leaving: its tied entries disappear from the
// local view, and a leave intent is queued so that others mark it left
// (rather than dead) and drop its tied entries at once.
func (s *Store) leave() {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updateMemberLocked(s.node, now, func(m *member) {
		m.state = MemberLeft
		m.since = now
	})
	s.queueLocked("l"+s.node, encodeLeaveMsg(s.node, s.incarnation))
}

// MemberAlive reports whether memberlist has reported the member named
// name alive (this node counts once it has joined). Unlike the visibility
// of name's tied entries, there is no grace for a member not reported
// yet: what this store shows of name may arrive before memberlist can
// reach it, and a caller about to send to name wants the latter.
func (s *Store) MemberAlive(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.members[name]
	return m != nil && m.state == MemberAlive
}

// membersSnapshot returns what the store knows of every member, sorted by
// name.
func (s *Store) membersSnapshot() []Member {
	s.mu.Lock()
	out := make([]Member, 0, len(s.members))
	for name, m := range s.members {
		out = append(out, Member{Name: name, Addr: m.addr, State: m.state, Since: m.since})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}
