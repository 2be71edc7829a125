package gossip

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/memberlist"
)

// Direct messages complement the epidemic: one member hands another a
// key's current version (PushKey) or asks for the version it holds
// (PullKey), and waits for the answer. They travel over memberlist's
// reliable stream (TCP), encrypted and authenticated with the pool's key
// like every other message, so only members can send them. A sticky
// session created on one edge is so known to its owner edge before the
// client gets the response, and another edge asks that owner on a miss
// instead of waiting for gossip to converge. A Call carries an opaque
// request to a handler another member registered (Handle) and its answer
// back, for exchanges that are not about one key, such as rate-limit
// counts.
//
//	ask:     msgAsk codecVersion id op from key [entry | payload]  (push: entry; call: payload)
//	answer:  msgAnswer codecVersion id flags [entry] [payload]     (flags: 1 found, 2 entry, 4 payload)
const (
	msgAsk    byte = 4
	msgAnswer byte = 5

	askPush byte = 1
	askPull byte = 2
	askCall byte = 3
)

// MaxCallPayload is the largest request or answer a Call carries.
const MaxCallPayload = 64 << 10

// ErrNoHandler is what Call returns when the member called has no
// handler of that name.
var ErrNoHandler = errors.New("gossip: no such handler")

// MaxDirectInFlight bounds the direct messages a member has in flight,
// asked and answered separately: an ask beyond it fails at once with
// ErrBusy, an ask to answer beyond it is dropped (its asker times out).
// A flood of misses (random session tokens) so costs a bounded number
// of connections, never a goroutine per request.
const MaxDirectInFlight = 64

// ErrBusy is returned by PushKey and PullKey when MaxDirectInFlight asks
// are already waiting.
var ErrBusy = errors.New("gossip: too many direct messages in flight")

// direct is a member's side of the direct messages: the asks it waits on,
// and its bounds. Safe for concurrent use.
type direct struct {
	store *Store
	name  string
	log   *slog.Logger
	ml    atomic.Pointer[memberlist.Memberlist] // set once by Start

	asking    chan struct{} // a token per ask in flight
	answering chan struct{} // a token per answer being sent

	mu       sync.Mutex
	next     uint64
	waiting  map[uint64]chan *answerMsg
	handlers map[string]Handler
}

// A Handler answers the Calls made to one name: from is the calling
// member, req its request. It runs on its own goroutine, at most
// MaxDirectInFlight of all of a member's handlers at once, and must
// return promptly (the caller waits); the answer is at most
// MaxCallPayload bytes.
type Handler func(from string, req []byte) []byte

func newDirect(store *Store, name string, log *slog.Logger) *direct {
	return &direct{
		store: store, name: name, log: log,
		asking:    make(chan struct{}, MaxDirectInFlight),
		answering: make(chan struct{}, MaxDirectInFlight),
		waiting:   make(map[uint64]chan *answerMsg),
		handlers:  make(map[string]Handler),
	}
}

// Handle registers h for the Calls made to name on this member,
// replacing any handler of that name; a nil h removes it.
func (p *Pool) Handle(name string, h Handler) {
	p.direct.mu.Lock()
	defer p.direct.mu.Unlock()
	if h == nil {
		delete(p.direct.handlers, name)
	} else {
		p.direct.handlers[name] = h
	}
}

// Call sends req to the handler named name on the member named node and
// returns its answer, or ErrNoHandler when node has none of that name.
// It fails at once with ErrBusy when MaxDirectInFlight asks are already
// waiting; ctx bounds the wait.
func (p *Pool) Call(ctx context.Context, node, name string, req []byte) ([]byte, error) {
	if len(req) > MaxCallPayload || name == "" || len(name) > MaxKeyLen {
		return nil, fmt.Errorf("gossip: call %s on %s: request of %d bytes or name %q out of bounds", name, node, len(req), name)
	}
	a, err := p.direct.askWith(ctx, node, askCall, name, nil, req)
	if err != nil {
		return nil, fmt.Errorf("gossip: call %s on %s: %w", name, node, err)
	}
	if !a.found {
		return nil, fmt.Errorf("gossip: call %s on %s: %w", name, node, ErrNoHandler)
	}
	return a.payload, nil
}

