// Package meshtest is the one home of the helpers sidemesh's own tests
// share: polling with a deadline instead of sleeping, the named wait for
// "nothing happens", loopback listeners and servers, and a log sink to
// read back. It imports nothing of sidemesh, so every package's tests can
// use it.
package meshtest

import (
	"bytes"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// PollInterval is how often WaitFor and Eventually check their condition.
const PollInterval = 10 * time.Millisecond

// Quiet is how long a test watches for something that must not happen (a
// snapshot without a change, a registration coming back): long enough for
// the event to show up on a loaded CI machine if the code were wrong, short
// enough to keep the suite fast. Use it, never a bare sleep, and say in a
// comment what it guards.
const Quiet = 500 * time.Millisecond

// Eventually calls cond every PollInterval until it returns nil, and fails
// t with what and cond's last error if that has not happened within
// timeout. It returns how long it waited.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s: %v", timeout, what, err)
		}
		time.Sleep(PollInterval)
	}
}

// WaitFor is Eventually for a condition that has no more to say than
// whether it holds.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return Eventually(t, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

type notYet struct{}

func (notYet) Error() string { return "condition not met" }

var errNotYet error = notYet{}

// Listen returns a TCP listener on a free loopback port, closed when the
// test ends. Hand it to the code under test where the code allows it (a
// port that is closed and taken again races with parallel tests).
func Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// FreeAddr returns a loopback "host:port" that was free a moment ago, for
// what must bind an address itself: another process (a Consul agent, a
// sidemesh binary) or a library that takes only an address (memberlist).
// Another test may take the port in between: prefer Listen.
//
// The port is drawn at random below Linux's ephemeral range (32768 and
// up), from which the kernel picks the local ports of outgoing
// connections and of listeners on port 0: a port from that range, closed
// and handed to another process, was often taken by some connection
// before that process could bind it.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, false)))
}

// freePort returns a random loopback port in [freeLow, freeHigh] that
// was free for TCP (and, with udp, for UDP) a moment ago.
func freePort(t testing.TB, udp bool) int {
	t.Helper()
	for range 200 {
		port := freeLow + rand.IntN(freeHigh-freeLow+1)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		if udp {
			u, err := net.ListenPacket("udp", addr)
			if err != nil {
				l.Close()
				continue
			}
			u.Close()
		}
		l.Close()
		return port
	}
	t.Fatalf("meshtest: no free loopback port in %d-%d after 200 tries", freeLow, freeHigh)
	return 0
}

// The ports FreeAddr draws from: below the ephemeral range.
const freeLow, freeHigh = 20000, 32767

// FreePort is FreeAddr's port.
func FreePort(t testing.TB) int {
	t.Helper()
	_, p, _ := net.SplitHostPort(FreeAddr(t))
	port, _ := strconv.Atoi(p)
	return port
}

// FreeUDPAndTCPPort is FreePort for what binds the same port for TCP and
// UDP (memberlist, serf): it returns a loopback port that was free for
// both a moment ago. The same race as FreeAddr's applies.
func FreeUDPAndTCPPort(t testing.TB) int {
	t.Helper()
	return freePort(t, true)
}

// Serve accepts connections on ln and runs handle on each in a goroutine
// of its own, closing the connection when handle returns. When the test
// ends it closes ln and every connection still open, and waits for the
// handlers to return: nothing of it outlives the test.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	var (
		mu     sync.Mutex
		conns  = map[net.Conn]struct{}{}
		closed bool
		wg     sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// LogBuffer is a log sink a server writes while the test reads it: a
// bytes.Buffer safe for concurrent use. The zero value is empty and ready.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
