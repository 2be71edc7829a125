//go:build linux

package main

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"
)

// roleEnv names the environment variable that makes the harness's own
// binary (or its test binary) run as one of its helper processes instead:
// the backend, or the Go ReverseProxy row. They are separate processes so
// that the CPU /proc charges to them is theirs alone.
const roleEnv = "SIDEMESH_BENCH_ROLE"

// The roles.
const (
	roleBackend = "backend"
	roleGoProxy = "goproxy"
)

// bodySize is the size of every response of the backend.
const bodySize = 1024

// runRole runs role with args until it is killed, and returns the exit
// code for a failure to start.
func runRole(role string, args []string) int {
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve on")
	upstream := fs.String("upstream", "", "goproxy: host:port of the backend")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var h http.Handler
	switch role {
	case roleBackend:
		h = backendHandler()
	case roleGoProxy:
		if *upstream == "" {
			fmt.Fprintln(os.Stderr, "benchcompare goproxy: -upstream is required")
			return 2
		}
		h = newGoProxy(*upstream)
	default:
		fmt.Fprintf(os.Stderr, "benchcompare: %s=%q: want %s or %s\n", roleEnv, role, roleBackend, roleGoProxy)
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchcompare %s: %v\n", role, err)
		return 1
	}
	err = newServer(h).Serve(ln)
	fmt.Fprintf(os.Stderr, "benchcompare %s: %v\n", role, err)
	return 1
}

// newServer returns a server of h that speaks HTTP/1.1 and h2c (prior
// knowledge) on the same listener, with the timeouts sidemesh's
// listeners have by default.
func newServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		Protocols:         &p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
}

// backendHandler answers every request with the same 1 KiB, and nothing
// else: its headers are built once.
func backendHandler() http.Handler {
	body := bytes.Repeat([]byte("sidemesh bench-compare 1 KiB body\n"), bodySize/34+1)[:bodySize]
	body[bodySize-1] = '\n'
	ct, cl := []string{"text/plain; charset=utf-8"}, []string{strconv.Itoa(bodySize)}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = ct
		h["Content-Length"] = cl
		w.Write(body)
	})
}

// newGoProxy returns the Go row: httputil.ReverseProxy as its
// documentation advises it be tuned (STYLE.md): Rewrite, a buffer pool,
// and a transport whose pool keeps enough idle connections per host (the
// default of 2 makes a busy proxy dial for most requests).
func newGoProxy(upstream string) http.Handler {
	target := &url.URL{Scheme: "http", Host: upstream}
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
			r.SetXForwarded()
		},
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		BufferPool: newBufferPool(32 << 10),
	}
}

// bufferPool is an httputil.BufferPool of fixed-size buffers.
type bufferPool struct{ p sync.Pool }

func newBufferPool(size int) *bufferPool {
	bp := &bufferPool{}
	bp.p.New = func() any { b := make([]byte, size); return &b }
	return bp
}

// Get returns a buffer from the pool.
func (bp *bufferPool) Get() []byte { return *bp.p.Get().(*[]byte) }

// Put returns b to the pool.
func (bp *bufferPool) Put(b []byte) { bp.p.Put(&b) }

var _ httputil.BufferPool = (*bufferPool)(nil)
