package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire format. Every message starts with a type byte and a codec version
// byte; integers are unsigned varints (encoding/binary), strings and byte
// slices are a varint length followed by the bytes. Everything read from
// the wire is bounded by the limits below, so a decoder never allocates
// more than the input it was given and rejects garbage with an error.
//
//	entry message  (broadcast):  msgEntry codecVersion entry
//	leave message  (broadcast):  msgLeave codecVersion incarnation node
//	state message  (push/pull):  msgState codecVersion clock count entry*count
//	entry:  flags version incarnation owner key [expires] value
//	node meta:                   metaVersion incarnation
const (
	msgEntry byte = 1
	msgState byte = 2
	msgLeave byte = 3

	codecVersion byte = 1
	metaVersion  byte = 1
)

// Entry flags.
const (
	flagTombstone byte = 1 << iota
	flagTied
	flagExpires

	knownFlags = flagTombstone | flagTied | flagExpires
)

// Limits on what a Store accepts, locally and from the wire. An encoded
// entry with the largest key, value and owner (about 1.3 KB) still fits in
// one gossip packet of memberlist's default 1400-byte UDP buffer,
// encryption overhead included.
const (
	// MaxKeyLen is the longest key a Store accepts, in bytes.
	MaxKeyLen = 128
	// MaxValueLen is the largest value a Store accepts, in bytes.
	MaxValueLen = 1024
	// MaxNodeNameLen is the longest node name (entry owner), in bytes.
	MaxNodeNameLen = 128
	// MaxStateSize bounds a push/pull state, in bytes. It is below
	// memberlist's own 20 MiB limit on user state, beyond which the remote
	// side would reject the whole push/pull, membership included.
	MaxStateSize = 16 << 20

	// maxVersion bounds versions from the wire so that a Lamport clock that
	// witnessed one can still count up without overflowing.
	maxVersion = 1 << 62
)

var (
	errTruncated = errors.New("truncated")
	errTrailing  = errors.New("trailing bytes")
)

// entry is the unit of replication: one version of one key. Entries are
// immutable once created; the store replaces them, never edits them.
type entry struct {
	key         string
	value       []byte
	owner       string // node name of the writer
	incarnation uint64 // the writer's process incarnation
	version     uint64 // Lamport timestamp of the write
	tombstone   bool
	tied        bool  // dropped when owner's incarnation leaves the cluster
	expires     int64 // unix milliseconds; 0: never
}

// appendEntry appends the wire form of e to b.
func appendEntry(b []byte, e *entry) []byte {
	var flags byte
	if e.tombstone {
		flags |= flagTombstone
	}
	if e.tied {
		flags |= flagTied
	}
	if e.expires != 0 {
		flags |= flagExpires
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, e.version)
	b = binary.AppendUvarint(b, e.incarnation)
	b = appendString(b, e.owner)
	b = appendString(b, e.key)
	if e.expires != 0 {
		b = binary.AppendVarint(b, e.expires)
	}
	b = binary.AppendUvarint(b, uint64(len(e.value)))
	return append(b, e.value...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// encodeEntryMsg returns the broadcast message carrying e.
func encodeEntryMsg(e *entry) []byte {
	b := make([]byte, 0, 32+len(e.key)+len(e.owner)+len(e.value))
	b = append(b, msgEntry, codecVersion)
	return appendEntry(b, e)
}

// encodeLeaveMsg returns the broadcast message announcing that node's
// incarnation is leaving gracefully.
func encodeLeaveMsg(node string, incarnation uint64) []byte {
	b := make([]byte, 0, 16+len(node))
	b = append(b, msgLeave, codecVersion)
	b = binary.AppendUvarint(b, incarnation)
	return appendString(b, node)
}

// encodeMeta returns the memberlist node meta of an incarnation.
func encodeMeta(incarnation uint64) []byte {
	return binary.AppendUvarint([]byte{metaVersion}, incarnation)
}

// decodeMeta returns the incarnation in a node's memberlist meta.
func decodeMeta(b []byte) (uint64, error) {
	if len(b) == 0 || b[0] != metaVersion {
		return 0, fmt.Errorf("gossip: node meta: unknown version")
	}
	r := reader{b: b[1:]}
	inc := r.uvarint()
	r.end()
	if r.err != nil {
		return 0, fmt.Errorf("gossip: node meta: %w", r.err)
	}
	return inc, nil
}

// reader decodes the wire format. The first error sticks: later reads
// return zero values, so callers check err once at the end.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.fail(errTruncated)
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(errTruncated)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(errTruncated)
		return 0
	}
	r.b = r.b[n:]
	return v
}

// bytes reads a length-prefixed byte string of at most limit bytes and
// returns a copy, never a slice of the input.
func (r *reader) bytes(what string, limit int) []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(limit) {
		r.fail(fmt.Errorf("%s is %d bytes, more than %d", what, n, limit))
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail(errTruncated)
		return nil
	}
	out := make([]byte, n)
	copy(out, r.b)
	r.b = r.b[n:]
	return out
}

