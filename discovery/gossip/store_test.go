package gossip

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"
	"time"
)

func newTestStore(node string, incarnation uint64, clk *fakeClock) *Store {
	return newStore(storeConfig{node: node, incarnation: incarnation, now: clk.Now, log: testLogger()})
}

// deliver gossips every broadcast queued in from to each of to, the way
// memberlist would (minus loss and delay).
func deliver(t *testing.T, from *Store, to ...*Store) {
	t.Helper()
	for _, msg := range drain(from) {
		for _, s := range to {
			if err := s.handleMessage(msg); err != nil {
				t.Fatalf("handleMessage: %v", err)
			}
		}
	}
}

// drain returns the queued broadcasts of s, taking them the way memberlist
// does (packets of at most 1400 bytes) until the transmit limit retires
// them all.
func drain(s *Store) [][]byte {
	var out [][]byte
	for {
		msgs := s.queue.GetBroadcasts(2, 1400)
		if len(msgs) == 0 {
			return out
		}
		out = append(out, msgs...)
	}
}

// pushPull exchanges full states between a and b, as a memberlist
// push/pull does.
func pushPull(t *testing.T, a, b *Store) {
	t.Helper()
	sa, sb := a.localState(), b.localState()
	if err := b.mergeRemoteState(sa); err != nil {
		t.Fatalf("merge into %s: %v", b.node, err)
	}
	if err := a.mergeRemoteState(sb); err != nil {
		t.Fatalf("merge into %s: %v", a.node, err)
	}
}

// dump returns every record of s (hidden ones and tombstones included).
func dump(s *Store) map[string]entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]entry, len(s.records))
	for k, r := range s.records {
		out[k] = *r.entry
	}
	return out
}

func entriesEqual(a, b map[string]entry) bool {
	return maps.EqualFunc(a, b, func(x, y entry) bool { return compareEntries(&x, &y) == 0 })
}

func value(t *testing.T, s *Store, key string) string {
	t.Helper()
	e, ok := s.Get(key)
	if !ok {
		return "<absent>"
	}
	return string(e.Value)
}

// randomUpdates returns updates to a few keys from a few owners, with
// colliding versions, tombstones, expiries and tied entries.
func randomUpdates(r *rand.Rand, n int) []*entry {
	owners := []struct {
		name string
		inc  uint64
	}{{"a", 1}, {"b", 2}, {"b", 3}, {"c", 4}}
	var out []*entry
	for i := range n {
		o := owners[r.IntN(len(owners))]
		e := &entry{
			key:         fmt.Sprintf("k%d", r.IntN(4)),
			owner:       o.name,
			incarnation: o.inc,
			version:     uint64(1 + r.IntN(6)),
			tied:        r.IntN(3) == 0,
		}
		switch r.IntN(4) {
		case 0:
			e.tombstone = true
		case 1:
			e.expires = int64(1_900_000_000_000 + r.IntN(2))
			fallthrough
		default:
			e.value = fmt.Appendf(nil, "v%d", i%3)
		}
		out = append(out, e)
	}
	return out
}

func TestMergeIsCommutativeAndIdempotent(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	clk := newFakeClock()
	for round := range 50 {
		updates := randomUpdates(r, 12)

		// Reference: the greatest version of each key.
		want := make(map[string]entry)
		for _, e := range updates {
			if cur, ok := want[e.key]; !ok || compareEntries(e, &cur) > 0 {
				want[e.key] = *e
			}
		}

		for perm := range 8 {
			s := newTestStore("observer", 99, clk)
			order := r.Perm(len(updates))
			for _, i := range order {
				e := updates[i]
				// Each update arrives twice, by broadcast and by push/pull.
				if err := s.handleMessage(encodeEntryMsg(e)); err != nil {
					t.Fatal(err)
				}
				st, _ := encodeState(0, []*entry{e}, MaxStateSize)
				if err := s.mergeRemoteState(st); err != nil {
					t.Fatal(err)
				}
			}
			if got := dump(s); !entriesEqual(got, want) {
				t.Fatalf("round %d, order %v (permutation %d): state\n%v\nwant\n%v", round, order, perm, got, want)
			}
		}
	}
}