// PushKey sends this member's current version of key to the member
// named node and returns once node has merged it (or ctx ends). Use it to
// make a write known to one particular member at once.
func (p *Pool) PushKey(ctx context.Context, node, key string) error {
	e := p.store.current(key)
	if e == nil {
		return fmt.Errorf("gossip: push %q to %s: no such key", key, node)
	}
	_, err := p.direct.ask(ctx, node, askPush, key, e)
	if err != nil {
		return fmt.Errorf("gossip: push %q to %s: %w", key, node, err)
	}
	return nil
}

// PullKey asks the member named node for its version of key, merges it
// into this member's store (as gossip would), and reports whether node
// had a version of it. The merged version is visible through Get if it
// is live and newer than this member's.
func (p *Pool) PullKey(ctx context.Context, node, key string) (bool, error) {
	a, err := p.direct.ask(ctx, node, askPull, key, nil)
	if err != nil {
		return false, fmt.Errorf("gossip: pull %q from %s: %w", key, node, err)
	}
	if a.entry != nil {
		p.store.merge(a.entry)
	}
	return a.found, nil
}

// ask sends an ask to node and waits for its answer.
func (d *direct) ask(ctx context.Context, node string, op byte, key string, e *entry) (*answerMsg, error) {
	return d.askWith(ctx, node, op, key, e, nil)
}

