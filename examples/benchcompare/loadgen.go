//go:build linux

package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds, in microseconds: 1 µs to a minute, 3 significant
// digits.
const (
	histMin    = 1
	histMax    = int64(time.Minute / time.Microsecond)
	histDigits = 3
)

// newHist returns an empty latency histogram in microseconds.
func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, histDigits) }

// recordDuration records d in h, clamped to h's range.
func recordDuration(h *hdrhistogram.Histogram, d time.Duration) {
	us := min(max(int64(d/time.Microsecond), 0), histMax)
	h.RecordValue(us) // cannot fail within the range
}

// Protocols a load generator speaks to a target.
const (
	protoH1 = "h1" // HTTP/1.1 keep-alive
	protoH2 = "h2" // HTTP/2: h2c with prior knowledge, or h2 by ALPN over TLS
)

// target is where a generator sends its requests: GET of URL.
type target struct {
	URL    string      // http://127.0.0.1:port/ or https://…
	Host   string      // the Host header; "" keeps the URL's
	Header http.Header // added to every request (Authorization)
	TLS    *tls.Config // for https: the CA and the server name
	Proto  string      // protoH1 or protoH2
}

// transport returns a transport for t that keeps up to conns
// connections.
func (t target) transport(conns int) *http.Transport {
	var p http.Protocols
	// A transport adds "h2" to its TLS config's NextProtos in place: each
	// gets its own copy, offering only its protocol by ALPN.
	var tc *tls.Config
	if t.TLS != nil {
		tc = t.TLS.Clone()
	}
	switch {
	case t.Proto == protoH1:
		p.SetHTTP1(true)
		if tc != nil {
			tc.NextProtos = []string{"http/1.1"}
		}
	case tc != nil:
		p.SetHTTP2(true)
		tc.NextProtos = []string{"h2"}
	default:
		p.SetUnencryptedHTTP2(true)
	}
	return &http.Transport{
		Protocols:           &p,
		TLSClientConfig:     tc,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxConnsPerHost:     conns,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
}

// request returns a new request of t.
func (t target) request(ctx context.Context) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("request to %s: %w", t.URL, err)
	}
	if t.Host != "" {
		req.Host = t.Host
	}
	for k, v := range t.Header {
		req.Header[k] = v
	}
	return req, nil
}

// sender sends the requests of one generator: worker i sends on the
// request it owns, through the transport it shares with the workers of
// the same connection group.
type sender struct {
	clients []*http.Client
	reqs    []*http.Request
}

// newSender prepares a request for each of workers and the transports
// they share: for HTTP/1.1 (groups 1), one transport of up to workers
// connections, one per worker in flight; for h2, groups transports of one
// connection each, worker w's streams on transport w % groups.
func newSender(ctx context.Context, t target, workers, groups int) (*sender, error) {
	s := &sender{}
	conns := workers
	if t.Proto == protoH2 {
		conns = 1
	}
	for range groups {
		s.clients = append(s.clients, &http.Client{Transport: t.transport(conns), Timeout: 10 * time.Second})
	}
	for range workers {
		req, err := t.request(ctx)
		if err != nil {
			return nil, err
		}
		s.reqs = append(s.reqs, req)
	}
	return s, nil
}

// send sends worker's request, reads the whole response and returns an
// error unless it is a 200.
func (s *sender) send(worker int) error {
	resp, err := s.clients[worker%len(s.clients)].Do(s.reqs[worker])
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read the body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d (%s)", resp.StatusCode, resp.Header.Get("X-Sidemesh-Error"))
	}
	return nil
}

// close closes the sender's idle connections.
func (s *sender) close() {
	for _, c := range s.clients {
		c.CloseIdleConnections()
	}
}

// loadResult is what a generator measured in its measured window.
type loadResult struct {
	Requests int64                   // answered 200 within the window
	Errors   int64                   // failed or not 200 within the window
	Window   time.Duration           // length of the measured window
	Latency  *hdrhistogram.Histogram // µs, of the requests answered 200
	// Lag, open loop only: µs from when each request was due to when it
	// was sent; the generator's own lateness plus waiting for a free
	// connection.
	Lag       *hdrhistogram.Histogram
	FirstErr  error // the first error, for the log
	Generator string
}

// hooks are called at the edges of the measured window: the harness reads
// the proxies' CPU time there.
type hooks struct {
	start, end func()
}

func (h hooks) onStart() {
	if h.start != nil {
		h.start()
	}
}

func (h hooks) onEnd() {
	if h.end != nil {
		h.end()
	}
}

// closedLoop runs workers that each send a request as soon as the last
// one was answered: the most a target can answer with that many requests
// in flight. Requests completed during the first warmup are not
// recorded; those completed in the next duration are.
func closedLoop(ctx context.Context, workers int, warmup, duration time.Duration, send func(worker int) error, h hooks) loadResult {
	var measuring, stop atomic.Bool
	hists := make([]*hdrhistogram.Histogram, workers)
	oks, errs := make([]int64, workers), make([]int64, workers)
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for w := range workers {
		hists[w] = newHist()
		wg.Go(func() {
			for !stop.Load() {
				t0 := time.Now()
				err := send(w)
				d := time.Since(t0)
				if !measuring.Load() {
					continue
				}
				if err != nil {
					errs[w]++
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				oks[w]++
				recordDuration(hists[w], d)
			}
		})
	}
	sleepCtx(ctx, warmup)
	h.onStart()
	measuring.Store(true)
	start := time.Now()
	sleepCtx(ctx, duration)
	measuring.Store(false)
	window := time.Since(start)
	h.onEnd()
	stop.Store(true)
	wg.Wait()
	r := loadResult{Window: window, Latency: newHist(), Generator: "go"}
	for w := range workers {
		r.Latency.Merge(hists[w])
		r.Requests += oks[w]
		r.Errors += errs[w]
	}
	if e := firstErr.Load(); e != nil {
		r.FirstErr = *e
	}
	return r
}

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
