package health

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// UserAgent is the User-Agent header of HTTP checks, so that endpoints can
// tell checks from traffic in their logs.
const UserAgent = "sidemesh-health-check"

// maxBody is how much of a response body an HTTP check reads. A check only
// needs the status; reading a little more catches an endpoint that sends
// headers and then breaks, without downloading a large page every Interval.
const maxBody = 4 << 10

// prober runs one check against an address. Implementations are safe for
// concurrent use; the caller bounds each probe with a context deadline.
type prober interface {
	// probe returns nil when the endpoint at addr passes, or why it failed.
	probe(ctx context.Context, addr string) error
	// close releases the prober's resources once no probe runs.
	close()
}

// newProber returns the prober that s describes (s has its defaults).
func newProber(s Settings) prober {
	if s.TCP {
		return &tcpProber{tls: s.TLS}
	}
	return newHTTPProber(s)
}

// tcpProber passes an endpoint that accepts a TCP connection (and, with
// tls set, completes a TLS handshake).
type tcpProber struct {
	dialer net.Dialer
	tls    *tls.Config
}

func (p *tcpProber) probe(ctx context.Context, addr string) error {
	var conn net.Conn
	var err error
	if p.tls != nil {
		d := tls.Dialer{NetDialer: &p.dialer, Config: p.tls}
		conn, err = d.DialContext(ctx, "tcp", addr)
	} else {
		conn, err = p.dialer.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return err
	}
	conn.Close()
	return nil
}

func (p *tcpProber) close() {}

// httpProber passes an endpoint that answers a GET with 2xx or 3xx.
type httpProber struct {
	transport *http.Transport
	client    *http.Client
	path      string // starts with "/"
	host      string // empty: the address
	scheme    string // https with TLS
}

// newHTTPProber returns a prober with a transport of its own: keep-alives
// off, so that every check dials afresh and really tests that the endpoint
// accepts connections (a pooled connection can outlive a listener that no
// longer accepts); no proxy from the environment, since the check must
// reach the endpoint itself; HTTP/1.1, or h2c with prior knowledge when
// s.HTTP2 is set.
func newHTTPProber(s Settings) *httpProber {
	dialer := &net.Dialer{Timeout: s.Timeout}
	t := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	var protos http.Protocols
	switch {
	case s.TLS != nil && s.HTTP2:
		protos.SetHTTP2(true)
	case s.HTTP2:
		protos.SetUnencryptedHTTP2(true)
	default:
		protos.SetHTTP1(true)
	}
	t.Protocols = &protos
	t.TLSClientConfig = s.TLS
	scheme := "http"
	if s.TLS != nil {
		scheme = "https"
	}

	path := s.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return &httpProber{
		transport: t,
		client: &http.Client{
			Transport: t,
			// A redirect is an answer: 3xx passes, and where it points is
			// not the endpoint being checked.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		path:   path,
		host:   s.Host,
		scheme: scheme,
	}
}

func (p *httpProber) probe(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.scheme+"://"+addr+p.path, nil)
	if err != nil {
		return err
	}
	if p.host != "" {
		req.Host = p.host
	}
	req.Header.Set("User-Agent", UserAgent)
	resp, err := p.client.Do(req)
	if err != nil {
		return err // a *url.Error, naming method and URL
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("GET %s: status %d", req.URL, resp.StatusCode)
	}
	if err != nil {
		return fmt.Errorf("GET %s: reading body: %w", req.URL, err)
	}
	return nil
}

func (p *httpProber) close() { p.transport.CloseIdleConnections() }

var (
	_ prober = (*tcpProber)(nil)
	_ prober = (*httpProber)(nil)
)