func TestOldVersionNeverOverwritesNew(t *testing.T) {
	clk := newFakeClock()
	a := newTestStore("a", 1, clk)
	b := newTestStore("b", 2, clk)
	obs := newTestStore("obs", 3, clk)

	if err := a.Set("sticky/s", []byte("first"), SetOptions{}); err != nil {
		t.Fatal(err)
	}
	old := drain(a)
	deliver(t, a, b) // b's clock is now past a's write
	if err := b.Set("sticky/s", []byte("second"), SetOptions{}); err != nil {
		t.Fatal(err)
	}
	deliver(t, b, obs, a)
	for _, msg := range old { // the old write arrives late
		if err := obs.handleMessage(msg); err != nil {
			t.Fatal(err)
		}
	}
	pushPull(t, obs, a)
	for _, s := range []*Store{a, b, obs} {
		if got := value(t, s, "sticky/s"); got != "second" {
			t.Errorf("%s: sticky/s = %q, want second", s.node, got)
		}
	}
	// Lamport clock: a local write after a merge takes a version above
	// everything seen.
	e, _ := obs.Get("sticky/s")
	if err := obs.Set("sticky/t", nil, SetOptions{}); err != nil {
		t.Fatal(err)
	}
	if t2, _ := obs.Get("sticky/t"); t2.Version <= e.Version {
		t.Errorf("local write version %d not above merged version %d", t2.Version, e.Version)
	}
}

