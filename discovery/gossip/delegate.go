package gossip

import (
	"bytes"
	"context"
	"log/slog"
	"strings"

	"github.com/hashicorp/memberlist"
)

// delegate connects a Store to memberlist's gossip. memberlist calls its
// methods concurrently from its packet and stream handlers; none of them
// blocks (they take the store's mutex briefly and never wait on a
// channel), and none keeps a reference to a buffer it is given: decoding
// copies every key, owner and value.
type delegate struct {
	store  *Store
	direct *direct
	log    *slog.Logger
}

// NodeMeta returns this node's incarnation, which lets other members tell
// a restarted process from its predecessor of the same name.
func (d *delegate) NodeMeta(limit int) []byte {
	meta := encodeMeta(d.store.incarnation)
	if len(meta) > limit {
		return nil // cannot happen: at most 11 bytes
	}
	return meta
}

// NotifyMsg applies a broadcast or a direct message received from
// another member.
func (d *delegate) NotifyMsg(buf []byte) {
	if isDirect(buf) {
		if err := d.direct.handle(buf); err != nil {
			d.log.Warn("gossip: dropped a direct message", "err", err, "bytes", len(buf))
		}
		return
	}
	if err := d.store.handleMessage(buf); err != nil {
		d.log.Warn("gossip: dropped a broadcast", "err", err, "bytes", len(buf))
	}
}

// GetBroadcasts hands memberlist the queued broadcasts that fit in limit.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.store.queue.GetBroadcasts(overhead, limit)
}

// LocalState returns the whole store for a push/pull.
func (d *delegate) LocalState(join bool) []byte {
	return d.store.localState()
}

// MergeRemoteState merges the store of the member at the other end of a
// push/pull.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	if err := d.store.mergeRemoteState(buf); err != nil {
		d.log.Warn("gossip: dropped a remote state", "err", err, "bytes", len(buf), "join", join)
	}
}

// events tracks membership for the Store. memberlist calls it with its
// node lock held, one call at a time: it must not call back into
// memberlist, and does not.
type events struct {
	store *Store
	log   *slog.Logger
}

// NotifyJoin records a member (or a new incarnation of one) as alive.
func (e *events) NotifyJoin(n *memberlist.Node) {
	e.log.Info("gossip: member joined", "member", n.Name, "addr", n.Address())
	e.alive(n)
}

// NotifyUpdate handles changed meta, which is how a restarted node with a
// reused name announces its new incarnation.
func (e *events) NotifyUpdate(n *memberlist.Node) { e.alive(n) }

// NotifyLeave hides the tied entries of a member that left or was
// declared dead.
func (e *events) NotifyLeave(n *memberlist.Node) {
	e.log.Info("gossip: member gone", "member", n.Name, "addr", n.Address())
	e.store.memberGone(n.Name)
}

func (e *events) alive(n *memberlist.Node) {
	inc, err := decodeMeta(n.Meta)
	if err != nil {
		// Not a sidemesh member, or an incompatible one: it stays in the
		// membership, but none of its tied entries will be shown.
		e.log.Warn("gossip: member without a readable incarnation", "member", n.Name, "err", err)
	}
	e.store.memberAlive(n.Name, inc, n.Address())
}

// broadcast is a named gossip message: queueing a newer version of a key
// replaces any queued older one.
type broadcast struct {
	name string
	msg  []byte
}

// Invalidates reports whether b replaces o: same name.
func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	nb, ok := o.(memberlist.NamedBroadcast)
	return ok && nb.Name() == b.name
}

// Name identifies the key (or leaving node) the broadcast is about.
func (b *broadcast) Name() string { return b.name }

// Message returns the encoded broadcast; it is never modified.
func (b *broadcast) Message() []byte { return b.msg }

// Finished does nothing: nobody waits for a broadcast to go out.
func (b *broadcast) Finished() {}

// sentinel is a broadcast too large to ever fit in a packet (UDP
// payloads are below 64 KiB), queued once so that the queue is never
// empty. memberlist v0.7.0's TransmitLimitedQueue resets its id generator
// whenever the queue becomes empty, including in the middle of queueing a
// named broadcast that replaces the only queued one; the next broadcasts
// then reuse ids, and one whose length equals a queued one's silently
// replaces it, losing that key's update until the next push/pull
// (hashicorp/memberlist#263, unfixed in v0.7.0).
type sentinel struct{}

var sentinelMsg = make([]byte, 1<<16)

func (sentinel) Invalidates(memberlist.Broadcast) bool { return false }
func (sentinel) Message() []byte                       { return sentinelMsg }
func (sentinel) Finished()                             {}
func (sentinel) UniqueBroadcast()                      {}

// logWriter routes memberlist's log lines ("[LEVEL] memberlist: text") to
// a slog.Logger at debug level, keeping memberlist's level as an
// attribute.
type logWriter struct {
	log *slog.Logger
}

func (w logWriter) Write(p []byte) (int, error) {
	if !w.log.Enabled(context.Background(), slog.LevelDebug) {
		return len(p), nil
	}
	line := string(bytes.TrimSpace(p))
	level := ""
	if strings.HasPrefix(line, "[") {
		if i := strings.IndexByte(line, ']'); i > 0 {
			level, line = line[1:i], strings.TrimSpace(line[i+1:])
		}
	}
	w.log.Debug(line, "memberlist_level", level)
	return len(p), nil
}

var (
	_ memberlist.Delegate       = (*delegate)(nil)
	_ memberlist.EventDelegate  = (*events)(nil)
	_ memberlist.NamedBroadcast = (*broadcast)(nil)
)