func (r *reader) string(what string, limit int) string {
	return string(r.bytes(what, limit))
}

func (r *reader) end() {
	if r.err == nil && len(r.b) != 0 {
		r.fail(errTrailing)
	}
}

// header reads and checks the type and codec version bytes.
func (r *reader) header(want byte) {
	if t := r.byte(); r.err == nil && t != want {
		r.fail(fmt.Errorf("message type %d, want %d", t, want))
	}
	if v := r.byte(); r.err == nil && v != codecVersion {
		r.fail(fmt.Errorf("codec version %d, want %d", v, codecVersion))
	}
}

// entry reads and validates one entry.
func (r *reader) entry() *entry {
	flags := r.byte()
	e := &entry{
		version:     r.uvarint(),
		incarnation: r.uvarint(),
		owner:       r.string("owner", MaxNodeNameLen),
		key:         r.string("key", MaxKeyLen),
	}
	if flags&flagExpires != 0 {
		e.expires = r.varint()
	}
	e.value = r.bytes("value", MaxValueLen)
	if r.err != nil {
		return nil
	}
	e.tombstone = flags&flagTombstone != 0
	e.tied = flags&flagTied != 0
	switch {
	case flags&^knownFlags != 0:
		r.fail(fmt.Errorf("unknown entry flags %#x", flags))
	case e.version == 0 || e.version > maxVersion:
		r.fail(fmt.Errorf("entry version %d out of range", e.version))
	case e.owner == "":
		r.fail(errors.New("entry without owner"))
	case e.key == "":
		r.fail(errors.New("entry without key"))
	case e.tombstone && len(e.value) != 0:
		r.fail(errors.New("tombstone with a value"))
	case flags&flagExpires != 0 && e.expires == 0:
		r.fail(errors.New("expiry flag without expiry"))
	}
	if r.err != nil {
		return nil
	}
	return e
}

// decodeState decodes a push/pull state: the sender's clock and its
// entries.
func decodeState(b []byte) (clock uint64, entries []*entry, err error) {
	if len(b) > MaxStateSize {
		return 0, nil, fmt.Errorf("gossip: state is %d bytes, more than %d", len(b), MaxStateSize)
	}
	r := reader{b: b}
	r.header(msgState)
	clock = r.uvarint()
	n := r.uvarint()
	// Every entry takes at least 6 bytes, so a count larger than what is
	// left is garbage; checking it first keeps the allocation bounded.
	if r.err == nil && n > uint64(len(r.b))/6 {
		r.fail(fmt.Errorf("entry count %d does not fit in %d bytes", n, len(r.b)))
	}
	if r.err == nil {
		entries = make([]*entry, 0, n)
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		if e := r.entry(); e != nil {
			entries = append(entries, e)
		}
	}
	r.end()
	if r.err != nil {
		return 0, nil, fmt.Errorf("gossip: decode state: %w", r.err)
	}
	if clock > maxVersion {
		return 0, nil, fmt.Errorf("gossip: decode state: clock %d out of range", clock)
	}
	return clock, entries, nil
}

// message is a decoded broadcast: either an entry or a leave intent.
type message struct {
	entry *entry // msgEntry

	leaveNode        string // msgLeave
	leaveIncarnation uint64
}

// decodeMessage decodes a broadcast received through NotifyMsg.
func decodeMessage(b []byte) (message, error) {
	if len(b) == 0 {
		return message{}, errors.New("gossip: decode message: empty")
	}
	r := reader{b: b}
	var m message
	switch b[0] {
	case msgEntry:
		r.header(msgEntry)
		m.entry = r.entry()
	case msgLeave:
		r.header(msgLeave)
		m.leaveIncarnation = r.uvarint()
		m.leaveNode = r.string("node", MaxNodeNameLen)
		if r.err == nil && m.leaveNode == "" {
			r.fail(errors.New("leave without node"))
		}
	default:
		r.fail(fmt.Errorf("unknown message type %d", b[0]))
	}
	r.end()
	if r.err != nil {
		return message{}, fmt.Errorf("gossip: decode message: %w", r.err)
	}
	return m, nil
}

// encodeState encodes a push/pull state holding clock and as many of
// entries as fit in limit bytes, in the order given; omitted is how many
// did not fit.
func encodeState(clock uint64, entries []*entry, limit int) (b []byte, omitted int) {
	body := make([]byte, 0, 64*len(entries))
	n := 0
	for i, e := range entries {
		before := len(body)
		body = appendEntry(body, e)
		if len(body)+32 > limit {
			body = body[:before]
			omitted = len(entries) - i
			break
		}
		n++
	}
	b = make([]byte, 0, len(body)+24)
	b = append(b, msgState, codecVersion)
	b = binary.AppendUvarint(b, clock)
	b = binary.AppendUvarint(b, uint64(n))
	return append(b, body...), omitted
}
