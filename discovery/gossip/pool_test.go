package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/internal/meshtest"
)

var testKey = bytes.Repeat([]byte{0x5e}, 32)

// testConfig is a member on loopback with a free port, the shared test
// key and fast failure detection.
func testConfig(name string, join ...string) Config {
	return Config{
		NodeName: name,
		Bind:     "127.0.0.1:0",
		Join:     join,
		Key:      testKey,
		Profile:  "local",
		Logger:   testLogger(),
	}
}

func startPool(t testing.TB, c Config) *Pool {
	t.Helper()
	p, err := Start(c)
	if err != nil {
		t.Fatalf("start %s: %v", c.NodeName, err)
	}
	t.Cleanup(func() { _ = p.Shutdown() })
	return p
}

func testInstance(id string, port int) discovery.Instance {
	return discovery.Instance{
		ID: id, Service: "cart", Address: "127.0.0.1", Port: port, Weight: 1,
		Tags: []string{"v1"}, Meta: map[string]string{"node": id}, Zone: "z1",
	}
}

func publish(t testing.TB, p *Pool, inst discovery.Instance, healthy bool) {
	t.Helper()
	if err := p.Publish(inst, healthy); err != nil {
		t.Fatalf("publish %s: %v", inst.ID, err)
	}
}

// ids returns the IDs of the healthy endpoints of service p sees.
func ids(p *Pool, service string) []string {
	var out []string
	for _, e := range p.endpoints(service) {
		out = append(out, e.ID)
	}
	return out
}

func sees(p *Pool, want ...string) func() bool {
	return func() bool { return slices.Equal(ids(p, "cart"), want) }
}

func allSee(pools []*Pool, want ...string) func() bool {
	return func() bool {
		for _, p := range pools {
			if !sees(p, want...)() {
				return false
			}
		}
		return true
	}
}

func endpoint(p *Pool, id string) (discovery.Endpoint, bool) {
	for _, e := range p.endpoints("cart") {
		if e.ID == id {
			return e, true
		}
	}
	return discovery.Endpoint{}, false
}

func memberState(p *Pool, name string) string {
	for _, m := range p.Members() {
		if m.Name == name {
			return m.State.String()
		}
	}
	return "unknown"
}

// latest returns the newest snapshot waiting in ch, or the previous one.
func latest(ch <-chan discovery.Snapshot, prev discovery.Snapshot) discovery.Snapshot {
	for {
		select {
		case s, ok := <-ch:
			if !ok {
				return prev
			}
			prev = s
		default:
			return prev
		}
	}
}

func snapshotIDs(s discovery.Snapshot) []string {
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, e.ID)
	}
	return out
}

// logOnFailure logs what each pool holds if the test fails.
func logOnFailure(t *testing.T, pools ...*Pool) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, p := range pools {
			t.Logf("%s (%s): sees %v, %d members %v", p.Name(), p.Addr(), ids(p, "cart"), p.NumMembers(), p.Members())
			for k, e := range dump(p.store) {
				t.Logf("    %s: owner %s/%x version %d tombstone %v value %s", k, e.owner, e.incarnation, e.version, e.tombstone, e.value)
			}
		}
	})
}

