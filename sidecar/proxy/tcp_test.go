package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

// startTCPBackend serves handle on every connection accepted on a loopback
// port. Connections get the test deadline; listener and connections are
// closed and the handlers waited for when the test ends.
func startTCPBackend(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln := listen(t)
	meshtest.Serve(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(testTimeout))
		handle(c)
	})
	return ln.Addr().String()
}

func tcpEcho(c net.Conn) { io.Copy(c, c) }

// startTCPProxy serves a TCPProxy for target on a loopback port. It is
// shut down when the test ends, and every endpoint must be idle by then.
func startTCPProxy(t testing.TB, target *proxy.TCPTarget, bal *balancer.Balancer) (*proxy.TCPProxy, string) {
	t.Helper()
	p := &proxy.TCPProxy{
		Target: func() *proxy.TCPTarget { return target },
		Logger: slog.New(slog.DiscardHandler),
	}
	ln := listen(t)
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("TCP proxy shutdown: %v", err)
		}
		if err := <-errc; !errors.Is(err, proxy.ErrProxyClosed) {
			t.Errorf("Serve returned %v, want ErrProxyClosed", err)
		}
		waitIdle(t, bal)
	})
	return p, ln.Addr().String()
}

// startTCPOutbound is the usual TCP setup: a TCP proxy to backends.
func startTCPOutbound(t testing.TB, idle time.Duration, backends ...string) (*proxy.TCPProxy, string, *balancer.Balancer) {
	t.Helper()
	bal := newBalancer(t, "db", backends...)
	p, addr := startTCPProxy(t, &proxy.TCPTarget{Name: "db", Picker: bal, IdleTimeout: idle}, bal)
	return p, addr, bal
}

// dialTCP connects to addr with the test deadline set on the connection.
func dialTCP(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testTimeout))
	return c.(*net.TCPConn)
}

// roundTrip writes msg and reads back as many bytes.
func roundTrip(t testing.TB, c net.Conn, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo differs (%d bytes)", len(msg))
	}
}

// expectClosed fails unless c reaches EOF (or is reset) within d.
func expectClosed(t testing.TB, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	n, err := io.Copy(io.Discard, c)
	if errors.Is(err, io.EOF) || err == nil {
		return
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v (%d bytes read)", d, n)
	}
	// A reset is a close too.
}

// waitActive waits until p has n open sessions.
func waitActive(t testing.TB, p *proxy.TCPProxy, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Active() != n {
		if time.Now().After(deadline) {
			t.Fatalf("Active() = %d, want %d", p.Active(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTCPEcho(t *testing.T) {
	p, addr, bal := startTCPOutbound(t, 0, startTCPBackend(t, tcpEcho))
	c := dialTCP(t, addr)
	for i := range 5 {
		roundTrip(t, c, []byte(fmt.Sprintf("message %d", i)))
	}
	big := make([]byte, 4<<20)
	fillChunk(big, 1)
	done := make(chan error, 1)
	go func() { _, err := c.Write(big); done <- err }() // echo comes back while we write
	got := make([]byte, len(big))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("4 MiB echo: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if p.Active() != 1 || bal.Endpoints()[0].InFlight() != 1 {
		t.Errorf("Active %d, InFlight %d during the session; want 1, 1", p.Active(), bal.Endpoints()[0].InFlight())
	}
	c.Close()
	waitActive(t, p, 0)
	waitIdle(t, bal)
}

func TestTCPHalfClose(t *testing.T) {
	backend := startTCPBackend(t, func(c net.Conn) {
		data, err := io.ReadAll(c) // until the client's CloseWrite
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d bytes; tail follows", len(data))
		// Returning closes the connection: EOF for the client.
	})
	_, addr, _ := startTCPOutbound(t, 0, backend)
	c := dialTCP(t, addr)
	if _, err := c.Write(bytes.Repeat([]byte("x"), 100000)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the tail: %v", err)
	}
	if string(got) != "got 100000 bytes; tail follows" {
		t.Errorf("tail = %q", got)
	}
}

func TestTCPIdleTimeout(t *testing.T) {
	const idle = 200 * time.Millisecond
	t.Run("idle session is closed", func(t *testing.T) {
		p, addr, _ := startTCPOutbound(t, idle, startTCPBackend(t, tcpEcho))
		c := dialTCP(t, addr)
		roundTrip(t, c, []byte("hi"))
		start := time.Now()
		expectClosed(t, c, 5*time.Second)
		if elapsed := time.Since(start); elapsed < idle-20*time.Millisecond || elapsed > 2*time.Second {
			t.Errorf("closed after %v, want about %v", elapsed, idle)
		}
		waitActive(t, p, 0)
	})
	t.Run("busy client keeps it open", func(t *testing.T) {
		_, addr, _ := startTCPOutbound(t, idle, startTCPBackend(t, tcpEcho))
		c := dialTCP(t, addr)
		start := time.Now()
		for i := 0; time.Since(start) < 3*idle; i++ {
			roundTrip(t, c, []byte("ping "+strconv.Itoa(i)))
			time.Sleep(idle / 4) // the traffic pattern under test, not a wait
		}
		expectClosed(t, c, 5*time.Second)
	})
	t.Run("one busy direction keeps it open", func(t *testing.T) {
		const ticks = 8
		backend := startTCPBackend(t, func(c net.Conn) {
			for i := range ticks {
				if _, err := fmt.Fprintf(c, "tick %d\n", i); err != nil {
					return
				}
				time.Sleep(idle / 4)
			}
			io.Copy(io.Discard, c) // then silence until the proxy closes
		})
		_, addr, _ := startTCPOutbound(t, idle, backend)
		c := dialTCP(t, addr)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c) // the client never writes
		if want := ticks; bytes.Count(got, []byte("\n")) != want {
			t.Errorf("got %q, want %d ticks before the idle close", got, want)
		}
	})
}

func TestTCPShutdown(t *testing.T) {
	t.Run("waits for open sessions", func(t *testing.T) {
		p, addr, _ := startTCPOutbound(t, 0, startTCPBackend(t, tcpEcho))
		c := dialTCP(t, addr)
		roundTrip(t, c, []byte("before"))

		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- p.Shutdown(ctx)
		}()
		// New connections are refused once the listener is closed.
		deadline := time.Now().Add(5 * time.Second)
		for {
			nc, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				break
			}
			nc.Close()
			if time.Now().After(deadline) {
				t.Fatal("proxy still accepts connections during shutdown")
			}
			time.Sleep(5 * time.Millisecond)
		}
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v with a session open", err)
		default:
		}
		roundTrip(t, c, []byte("the open session still works"))
		c.Close()
		if err := waitFor(t, done, "Shutdown after the session closed"); err != nil {
			t.Errorf("Shutdown = %v, want nil", err)
		}
	})
	t.Run("forces sessions closed at the deadline", func(t *testing.T) {
		p, addr, _ := startTCPOutbound(t, 0, startTCPBackend(t, tcpEcho))
		c := dialTCP(t, addr)
		roundTrip(t, c, []byte("hello"))
		waitActive(t, p, 1)

		const grace = 300 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		start := time.Now()
		err := p.Shutdown(ctx)
		elapsed := time.Since(start)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
		}
		if elapsed < grace-20*time.Millisecond || elapsed > 2*time.Second {
			t.Errorf("Shutdown took %v, want about %v", elapsed, grace)
		}
		expectClosed(t, c, 2*time.Second)
		if p.Active() != 0 {
			t.Errorf("Active() = %d after Shutdown", p.Active())
		}
	})
}

