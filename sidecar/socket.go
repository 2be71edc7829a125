package sidecar

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
)

// socket is one bound listening address. Its acceptor goroutine hands each
// accepted connection to whichever server is current, so a reload can
// replace the server behind an address (new timeouts, HTTP to TCP) without
// closing the socket: no connection is refused or lost while servers swap.
type socket struct {
	addr    string
	ln      net.Listener
	current atomic.Pointer[handoff]
	done    chan struct{} // closed when the acceptor exits
}

// listen binds addr and starts accepting.
func listen(ctx context.Context, addr string) (*socket, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &socket{addr: addr, ln: ln, done: make(chan struct{})}
	go s.accept()
	return s, nil
}

// serveTo makes h the receiver of new connections and returns the handoff
// it replaced, if any. The caller closes the old handoff once its server
// is shut down.
func (s *socket) serveTo(h *handoff) *handoff {
	return s.current.Swap(h)
}

func (s *socket) accept() {
	defer close(s.done)
	for {
		c, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if h := s.current.Load(); h != nil {
				h.fail(err)
			}
			return
		}
		for {
			h := s.current.Load()
			if h == nil {
				c.Close() // no server yet or any more
				break
			}
			if h.deliver(c) {
				break
			}
			// h was closed after we loaded it; a newer one is current.
		}
	}
}

// close stops accepting and waits for the acceptor to exit.
func (s *socket) close() {
	s.ln.Close()
	<-s.done
}

// handoff is the net.Listener a server sees: its Accept returns the
// connections the socket delivers while this handoff is current.
type handoff struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	errMu  sync.Mutex
	err    error // a permanent accept error from the socket
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

func (h *handoff) fail(err error) {
	h.errMu.Lock()
	h.err = err
	h.errMu.Unlock()
	h.Close()
}

// Accept implements net.Listener.
func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.closed:
		h.errMu.Lock()
		defer h.errMu.Unlock()
		if h.err != nil {
			return nil, h.err
		}
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