func TestThreeMembers(t *testing.T) {
	a := startPool(t, testConfig("a"))
	b := startPool(t, testConfig("b", a.Addr()))
	c := startPool(t, testConfig("c", a.Addr()))
	pools := []*Pool{a, b, c}
	for i, p := range pools {
		publish(t, p, testInstance(p.Name()+"-1", 9001+i), true)
	}

	// Watchers on every member, through the discovery.Source interface.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watches := make([]<-chan discovery.Snapshot, len(pools))
	snaps := make([]discovery.Snapshot, len(pools))
	for i, p := range pools {
		var src discovery.Source = p
		ch, err := src.Watch(ctx, "cart")
		if err != nil {
			t.Fatal(err)
		}
		watches[i] = ch
	}
	all := []string{"a-1", "b-1", "c-1"}
	took := meshtest.WaitFor(t, 10*time.Second, "every member to see all 3 instances", func() bool {
		for i := range pools {
			snaps[i] = latest(watches[i], snaps[i])
			if !slices.Equal(snapshotIDs(snaps[i]), all) {
				return false
			}
		}
		return true
	})
	t.Logf("3 members converged in %v", took)
	e := snaps[0].Endpoints[1]
	if e.Service != "cart" || e.HostPort() != "127.0.0.1:9002" || e.Weight != 1 || e.Zone != "z1" ||
		!slices.Equal(e.Tags, []string{"v1"}) || e.Meta["node"] != "b-1" {
		t.Fatalf("endpoint built wrong: %+v", e)
	}
	for _, p := range pools {
		if n := p.NumMembers(); n != 3 {
			t.Fatalf("%s: NumMembers = %d", p.Name(), n)
		}
	}

	// A weight change reaches the others.
	heavy := testInstance("b-1", 9002)
	heavy.Weight = 5
	publish(t, b, heavy, true)
	took = meshtest.WaitFor(t, 5*time.Second, "the new weight", func() bool {
		ea, _ := endpoint(a, "b-1")
		ec, _ := endpoint(c, "b-1")
		return ea.Weight == 5 && ec.Weight == 5
	})
	t.Logf("weight change seen everywhere in %v", took)

	// So does a health flip, both ways.
	publish(t, b, heavy, false)
	took = meshtest.WaitFor(t, 5*time.Second, "the unhealthy instance to be left out", allSee(pools, "a-1", "c-1"))
	t.Logf("health flip seen everywhere in %v", took)
	publish(t, b, heavy, true)
	meshtest.WaitFor(t, 5*time.Second, "the instance to come back", allSee(pools, all...))

	// Withdraw; only the publisher may.
	publish(t, c, testInstance("c-2", 9100), true)
	meshtest.WaitFor(t, 5*time.Second, "c-2", allSee(pools, "a-1", "b-1", "c-1", "c-2"))
	if err := a.Withdraw("c-2"); err == nil || !strings.Contains(err.Error(), "published by c") {
		t.Fatalf("withdrawing another member's instance: %v", err)
	}
	if err := c.Withdraw("c-2"); err != nil {
		t.Fatal(err)
	}
	if err := c.Withdraw("c-2"); err != nil {
		t.Fatalf("second withdraw: %v", err)
	}
	meshtest.WaitFor(t, 5*time.Second, "c-2 to be withdrawn", allSee(pools, all...))

	// Graceful leave: the others drop c's instance as soon as they hear.
	start := time.Now()
	if err := c.Leave(leaveCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	meshtest.WaitFor(t, 5*time.Second, "c's instance to disappear after Leave", allSee(pools[:2], "a-1", "b-1"))
	t.Logf("graceful leave seen by every member in %v", time.Since(start))
	if s := memberState(a, "c"); s != "left" {
		t.Errorf("a sees c as %s, want left", s)
	}
	if err := c.Publish(testInstance("c-3", 9200), true); err == nil {
		t.Error("publish after Leave succeeded")
	}

	// Kill b (no Leave): it is dropped after failure detection.
	start = time.Now()
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	meshtest.WaitFor(t, 30*time.Second, "b's instance to disappear after a kill", sees(a, "a-1"))
	t.Logf("killed member dropped after %v (failure detection)", time.Since(start))
	if s := memberState(a, "b"); s != "dead" {
		t.Errorf("a sees b as %s, want dead", s)
	}
	if err := b.Shutdown(); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	// Shutdown closes b's watch.
	for range watches[1] {
	}
}

func TestWatchSemantics(t *testing.T) {
	p := startPool(t, testConfig("solo"))
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := p.Watch(ctx, "cart")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-ch:
		if s.Service != "cart" || len(s.Endpoints) != 0 {
			t.Fatalf("first snapshot = %+v", s)
		}
	default:
		t.Fatal("no snapshot at once")
	}

	// Many updates, nobody reading: the channel holds only the newest.
	for w := 1; w <= 20; w++ {
		inst := testInstance("solo-1", 9000)
		inst.Weight = w
		publish(t, p, inst, true)
	}
	var got discovery.Snapshot
	meshtest.WaitFor(t, 5*time.Second, "the newest snapshot", func() bool {
		got = latest(ch, got)
		return len(got.Endpoints) == 1 && got.Endpoints[0].Weight == 20
	})
	// Snapshots are copies.
	got.Endpoints[0].Tags[0] = "mutated"
	if e, _ := endpoint(p, "solo-1"); e.Tags[0] != "v1" {
		t.Fatal("a snapshot shares memory with the pool")
	}
	// An unchanged republish sends nothing.
	inst := testInstance("solo-1", 9000)
	inst.Weight = 20
	publish(t, p, inst, true)
	// Quiet guards against a snapshot for the unchanged republish.
	select {
	case s := <-ch:
		t.Fatalf("snapshot without a change: %+v", s)
	case <-time.After(meshtest.Quiet):
	}

	cancel()
	meshtest.WaitFor(t, 5*time.Second, "the channel to close", func() bool {
		select {
		case _, ok := <-ch:
			return !ok
		default:
			return false
		}
	})
	if _, err := p.Watch(context.Background(), ""); err == nil {
		t.Error("watching an empty service name succeeded")
	}
	if err := p.Publish(discovery.Instance{ID: "x", Service: "cart", Address: "h"}, true); err == nil {
		t.Error("publishing an instance without a port succeeded")
	}
	if err := p.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Watch(context.Background(), "cart"); err == nil {
		t.Error("Watch after Shutdown succeeded")
	}
	if err := p.Leave(leaveCtx(t, time.Second)); err == nil {
		t.Error("Leave after Shutdown succeeded")
	}
}

