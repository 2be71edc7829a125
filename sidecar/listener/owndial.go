package listener

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
)

// DialGuarded connects to addr as a net.Dialer does, for a connection a
// listener with Detection took over (to its original destination, or to
// an instance of the service there). When netfilter redirects the
// connection back to such a listener, because this process's own
// connections are redirected too, that listener recognises it by its
// source port and refuses it with an error log, where passing it on would
// loop until the file descriptors run out. To that end the socket binds
// its local port before it connects (bind(2) to port 0, on Linux), which
// takes a port of the ephemeral range that no other socket holds, and the
// port is remembered until the connection is closed. Safe for concurrent
// use.
func DialGuarded(ctx context.Context, network, addr string) (net.Conn, error) {
	// The dialer may try several addresses of a name, each on a socket of
	// its own, some in parallel: their ports are remembered until the
	// dial returns, and a socket it still makes after that (a racer it
	// abandons) is refused.
	var mu sync.Mutex
	var bound []uint16
	over := false
	d := net.Dialer{ControlContext: func(_ context.Context, network, _ string, raw syscall.RawConn) error {
		mu.Lock()
		defer mu.Unlock()
		if over {
			return errDialOver
		}
		var port uint16
		var err error
		if cerr := raw.Control(func(fd uintptr) { port, err = bindAnyPort(fd, network) }); cerr != nil {
			return cerr
		}
		if err != nil {
			return fmt.Errorf("bind a local port before connecting: %w", err)
		}
		if port != 0 {
			ownPorts.add(port)
			bound = append(bound, port)
		}
		return nil
	}}
	c, err := d.DialContext(ctx, network, addr)
	kept := uint16(0)
	if err == nil {
		kept = uint16(c.LocalAddr().(*net.TCPAddr).Port)
	}
	mu.Lock()
	over = true
	for _, p := range bound {
		if p != kept {
			ownPorts.remove(p)
		}
	}
	remembered := len(bound) > 0
	mu.Unlock()
	if err != nil {
		return nil, err
	}
	if !remembered {
		return c, nil // nothing remembered (not Linux)
	}
	return &guardedConn{TCPConn: c.(*net.TCPConn), port: kept}, nil
}

// errDialOver refuses a socket DialGuarded's dialer makes after the dial
// returned.
var errDialOver = errors.New("the dial is over")

// guardedConn is a connection DialGuarded opened: closing it forgets its
// port.
type guardedConn struct {
	*net.TCPConn
	port uint16
	once sync.Once
}

func (c *guardedConn) Close() error {
	err := c.TCPConn.Close()
	c.once.Do(func() { ownPorts.remove(c.port) })
	return err
}

// ownPorts holds the local ports of the connections DialGuarded opened
// that are still open, in this process: a port is bound on every address
// of its network namespace, so no other socket there has it meanwhile.
var ownPorts = portSet{n: make(map[uint16]int)}

// portSet is a set of ports with a count each. Safe for concurrent use.
type portSet struct {
	mu sync.Mutex
	n  map[uint16]int
}

func (s *portSet) add(p uint16) {
	s.mu.Lock()
	s.n[p]++
	s.mu.Unlock()
}

func (s *portSet) remove(p uint16) {
	s.mu.Lock()
	if s.n[p]--; s.n[p] <= 0 {
		delete(s.n, p)
	}
	s.mu.Unlock()
}

func (s *portSet) has(p uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[p] > 0
}

var _ net.Conn = (*guardedConn)(nil)