func TestTCPUpstreamFailures(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backends []string
	}{
		{"connect failure", []string{deadAddr(t)}},
		{"no endpoints", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rp := &recordingPicker{}
			bal := newBalancer(t, "db", tc.backends...)
			rp.Picker = bal
			p, addr := startTCPProxy(t, &proxy.TCPTarget{Name: "db", Picker: rp}, bal)
			c := dialTCP(t, addr)
			start := time.Now()
			expectClosed(t, c, 2*time.Second)
			if time.Since(start) > time.Second {
				t.Errorf("closed after %v", time.Since(start))
			}
			waitActive(t, p, 0)
			if len(tc.backends) > 0 {
				if res := rp.waitResults(t, 1); res[0].Err == nil {
					t.Errorf("connect failure not reported to the balancer: %+v", res[0])
				}
			}
		})
	}
}

// TestTCPSessionEndsBlameTheRightSide checks what a finished session
// reports to the balancer: only the endpoint breaking the session is its
// failure; a client hanging up, the idle timeout and Shutdown are not.
func TestTCPSessionEndsBlameTheRightSide(t *testing.T) {
	const idle = 200 * time.Millisecond
	reset := func(c net.Conn) {
		c.(*net.TCPConn).SetLinger(0) // Close sends RST
		c.Close()
	}
	for _, tc := range []struct {
		name    string
		backend func(net.Conn)
		end     func(t *testing.T, p *proxy.TCPProxy, c *net.TCPConn)
		blame   bool
	}{
		{name: "client closes", backend: tcpEcho,
			end: func(t *testing.T, p *proxy.TCPProxy, c *net.TCPConn) { c.Close() }},
		{name: "client resets", backend: tcpEcho,
			end: func(t *testing.T, p *proxy.TCPProxy, c *net.TCPConn) { reset(c) }},
		{name: "idle timeout", backend: tcpEcho,
			end: func(t *testing.T, p *proxy.TCPProxy, c *net.TCPConn) { expectClosed(t, c, 5*time.Second) }},
		{name: "shutdown", backend: tcpEcho,
			end: func(t *testing.T, p *proxy.TCPProxy, c *net.TCPConn) {
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				defer cancel()
				p.Shutdown(ctx)
			}},
		{name: "endpoint resets", blame: true,
			backend: func(c net.Conn) {
				buf := make([]byte, 5)
				io.ReadFull(c, buf)
				c.Write(buf)
				reset(c)
			},
			end: func(t *testing.T, p *proxy.TCPProxy, c *net.TCPConn) { expectClosed(t, c, 5*time.Second) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rp := &recordingPicker{}
			bal := newBalancer(t, "db", startTCPBackend(t, tc.backend))
			rp.Picker = bal
			p, addr := startTCPProxy(t, &proxy.TCPTarget{Name: "db", Picker: rp, IdleTimeout: idle}, bal)
			c := dialTCP(t, addr)
			roundTrip(t, c, []byte("hello"))
			tc.end(t, p, c)
			res := rp.waitResults(t, 1)[0]
			if blamed := res.Err != nil; blamed != tc.blame {
				t.Errorf("session end reported as %+v; endpoint blamed = %v, want %v", res, blamed, tc.blame)
			}
		})
	}
}