// TestEncryptionKeepsStrangersOut: a member with the wrong key, and one
// without a key, can neither join an encrypted pool nor get their
// instances into it.
func TestEncryptionKeepsStrangersOut(t *testing.T) {
	a := startPool(t, testConfig("a"))
	b := startPool(t, testConfig("b", a.Addr()))
	publish(t, a, testInstance("a-1", 9001), true)
	publish(t, b, testInstance("b-1", 9002), true)

	wrong := testConfig("wrong-key", a.Addr(), b.Addr())
	wrong.Key = bytes.Repeat([]byte{0x11}, 32)
	noKey := testConfig("no-key", a.Addr(), b.Addr())
	noKey.Key, noKey.Insecure = nil, true
	strangers := []*Pool{startPool(t, wrong), startPool(t, noKey)}
	for _, s := range strangers {
		publish(t, s, testInstance(s.Name()+"-1", 9100), true)
	}

	meshtest.WaitFor(t, 10*time.Second, "a and b to see each other", allSee([]*Pool{a, b}, "a-1", "b-1"))
	// Give the strangers' join retries time to fail repeatedly.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range []*Pool{a, b} {
			if got := ids(p, "cart"); !slices.Equal(got, []string{"a-1", "b-1"}) {
				t.Fatalf("%s sees %v: a stranger got in", p.Name(), got)
			}
			if n := p.NumMembers(); n != 2 {
				t.Fatalf("%s has %d members", p.Name(), n)
			}
		}
		for _, s := range strangers {
			if n := s.NumMembers(); n != 1 {
				t.Fatalf("%s joined: %d members", s.Name(), n)
			}
			if got := ids(s, "cart"); !slices.Equal(got, []string{s.Name() + "-1"}) {
				t.Fatalf("%s sees %v", s.Name(), got)
			}
		}
		// Pacing of the checks, not a wait: the 3s deadline above is the
		// window in which nothing may happen.
		time.Sleep(100 * time.Millisecond)
	}
}

// TestJoinRetry: the seed is not up when a member starts; the member keeps
// trying (through a host name) and they converge once the seed starts.
func TestJoinRetry(t *testing.T) {
	port := meshtest.FreeUDPAndTCPPort(t)
	bc := testConfig("b", "localhost:"+strconv.Itoa(port))
	log, failures := countingLogger("gossip: join failed; retrying")
	bc.Logger = log
	b := startPool(t, bc)
	publish(t, b, testInstance("b-1", 9002), true)
	// The seed starts only once b has failed to join it, and retried.
	meshtest.WaitFor(t, 5*time.Second, "two failed join attempts", func() bool { return failures.Load() >= 2 })

	seed := testConfig("seed")
	seed.Bind = "127.0.0.1:" + strconv.Itoa(port)
	a := startPool(t, seed)
	publish(t, a, testInstance("a-1", 9001), true)
	took := meshtest.WaitFor(t, 15*time.Second, "convergence after the seed came up", allSee([]*Pool{a, b}, "a-1", "b-1"))
	t.Logf("converged %v after the seed started", took)
}

