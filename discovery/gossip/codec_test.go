package gossip

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// validState returns the push/pull state of a store holding a mix of
// entries: tied, untied, expiring, deleted.
func validState(t testing.TB) []byte {
	clk := newFakeClock()
	s := newStore(storeConfig{node: "node-a", incarnation: 42, clock: 1000, now: clk.Now})
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Set("svc/a-1", []byte(`{"id":"a-1","service":"cart","address":"10.0.0.1","port":9000,"healthy":true}`), SetOptions{Tied: true}))
	must(s.Set("sticky/s1", []byte("backend-2"), SetOptions{TTL: time.Hour}))
	must(s.Set("sticky/s2", []byte("backend-3"), SetOptions{}))
	must(s.Delete("sticky/s2"))
	return s.localState()
}

func TestCodecRoundTrip(t *testing.T) {
	e := &entry{key: "sticky/x", value: []byte("v"), owner: "n", incarnation: 9, version: 77, tied: true, expires: -5}
	m, err := decodeMessage(encodeEntryMsg(e))
	if err != nil || m.entry == nil || compareEntries(m.entry, e) != 0 {
		t.Fatalf("entry round trip: %+v, %v", m.entry, err)
	}
	m, err = decodeMessage(encodeLeaveMsg("n", 9))
	if err != nil || m.leaveNode != "n" || m.leaveIncarnation != 9 {
		t.Fatalf("leave round trip: %+v, %v", m, err)
	}
	inc, err := decodeMeta(encodeMeta(1<<64 - 1))
	if err != nil || inc != 1<<64-1 {
		t.Fatalf("meta round trip: %d, %v", inc, err)
	}
	clock, entries, err := decodeState(validState(t))
	if err != nil || clock < 1000 || len(entries) != 3 {
		t.Fatalf("state: clock %d, %d entries, %v", clock, len(entries), err)
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	state := validState(t)
	huge := func(prefix ...byte) []byte { return binary.AppendUvarint(prefix, 1<<60) }
	entryMsg := encodeEntryMsg(&entry{key: "k", value: []byte("v"), owner: "o", version: 1})
	withFlags := func(flags byte) []byte {
		b := bytes.Clone(entryMsg)
		b[2] = flags
		return b
	}
	cases := map[string][]byte{
		"empty":                   {},
		"unknown type":            {9, codecVersion},
		"future codec version":    append([]byte{msgState, codecVersion + 1}, state[2:]...),
		"message as state":        entryMsg,
		"state as message":        state,
		"huge entry count":        append(huge(msgState, codecVersion, 1), 0),
		"huge key length":         huge(msgEntry, codecVersion, 0, 1, 1, 1, 'o'),
		"huge value length":       huge(msgEntry, codecVersion, 0, 1, 1, 1, 'o', 1, 'k'),
		"trailing bytes":          append(bytes.Clone(state), 0),
		"unknown flags":           withFlags(0x80),
		"tombstone with value":    withFlags(flagTombstone),
		"version 0":               encodeEntryMsg(&entry{key: "k", owner: "o", version: 0}),
		"version past the limit":  encodeEntryMsg(&entry{key: "k", owner: "o", version: maxVersion + 1}),
		"no owner":                encodeEntryMsg(&entry{key: "k", version: 1}),
		"no key":                  encodeEntryMsg(&entry{owner: "o", version: 1}),
		"key too long":            encodeEntryMsg(&entry{key: string(make([]byte, MaxKeyLen+1)), owner: "o", version: 1}),
		"leave without node":      encodeLeaveMsg("", 1),
		"state larger than limit": append(append([]byte{msgState, codecVersion}, 0, 0), make([]byte, MaxStateSize)...),
	}
	for name, b := range cases {
		_, _, errState := decodeState(b)
		_, errMsg := decodeMessage(b)
		if errState == nil && errMsg == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Every truncation of a valid state or message is an error.
	for i := range len(state) {
		if _, _, err := decodeState(state[:i]); err == nil {
			t.Fatalf("state truncated to %d of %d bytes accepted", i, len(state))
		}
	}
	for i := range len(entryMsg) {
		if _, err := decodeMessage(entryMsg[:i]); err == nil {
			t.Fatalf("message truncated to %d of %d bytes accepted", i, len(entryMsg))
		}
	}
	for _, meta := range [][]byte{nil, {2, 1}, {metaVersion}, {metaVersion, 1, 0}} {
		if _, err := decodeMeta(meta); err == nil {
			t.Errorf("meta %v accepted", meta)
		}
	}
}

// FuzzMergeRemoteState feeds arbitrary push/pull states and broadcasts to
// a store: it must never panic, and whatever it accepts it must be able to
// send on.
func FuzzMergeRemoteState(f *testing.F) {
	state := validState(f)
	f.Add(state)
	f.Add(state[:len(state)/2])
	f.Add(encodeEntryMsg(&entry{key: "svc/x", value: []byte("v"), owner: "node-b", incarnation: 1, version: 5, tied: true}))
	f.Add(encodeLeaveMsg("node-a", 42))
	f.Add([]byte{msgState, codecVersion, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		clk := newFakeClock()
		s := newStore(storeConfig{node: "node-a", incarnation: 7, now: clk.Now})
		s.memberAlive("node-b", 1, "10.0.0.2:7946")
		_ = s.mergeRemoteState(b)
		_ = s.handleMessage(b)
		s.sweep(clk.Add(time.Hour))
		_ = s.List("")
		if _, _, err := decodeState(s.localState()); err != nil {
			t.Fatalf("re-encoded state does not decode: %v", err)
		}
	})
}