func TestTombstonePreventsResurrection(t *testing.T) {
	clk := newFakeClock()
	a := newTestStore("a", 1, clk)
	obs := newTestStore("obs", 2, clk)

	if err := a.Set("sticky/s", []byte("v"), SetOptions{}); err != nil {
		t.Fatal(err)
	}
	write := drain(a)
	oldState := a.localState()
	if err := a.Delete("sticky/s"); err != nil {
		t.Fatal(err)
	}
	deliver(t, a, obs)
	if got := value(t, obs, "sticky/s"); got != "<absent>" {
		t.Fatalf("after delete: %q", got)
	}
	// Late copies of the write, by gossip and by push/pull, one minute on.
	clk.Add(time.Minute)
	obs.sweep(clk.Now())
	for _, msg := range write {
		if err := obs.handleMessage(msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := obs.mergeRemoteState(oldState); err != nil {
		t.Fatal(err)
	}
	if got := value(t, obs, "sticky/s"); got != "<absent>" {
		t.Fatalf("deleted key resurrected by a late update: %q", got)
	}
	if d := dump(obs)["sticky/s"]; !d.tombstone {
		t.Fatalf("tombstone lost: %+v", d)
	}
	// Deleting twice writes nothing new.
	before := dump(a)["sticky/s"].version
	if err := a.Delete("sticky/s"); err != nil || dump(a)["sticky/s"].version != before {
		t.Fatalf("second delete: err %v, version %d -> %d", err, before, dump(a)["sticky/s"].version)
	}
	// After the retention period the tombstone is collected.
	clk.Add(DefaultRetention)
	obs.sweep(clk.Now())
	if _, ok := dump(obs)["sticky/s"]; ok {
		t.Fatal("tombstone not collected after the retention period")
	}
}

func TestTiedEntriesDroppedWhenOwnerLeaves(t *testing.T) {
	for _, how := range []string{"dead", "left"} {
		t.Run(how, func(t *testing.T) {
			clk := newFakeClock()
			a := newTestStore("a", 11, clk)
			obs := newTestStore("obs", 22, clk)
			obs.memberAlive("a", 11, "10.0.0.1:7946")
			signal, cancel := obs.Subscribe("svc/")
			defer cancel()

			if err := a.Set("svc/a-1", []byte("inst"), SetOptions{Tied: true}); err != nil {
				t.Fatal(err)
			}
			if err := a.Set("sticky/x", []byte("session"), SetOptions{}); err != nil {
				t.Fatal(err)
			}
			deliver(t, a, obs)
			<-signal
			if got := value(t, obs, "svc/a-1"); got != "inst" {
				t.Fatalf("before leave: %q", got)
			}

			if how == "dead" {
				obs.memberGone("a")
			} else if err := obs.handleMessage(encodeLeaveMsg("a", 11)); err != nil {
				t.Fatal(err)
			}
			select {
			case <-signal:
			default:
				t.Fatal("no signal when the owner left")
			}
			if got := value(t, obs, "svc/a-1"); got != "<absent>" {
				t.Fatalf("tied entry still visible after its owner is %s: %q", how, got)
			}
			if got := value(t, obs, "sticky/x"); got != "session" {
				t.Fatalf("untied entry dropped with its writer: %q", got)
			}
			if len(obs.List("svc/")) != 0 {
				t.Fatal("List shows a tied entry of a departed owner")
			}
			wantState := map[string]MemberState{"dead": MemberDead, "left": MemberLeft}[how]
			if m := obs.membersSnapshot(); len(m) != 2 || m[0].Name != "a" || m[0].State != wantState {
				t.Fatalf("members = %+v", m)
			}
			// A late update from the departed incarnation stays hidden.
			if err := obs.mergeRemoteState(a.localState()); err != nil {
				t.Fatal(err)
			}
			if got := value(t, obs, "svc/a-1"); got != "<absent>" {
				t.Fatalf("late update revived a departed owner's entry: %q", got)
			}
			if how == "dead" {
				// A false death: memberlist lets the member refute it, with
				// the same incarnation, and its entries come back at once.
				obs.memberAlive("a", 11, "10.0.0.1:7946")
				if got := value(t, obs, "svc/a-1"); got != "inst" {
					t.Fatalf("after refuted death: %q", got)
				}
				obs.memberGone("a")
			} else {
				// A left incarnation never comes back.
				obs.memberAlive("a", 11, "10.0.0.1:7946")
				if got := value(t, obs, "svc/a-1"); got != "<absent>" {
					t.Fatalf("left incarnation revived: %q", got)
				}
			}
			clk.Add(DefaultRetention + time.Second)
			obs.sweep(clk.Now())
			if _, ok := dump(obs)["svc/a-1"]; ok {
				t.Fatal("departed owner's entry not collected after the retention period")
			}
			if m := obs.membersSnapshot(); len(m) != 1 {
				t.Fatalf("departed member not forgotten: %+v", m)
			}
		})
	}
}

func TestUntiedEntriesOutliveWriterAndExpire(t *testing.T) {
	clk := newFakeClock()
	a := newTestStore("a", 1, clk)
	obs := newTestStore("obs", 2, clk)
	obs.memberAlive("a", 1, "10.0.0.1:7946")
	if err := a.Set("sticky/s", []byte("backend-3"), SetOptions{TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	deliver(t, a, obs)
	obs.memberGone("a")
	clk.Add(30 * time.Second)
	obs.sweep(clk.Now())
	e, ok := obs.Get("sticky/s")
	if !ok || string(e.Value) != "backend-3" || e.Owner != "a" || e.Tied {
		t.Fatalf("sticky entry lost with its writer: %+v %v", e, ok)
	}
	if want := newFakeClock().Now().Add(time.Minute); !e.Expires.Equal(want) {
		t.Fatalf("Expires = %v, want %v", e.Expires, want)
	}

	signal, cancel := obs.Subscribe("sticky/")
	defer cancel()
	clk.Add(31 * time.Second)
	if _, ok := obs.Get("sticky/s"); ok {
		t.Fatal("expired entry still visible")
	}
	obs.sweep(clk.Now())
	select {
	case <-signal:
	default:
		t.Fatal("no signal on expiry")
	}
	// The expired entry is kept a while, so a late copy cannot revive it.
	if err := obs.mergeRemoteState(a.localState()); err != nil {
		t.Fatal(err)
	}
	if _, ok := obs.Get("sticky/s"); ok {
		t.Fatal("late copy revived an expired entry")
	}
	clk.Add(DefaultRetention + time.Second)
	obs.sweep(clk.Now())
	if len(dump(obs)) != 0 {
		t.Fatalf("expired entry not collected: %v", dump(obs))
	}
}

// TestRestartedNodeWins: a node restarts under the same name with a fresh
// process (new incarnation) whose Lamport clock restarted at 0, below the
// versions its old self wrote. Its writes must still win, and the tied
// entries of its old self must disappear.
func TestRestartedNodeWins(t *testing.T) {
	clk := newFakeClock()
	obs := newTestStore("obs", 1, clk)
	old := newTestStore("b", 100, clk)
	obs.memberAlive("b", 100, "10.0.0.2:7946")
	for i := range 5 {
		if err := old.Set("svc/b-1", fmt.Appendf(nil, "old-%d", i), SetOptions{Tied: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := old.Set("svc/b-gone", []byte("only in the old life"), SetOptions{Tied: true}); err != nil {
		t.Fatal(err)
	}
	if err := old.Set("sticky/s", []byte("written by the old life"), SetOptions{}); err != nil {
		t.Fatal(err)
	}
	deliver(t, old, obs)
	oldVersion := dump(obs)["svc/b-1"].version

	// The restart: same name, new incarnation, clock at 0.
	b := newTestStore("b", 200, clk)
	if err := b.Set("svc/b-1", []byte("new"), SetOptions{Tied: true}); err != nil {
		t.Fatal(err)
	}
	if v := dump(b)["svc/b-1"].version; v >= oldVersion {
		t.Fatalf("test premise: new version %d should be below the old %d", v, oldVersion)
	}
	// Its first broadcast loses at obs, which gossips the old version back
	// (read repair) ...
	deliver(t, b, obs)
	if got := dump(obs)["svc/b-1"]; got.incarnation != 100 {
		t.Fatalf("obs took the lower version: %+v", got)
	}
	// ... the restarted node sees it and refutes it with a higher version.
	deliver(t, obs, b)
	if got := dump(b)["svc/b-1"]; string(got.value) != "new" || got.version <= oldVersion {
		t.Fatalf("restarted node did not refute its old self: %+v", got)
	}
	deliver(t, b, obs)
	obs.memberAlive("b", 200, "10.0.0.2:7946") // memberlist: the new meta arrives
	if got := value(t, obs, "svc/b-1"); got != "new" {
		t.Fatalf("obs: svc/b-1 = %q, want new", got)
	}
	if got := value(t, obs, "svc/b-gone"); got != "<absent>" {
		t.Fatalf("obs: the old life's tied entry is still visible: %q", got)
	}
	if got := value(t, obs, "sticky/s"); got != "written by the old life" {
		t.Fatalf("obs: untied entry of the old life lost: %q", got)
	}

	// The same through push/pull: the restarted node joins and merges the
	// state holding its old self's writes.
	b2 := newTestStore("b", 300, clk)
	if err := b2.Set("svc/b-1", []byte("newer"), SetOptions{Tied: true}); err != nil {
		t.Fatal(err)
	}
	pushPull(t, b2, obs)
	if _, ok := dump(b2)["svc/b-gone"]; ok {
		t.Fatal("restarted node adopted a tied entry of its old life")
	}
	if got := value(t, b2, "sticky/s"); got != "written by the old life" {
		t.Fatalf("restarted node: sticky/s = %q", got)
	}
	deliver(t, b2, obs) // the refutation
	obs.memberAlive("b", 300, "10.0.0.2:7946")
	if got := value(t, obs, "svc/b-1"); got != "newer" {
		t.Fatalf("after push/pull: svc/b-1 = %q, want newer", got)
	}
}

func TestBroadcastsInvalidateOlderVersions(t *testing.T) {
	s := newTestStore("a", 1, newFakeClock())
	for i := range 3 {
		if err := s.Set("svc/x", fmt.Appendf(nil, "%d", i), SetOptions{Tied: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Set("svc/y", []byte("y"), SetOptions{Tied: true}); err != nil {
		t.Fatal(err)
	}
	// Regression test for hashicorp/memberlist#263: replacing the only
	// queued broadcast used to reset the queue's id generator, so that the
	// next broadcast of the same length (svc/y here) replaced svc/x's.
	if n := s.numQueued(); n != 2 {
		t.Fatalf("queued %d broadcasts, want 2 (one per key)", n)
	}
	msgs := s.queue.GetBroadcasts(2, 1400)
	var gotX string
	for _, m := range msgs {
		d, err := decodeMessage(m)
		if err != nil {
			t.Fatal(err)
		}
		if d.entry.key == "svc/x" {
			gotX = string(d.entry.value)
		}
	}
	if gotX != "2" {
		t.Fatalf("queued svc/x = %q, want the newest (2)", gotX)
	}
	if len(msgs) != 2 {
		t.Fatalf("GetBroadcasts returned %d messages, want 2 (the sentinel never fits)", len(msgs))
	}
	// Republishing unchanged content queues nothing.
	if changed, err := s.set("svc/y", []byte("y"), SetOptions{Tied: true}, true); err != nil || changed {
		t.Fatalf("unchanged set: changed=%v err=%v", changed, err)
	}
}

func TestSubscribeNeverBlocks(t *testing.T) {
	s := newTestStore("a", 1, newFakeClock())
	sig, cancel := s.Subscribe("svc/")
	other, cancelOther := s.Subscribe("sticky/")
	for i := range 100 {
		if err := s.Set(fmt.Sprintf("svc/%d", i), nil, SetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if len(sig) != 1 {
		t.Fatalf("pending signals = %d, want 1 (coalesced)", len(sig))
	}
	if len(other) != 0 {
		t.Fatal("a subscriber of another prefix was signalled")
	}
	cancel()
	cancel()
	<-sig
	if _, ok := <-sig; ok {
		t.Fatal("channel open after cancel")
	}
	s.close()
	if _, ok := <-other; ok {
		t.Fatal("channel open after close")
	}
	cancelOther()
	if err := s.Set("svc/late", nil, SetOptions{}); err != ErrClosed {
		t.Fatalf("Set after close: %v", err)
	}
}

func TestSetValidation(t *testing.T) {
	s := newTestStore("a", 1, newFakeClock())
	for _, tc := range []struct {
		key   string
		value []byte
		o     SetOptions
	}{
		{"", nil, SetOptions{}},
		{string(bytes.Repeat([]byte("k"), MaxKeyLen+1)), nil, SetOptions{}},
		{"k", make([]byte, MaxValueLen+1), SetOptions{}},
		{"k", nil, SetOptions{TTL: -time.Second}},
	} {
		if err := s.Set(tc.key, tc.value, tc.o); err == nil {
			t.Errorf("Set(%.10q, %d bytes, %+v) succeeded", tc.key, len(tc.value), tc.o)
		}
	}
	// The largest entry fits in one gossip packet.
	big := &entry{
		key: string(bytes.Repeat([]byte("k"), MaxKeyLen)), value: make([]byte, MaxValueLen),
		owner: string(bytes.Repeat([]byte("o"), MaxNodeNameLen)), incarnation: 1<<64 - 1,
		version: maxVersion, tied: true, expires: -1 << 63,
	}
	if n := len(encodeEntryMsg(big)); n > 1400-2-29-3 {
		t.Fatalf("largest entry message is %d bytes: does not fit a gossip packet", n)
	}
}

func TestLocalStateIsBounded(t *testing.T) {
	var entries []*entry
	for i := range 100 {
		entries = append(entries, &entry{key: fmt.Sprint(i), owner: "a", version: 1, value: make([]byte, 100)})
	}
	b, omitted := encodeState(7, entries, 5000)
	if len(b) > 5000 || omitted == 0 {
		t.Fatalf("%d bytes, %d omitted", len(b), omitted)
	}
	clock, got, err := decodeState(b)
	if err != nil || clock != 7 || len(got)+omitted != 100 {
		t.Fatalf("decode: clock %d, %d entries, err %v", clock, len(got), err)
	}
}

// TestUnknownOwner: a tied entry can arrive before memberlist reports its
// owner. It is shown for a grace period, then hidden until the owner is
// reported; entries of owners known to be gone are not passed on.
func TestUnknownOwner(t *testing.T) {
	clk := newFakeClock()
	a := newTestStore("a", 1, clk)
	obs := newTestStore("obs", 2, clk)
	if err := a.Set("svc/a-1", []byte("inst"), SetOptions{Tied: true}); err != nil {
		t.Fatal(err)
	}
	deliver(t, a, obs)
	if got := value(t, obs, "svc/a-1"); got != "inst" {
		t.Fatalf("entry of a not-yet-reported owner hidden: %q", got)
	}
	if obs.MemberAlive("a") {
		t.Fatal("a member memberlist has not reported counts as alive")
	}
	signal, cancel := obs.Subscribe("svc/")
	defer cancel()
	clk.Add(31 * time.Second)
	if got := value(t, obs, "svc/a-1"); got != "<absent>" {
		t.Fatalf("entry of an owner never reported still shown after the grace period: %q", got)
	}
	obs.sweep(clk.Now())
	select {
	case <-signal:
	default:
		t.Fatal("no signal when the grace period ended")
	}
	obs.memberAlive("a", 1, "10.0.0.1:7946")
	if got := value(t, obs, "svc/a-1"); got != "inst" {
		t.Fatalf("entry hidden once its owner is reported: %q", got)
	}
	if !obs.MemberAlive("a") {
		t.Fatal("a reported alive does not count as alive")
	}

	// Once a is gone, obs neither gossips its entries nor sends them in
	// push/pull: a newcomer that never knew a would show them.
	obs.memberGone("a")
	if obs.MemberAlive("a") {
		t.Fatal("a counts as alive after it was declared gone")
	}
	drain(obs)
	if err := a.Set("svc/a-1", []byte("late"), SetOptions{Tied: true}); err != nil {
		t.Fatal(err)
	}
	deliver(t, a, obs)
	if dump(obs)["svc/a-1"].version != dump(a)["svc/a-1"].version {
		t.Fatal("late update not merged")
	}
	if n := obs.numQueued(); n != 0 {
		t.Fatalf("%d broadcasts queued for a departed owner's entry", n)
	}
	newcomer := newTestStore("new", 3, clk)
	if err := newcomer.mergeRemoteState(obs.localState()); err != nil {
		t.Fatal(err)
	}
	if _, ok := dump(newcomer)["svc/a-1"]; ok {
		t.Fatal("push/pull carried a departed owner's entry")
	}
}

// TestLocalStateIsPaged: a state larger than a push/pull can carry is
// sent in pages, in key order from where the last one stopped, so that a
// member that merges them learns every entry within a known number of
// push/pulls, not by chance.
func TestLocalStateIsPaged(t *testing.T) {
	old := stateLimit
	stateLimit = 8 << 10
	t.Cleanup(func() { stateLimit = old })
	clk := newFakeClock()
	src, dst := newTestStore("a", 1, clk), newTestStore("b", 2, clk)
	const n = 1000
	for i := range n {
		if err := src.Set(fmt.Sprintf("sticky/shop/%04d", i), make([]byte, 60), SetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	total := 0
	for _, r := range src.records {
		total += len(appendEntry(nil, r.entry))
	}
	pageBody := stateLimit - 32 - 100 // the state's header; an entry that does not fit ends a page
	pages := (total + pageBody - 1) / pageBody
	for i := 0; i < pages*2; i++ {
		b := src.localState()
		if len(b) > stateLimit {
			t.Fatalf("page %d is %d bytes, over the %d limit", i, len(b), stateLimit)
		}
		if err := dst.mergeRemoteState(b); err != nil {
			t.Fatal(err)
		}
		if len(dst.List("sticky/")) == n {
			if i+1 > pages {
				t.Errorf("learned %d entries in %d push/pulls, want at most %d", n, i+1, pages)
			}
			t.Logf("%d entries (about %d KiB) learned in %d pages of at most %d KiB", n, total>>10, i+1, stateLimit>>10)
			return
		}
	}
	t.Fatalf("after %d push/pulls the other member holds %d of %d entries", pages*2, len(dst.List("sticky/")), n)
}