// TestRestartedNode: a member is killed and restarted with the same name
// and address and fresh process state, either at once (before failure
// detection notices) or after it was declared dead. The others must see its new instance, not the old one, and not
// the instances only its old self published. With the clock seed at zero
// the new process's versions start below its old self's, which exercises
// the refutation rule.
func TestRestartedNode(t *testing.T) {
	for _, tc := range []struct {
		name string
		seed func() uint64
		// afterDeath restarts the node only once the others declared the
		// old one dead, instead of at once.
		afterDeath bool
	}{
		{"wall clock seed", clockSeed, false},
		{"clock restarts at zero", func() uint64 { return 0 }, false},
		{"clock restarts at zero, after failure detection", func() uint64 { return 0 }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			saved := clockSeed
			clockSeed = tc.seed
			t.Cleanup(func() { clockSeed = saved })

			a := startPool(t, testConfig("a"))
			c := startPool(t, testConfig("c", a.Addr()))
			bc := testConfig("b", a.Addr())
			bc.Bind = "127.0.0.1:" + strconv.Itoa(meshtest.FreeUDPAndTCPPort(t))
			b := startPool(t, bc)
			logOnFailure(t, a, c, b)
			publish(t, a, testInstance("a-1", 9001), true)
			publish(t, c, testInstance("c-1", 9003), true)
			publish(t, b, testInstance("b-old", 9004), true)
			for w := 1; w <= 5; w++ { // push b's clock up
				inst := testInstance("b-1", 9002)
				inst.Weight = w
				publish(t, b, inst, true)
			}
			others := []*Pool{a, c}
			meshtest.WaitFor(t, 10*time.Second, "the first life of b everywhere", func() bool {
				ea, _ := endpoint(a, "b-1")
				ec, _ := endpoint(c, "b-1")
				return allSee(others, "a-1", "b-1", "b-old", "c-1")() && ea.Weight == 5 && ec.Weight == 5
			})

			if err := b.Shutdown(); err != nil {
				t.Fatal(err)
			}
			if tc.afterDeath {
				meshtest.WaitFor(t, 30*time.Second, "the old b to be declared dead", func() bool {
					return memberState(a, "b") == "dead" && memberState(c, "b") == "dead" && sees(a, "a-1", "c-1")()
				})
			}
			start := time.Now()
			b2 := startPool(t, bc)
			inst := testInstance("b-1", 9002)
			inst.Weight = 7
			publish(t, b2, inst, true)
			newLife := func(p *Pool) bool {
				e, ok := endpoint(p, "b-1")
				return ok && e.Weight == 7 && sees(p, "a-1", "b-1", "c-1")()
			}
			meshtest.WaitFor(t, 20*time.Second, "the restarted b's instance everywhere", func() bool {
				return newLife(a) && newLife(c) && newLife(b2)
			})
			t.Logf("restarted node's instance seen everywhere after %v", time.Since(start))
			// And it stays that way (no flip back to the old version).
			for range 20 {
				time.Sleep(50 * time.Millisecond)
				for _, p := range []*Pool{a, c, b2} {
					if !newLife(p) {
						e, _ := endpoint(p, "b-1")
						t.Fatalf("%s reverted: %v, b-1 = %+v", p.Name(), ids(p, "cart"), e)
					}
				}
			}
		})
	}
}

func TestStartErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no key", func(c *Config) { c.Key = nil }, "gossip: a key is required unless insecure: true"},
		{"short key", func(c *Config) { c.Key = []byte("0123456789") }, "key is 10 bytes; want 16, 24 or 32"},
		{"key and insecure", func(c *Config) { c.Insecure = true }, "mutually exclusive"},
		{"profile", func(c *Config) { c.Profile = "wan" }, `profile "wan"`},
		{"bind without port", func(c *Config) { c.Bind = "127.0.0.1" }, "gossip: bind"},
		{"bind to a name", func(c *Config) { c.Bind = "localhost:0" }, "host must be an IP address"},
		{"seed without port", func(c *Config) { c.Join = []string{"seed.local"} }, `gossip: join "seed.local"`},
		{"bind failure", func(c *Config) { c.Bind = busy.Addr().String() }, "gossip: start"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig("x")
			tc.edit(&c)
			p, err := Start(c)
			if err == nil {
				p.Shutdown()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	// Every configuration problem is reported at once.
	_, err = Start(Config{Key: []byte("short"), Profile: "wan", Bind: "nope"})
	for _, want := range []string{"key is 5 bytes", "profile", "bind"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("combined error %v does not mention %q", err, want)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := Config{Insecure: true, Logger: testLogger()}
	mlc, err := c.memberlistConfig()
	if err != nil {
		t.Fatal(err)
	}
	if mlc.BindAddr != "0.0.0.0" || mlc.BindPort != 7946 || mlc.ProbeInterval != time.Second ||
		mlc.SuspicionMult != 4 || len(mlc.SecretKey) != 0 {
		t.Fatalf("defaults: bind %s:%d, probe %v, suspicion %d", mlc.BindAddr, mlc.BindPort, mlc.ProbeInterval, mlc.SuspicionMult)
	}
	if !strings.Contains(mlc.Name, "-") || mlc.Name == (func() string { m, _ := c.memberlistConfig(); return m.Name })() {
		t.Fatalf("default node name %q is not host-random", mlc.Name)
	}
	c = testConfig("x")
	c.Advertise = "localhost:7000"
	if mlc, err = c.memberlistConfig(); err != nil || mlc.AdvertisePort != 7000 || net.ParseIP(mlc.AdvertiseAddr) == nil ||
		!mlc.GossipVerifyIncoming || !mlc.GossipVerifyOutgoing || !bytes.Equal(mlc.SecretKey, testKey) {
		t.Fatalf("advertise %s:%d, err %v", mlc.AdvertiseAddr, mlc.AdvertisePort, err)
	}
	if got := fmt.Sprint(MemberAlive, MemberDead, MemberLeft); got != "alive dead left" {
		t.Fatal(got)
	}
}

// TestStoreAcrossPools: another namespace (sticky sessions) replicates
// through the pool's Store and outlives the member that wrote it.
func TestStoreAcrossPools(t *testing.T) {
	a := startPool(t, testConfig("a"))
	b := startPool(t, testConfig("b", a.Addr()))
	meshtest.WaitFor(t, 10*time.Second, "a and b to meet", func() bool { return a.NumMembers() == 2 && b.NumMembers() == 2 })

	signal, cancel := b.Store().Subscribe("sticky/")
	defer cancel()
	if err := a.Store().Set("sticky/session-1", []byte("backend-7"), SetOptions{TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	took := meshtest.WaitFor(t, 5*time.Second, "the sticky entry on b", func() bool {
		e, ok := b.Store().Get("sticky/session-1")
		return ok && string(e.Value) == "backend-7" && e.Owner == "a"
	})
	t.Logf("sticky entry replicated in %v", took)
	select {
	case <-signal:
	default:
		t.Fatal("b's subscriber was not signalled")
	}

	if err := a.Leave(leaveCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	meshtest.WaitFor(t, 5*time.Second, "b to see a leave", func() bool { return memberState(b, "a") == "left" })
	if e, ok := b.Store().Get("sticky/session-1"); !ok || string(e.Value) != "backend-7" {
		t.Fatal("the sticky entry did not outlive its writer")
	}
	if err := a.Store().Set("sticky/x", nil, SetOptions{}); err != ErrClosed {
		t.Fatalf("Set on a shut down pool's store: %v", err)
	}
}

func TestLogWriter(t *testing.T) {
	var buf bytes.Buffer
	w := logWriter{log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	fmt.Fprintln(w, "[WARN] memberlist: Refuting a suspect message (from: b)")
	if got := buf.String(); !strings.Contains(got, "level=DEBUG") || !strings.Contains(got, "memberlist_level=WARN") ||
		!strings.Contains(got, `msg="memberlist: Refuting a suspect message (from: b)"`) {
		t.Fatalf("routed as %q", got)
	}
	buf.Reset()
	quiet := logWriter{log: slog.New(slog.NewTextHandler(&buf, nil))}
	fmt.Fprintln(quiet, "[DEBUG] memberlist: chatter")
	if buf.Len() != 0 {
		t.Fatalf("debug line logged at info level: %q", buf.String())
	}
}

// leaveCtx returns a context for Leave that ends after d or with the test.
func leaveCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitLeaving waits, for up to d, until memberlist's waits for the leave
// announcements of pools are over, so that none outlives the test.
func waitLeaving(t *testing.T, d time.Duration, pools ...*Pool) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		for _, p := range pools {
			p.leaving.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("memberlist still waiting for a leave announcement after %v", d)
	}
}

// TestLeaveAllAtOnce: when every member of a pool leaves at the same
// moment (a whole mesh stopped at once), each soon hears the others leave
// and memberlist then has no one left to send its own announcement to;
// each Leave returns as soon as it sees that, without an error and well
// before its deadline, instead of waiting it out. The LAN profile sends
// each announcement to 4 members, 200ms apart, so the others' leaves are
// heard first.
func TestLeaveAllAtOnce(t *testing.T) {
	const deadline = 3 * time.Second
	const n = 3
	lan := func(name string, join ...string) Config {
		c := testConfig(name, join...)
		c.Profile = "lan"
		return c
	}
	seed := startPool(t, lan("m0"))
	pools := []*Pool{seed}
	for i := 1; i < n; i++ {
		pools = append(pools, startPool(t, lan(fmt.Sprintf("m%d", i), seed.Addr())))
	}
	logOnFailure(t, pools...)
	meshtest.WaitFor(t, 10*time.Second, "every member to meet the others", func() bool {
		for _, p := range pools {
			if p.NumMembers() != n {
				return false
			}
		}
		return true
	})

	errs := make([]error, len(pools))
	took := make([]time.Duration, len(pools))
	var wg sync.WaitGroup
	for i, p := range pools {
		wg.Go(func() {
			start := time.Now()
			errs[i] = p.Leave(leaveCtx(t, deadline))
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	for i, p := range pools {
		t.Logf("%s left in %v", p.Name(), took[i])
		if errs[i] != nil {
			t.Errorf("%s: Leave: %v", p.Name(), errs[i])
		}
		if took[i] > deadline/2 {
			t.Errorf("%s: Leave took %v, want well under its %v deadline", p.Name(), took[i], deadline)
		}
	}
	for _, p := range pools {
		if err := p.Shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	waitLeaving(t, deadline+time.Second, pools...)
}

// TestLeaveDeadline: Leave returns by its context's deadline, with an
// error that says so, when a live member may not have heard; the pool
// still shuts down cleanly. A member alone leaves at once.
func TestLeaveDeadline(t *testing.T) {
	a := startPool(t, testConfig("a"))
	b := startPool(t, testConfig("b", a.Addr()))
	meshtest.WaitFor(t, 10*time.Second, "a and b to meet", func() bool { return a.NumMembers() == 2 && b.NumMembers() == 2 })

	expired, cancel := context.WithTimeout(t.Context(), 0)
	defer cancel()
	start := time.Now()
	err := a.Leave(expired)
	if took := time.Since(start); took > time.Second {
		t.Errorf("Leave with an expired context took %v", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Leave with an expired context and a live peer: %v, want a deadline error", err)
	}
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}

	// b is alone now (a shut down without a confirmed leave, or left).
	meshtest.WaitFor(t, 30*time.Second, "b to see a gone", func() bool { return b.NumMembers() == 1 })
	start = time.Now()
	if err := b.Leave(leaveCtx(t, 5*time.Second)); err != nil {
		t.Errorf("Leave of a member alone: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Leave of a member alone took %v", took)
	}
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitLeaving(t, 5*time.Second, a, b)
}

// TestOtherSeeds: a seed list that names this member (the same list on
// every member) is joined without it, by address or host name.
func TestOtherSeeds(t *testing.T) {
	port := meshtest.FreeUDPAndTCPPort(t)
	c := testConfig("a")
	c.Bind = fmt.Sprintf("127.0.0.1:%d", port)
	a := startPool(t, c)
	self := fmt.Sprintf("127.0.0.1:%d", port)
	other := fmt.Sprintf("127.0.0.1:%d", port+1)
	remote := fmt.Sprintf("10.1.2.3:%d", port)
	got := a.otherSeeds([]string{self, fmt.Sprintf("localhost:%d", port), other, remote})
	if want := []string{other, remote}; !slices.Equal(got, want) {
		t.Fatalf("otherSeeds = %v, want %v", got, want)
	}
}