// askWith is ask with a call's payload.
func (d *direct) askWith(ctx context.Context, node string, op byte, key string, e *entry, payload []byte) (*answerMsg, error) {
	if node == d.name {
		return nil, errors.New("cannot ask oneself")
	}
	select {
	case d.asking <- struct{}{}:
		defer func() { <-d.asking }()
	default:
		return nil, ErrBusy
	}
	to := d.member(node)
	if to == nil {
		return nil, fmt.Errorf("%s is not a live member", node)
	}
	ch := make(chan *answerMsg, 1)
	d.mu.Lock()
	d.next++
	id := d.next
	d.waiting[id] = ch
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.waiting, id)
		d.mu.Unlock()
	}()
	sent := make(chan error, 1)
	go func() { sent <- d.ml.Load().SendReliable(to, encodeAsk(id, op, d.name, key, e, payload)) }() // SendReliable takes no context
	for {
		select {
		case err := <-sent:
			if err != nil {
				return nil, err
			}
			sent = nil
		case a := <-ch:
			return a, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// member returns the live member named name.
func (d *direct) member(name string) *memberlist.Node {
	ml := d.ml.Load()
	if ml == nil {
		return nil // memberlist.Create has not returned yet
	}
	for _, n := range ml.Members() {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// handle applies a direct message; it never blocks (answers are sent
// from a goroutine, at most MaxDirectInFlight at once).
func (d *direct) handle(buf []byte) error {
	switch buf[0] {
	case msgAnswer:
		a, err := decodeAnswer(buf)
		if err != nil {
			return err
		}
		d.mu.Lock()
		ch := d.waiting[a.id]
		d.mu.Unlock()
		if ch != nil {
			select {
			case ch <- a:
			default: // a duplicate
			}
		}
		return nil
	case msgAsk:
		q, err := decodeAsk(buf)
		if err != nil {
			return err
		}
		a := &answerMsg{id: q.id}
		var h Handler
		switch q.op {
		case askPush:
			d.store.merge(q.entry)
			a.found = true
		case askPull:
			if e := d.store.current(q.key); e != nil && !d.store.ownerGone(e) {
				a.entry, a.found = e, !e.tombstone
			}
		case askCall:
			d.mu.Lock()
			h = d.handlers[q.key]
			d.mu.Unlock()
		}
		select {
		case d.answering <- struct{}{}:
		default:
			d.log.Warn("gossip: dropped a direct ask: too many answers in flight", "from", q.from)
			return nil
		}
		go func() {
			defer func() { <-d.answering }()
			if h != nil {
				a.found, a.payload = true, h(q.from, q.payload)
				if len(a.payload) > MaxCallPayload {
					d.log.Warn("gossip: a handler's answer is too large; answering none", "handler", q.key, "bytes", len(a.payload))
					a.found, a.payload = false, nil
				}
			}
			to := d.member(q.from)
			if to == nil {
				return
			}
			if err := d.ml.Load().SendReliable(to, encodeAnswer(a)); err != nil {
				d.log.Debug("gossip: answer a direct ask", "to", q.from, "err", err)
			}
		}()
		return nil
	}
	return fmt.Errorf("gossip: unknown direct message type %d", buf[0])
}

// isDirect reports whether buf is a direct message rather than a
// broadcast.
func isDirect(buf []byte) bool { return len(buf) > 0 && (buf[0] == msgAsk || buf[0] == msgAnswer) }

type askMsg struct {
	id      uint64
	op      byte
	from    string
	key     string // a call: the handler's name
	entry   *entry // askPush
	payload []byte // askCall
}

type answerMsg struct {
	id      uint64
	found   bool   // a call: the handler exists
	entry   *entry // askPull, when the answerer has a version
	payload []byte // a call's answer
}

func encodeAsk(id uint64, op byte, from, key string, e *entry, payload []byte) []byte {
	b := make([]byte, 0, 64+len(from)+len(key)+len(payload))
	b = append(b, msgAsk, codecVersion)
	b = binary.AppendUvarint(b, id)
	b = append(b, op)
	b = appendString(b, from)
	b = appendString(b, key)
	switch op {
	case askPush:
		b = appendEntry(b, e)
	case askCall:
		b = appendBytes(b, payload)
	}
	return b
}

func decodeAsk(buf []byte) (*askMsg, error) {
	r := reader{b: buf}
	r.header(msgAsk)
	q := &askMsg{id: r.uvarint(), op: r.byte(), from: r.string("from", MaxNodeNameLen), key: r.string("key", MaxKeyLen)}
	switch {
	case r.err != nil:
	case q.op == askPush:
		q.entry = r.entry()
		if r.err == nil && q.entry.key != q.key {
			r.fail(errors.New("pushed entry under another key"))
		}
	case q.op == askCall:
		q.payload = r.bytes("payload", MaxCallPayload)
	case q.op != askPull:
		r.fail(fmt.Errorf("unknown ask %d", q.op))
	}
	if r.err == nil && (q.from == "" || q.key == "") {
		r.fail(errors.New("ask without sender or key"))
	}
	r.end()
	if r.err != nil {
		return nil, fmt.Errorf("gossip: decode ask: %w", r.err)
	}
	return q, nil
}

// Answer flags.
const (
	answerFound   = 1
	answerEntry   = 2
	answerPayload = 4
)

func encodeAnswer(a *answerMsg) []byte {
	b := make([]byte, 0, 64+len(a.payload))
	b = append(b, msgAnswer, codecVersion)
	b = binary.AppendUvarint(b, a.id)
	var flags byte
	if a.found {
		flags |= answerFound
	}
	if a.entry != nil {
		flags |= answerEntry
	}
	if a.payload != nil {
		flags |= answerPayload
	}
	b = append(b, flags)
	if a.entry != nil {
		b = appendEntry(b, a.entry)
	}
	if a.payload != nil {
		b = appendBytes(b, a.payload)
	}
	return b
}

func decodeAnswer(buf []byte) (*answerMsg, error) {
	r := reader{b: buf}
	r.header(msgAnswer)
	a := &answerMsg{id: r.uvarint()}
	flags := r.byte()
	if r.err == nil && flags > answerFound|answerEntry|answerPayload {
		r.fail(fmt.Errorf("unknown answer flags %#x", flags))
	}
	a.found = flags&answerFound != 0
	if r.err == nil && flags&answerEntry != 0 {
		a.entry = r.entry()
	}
	if r.err == nil && flags&answerPayload != 0 {
		a.payload = r.bytes("payload", MaxCallPayload)
		if a.payload == nil {
			a.payload = []byte{}
		}
	}
	r.end()
	if r.err != nil {
		return nil, fmt.Errorf("gossip: decode answer: %w", r.err)
	}
	return a, nil
}

// current returns the stored version of key, tombstones and expired
// versions included; nil when there is none.
func (s *Store) current(key string) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.records[key]; r != nil {
		return r.entry
	}
	return nil
}

// ownerGone reports whether e is a tied entry of an incarnation known to
// be gone.
func (s *Store) ownerGone(e *entry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ownerGoneLocked(e)
}

// merge applies a version of a key received directly from a member, as
// one from a push/pull (it is gossiped on if it wins).
func (s *Store) merge(e *entry) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyLocked(e, false, now)
}
