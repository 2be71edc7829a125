// Package listener holds the sockets and servers of a sidemesh process:
// sockets that stay bound across config reloads while the server behind
// them is replaced, HTTP and TCP servers with every timeout a proxy needs,
// and graceful drain.
package listener

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Socket is one bound listening address. Its acceptor goroutine hands each
// accepted connection to whichever server is current, so a reload can
// replace the server behind an address (new timeouts, HTTP to TCP) without
// closing the socket: no connection is refused or lost while servers swap.
type Socket struct {
	ln      net.Listener
	log     *slog.Logger
	current atomic.Pointer[handoff]
	start   sync.Once     // starts the acceptor with the first server
	done    chan struct{} // closed when the acceptor exits
}

// Listen binds addr (TCP). Connections are accepted once a server serves
// the socket; until then they wait in the kernel's backlog (or, for a
// socket inherited in a handover, are accepted by the process that still
// serves it). log receives accept errors; nil means slog.Default().
func Listen(ctx context.Context, addr string, log *slog.Logger) (*Socket, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return Adopt(ln, log), nil
}

// Adopt makes a Socket of ln, a listener bound elsewhere: by a test that
// needs the address before the config is written, or inherited from the
// process that ran before. The Socket owns ln from then on.
func Adopt(ln net.Listener, log *slog.Logger) *Socket {
	if log == nil {
		log = slog.Default()
	}
	return &Socket{ln: ln, log: log, done: make(chan struct{})}
}

// Addr returns the bound address.
func (s *Socket) Addr() net.Addr { return s.ln.Addr() }

// serveTo makes h the receiver of new connections, starting the acceptor
// the first time, and returns the handoff it replaced, if any.
func (s *Socket) serveTo(h *handoff) *handoff {
	old := s.current.Swap(h)
	s.start.Do(func() { go s.accept() })
	return old
}

// Accept errors other than a closed socket are retried with a backoff
// growing from acceptBackoffMin to acceptBackoffMax, as net/http does: the
// socket stays bound, so giving up would leave the address dead until a
// restart. The usual cause is running out of file descriptors (EMFILE),
// which passes once connections close.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

func (s *Socket) accept() {
	defer close(s.done)
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			if backoff == acceptBackoffMin || backoff == acceptBackoffMax {
				s.log.Warn("accept failed; retrying", "addr", s.ln.Addr().String(), "err", err, "in", backoff.String())
			}
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		for {
			h := s.current.Load()
			if h == nil {
				c.Close() // no server yet or any more
				break
			}
			if h.deliver(c) {
				break
			}
			if s.current.Load() == h {
				c.Close() // h's server shut down, and no other took over
				break
			}
			// h was replaced by a newer one after we loaded it.
		}
	}
}

// File returns a duplicate of the socket's file descriptor, for a new
// process to accept on (a handover): the socket stays bound as long as
// either process holds it.
func (s *Socket) File() (*os.File, error) {
	f, ok := s.ln.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("listener %s (%T) has no file descriptor", s.ln.Addr(), s.ln)
	}
	return f.File()
}

// StopAccepting closes the socket so that new connections are refused at
// once; connections already accepted are not affected.
func (s *Socket) StopAccepting() { s.ln.Close() }

// Close stops accepting and waits for the acceptor to exit.
func (s *Socket) Close() {
	s.ln.Close()
	s.start.Do(func() { close(s.done) }) // never served: no acceptor to wait for
	<-s.done
}

// handoff is the net.Listener a server sees: its Accept returns the
// connections the socket delivers while this handoff is current.
type handoff struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newHandoff(addr net.Addr) *handoff {
	return &handoff{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

// deliver passes c to the server; it reports false, leaving c to the
// caller, if the handoff was closed.
func (h *handoff) deliver(c net.Conn) bool {
	select {
	case h.conns <- c:
		return true
	case <-h.closed:
		return false
	}
}

// Accept implements net.Listener.
func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.closed:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener. It stops this handoff's server from
// accepting; the socket stays open.
func (h *handoff) Close() error {
	h.once.Do(func() { close(h.closed) })
	return nil
}

// Addr implements net.Listener.
func (h *handoff) Addr() net.Addr { return h.addr }

var _ net.Listener = (*handoff)(nil)
