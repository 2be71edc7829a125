package consul

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul/consultest"
	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/policy/identity"
)

// peerHeader carries the caller's verified identity from the stand-in
// sidecar to its app, as the sidecar's tls.identity_header does.
const peerHeader = "X-Sidemesh-Peer-Identity"

// standInSidecar is the inbound side of a sidemesh sidecar, reduced to
// what this test needs: mTLS with identity.ServerConfig on a CASource,
// the caller's SPIFFE ID recorded and passed to the app in peerHeader, a
// reverse proxy to a plain HTTP app.
type standInSidecar struct {
	addr string
	mu   sync.Mutex
	seen []identity.ID
}

func newStandInSidecar(t *testing.T, src identity.Source, app string) *standInSidecar {
	t.Helper()
	target, err := url.Parse(app)
	if err != nil {
		t.Fatal(err)
	}
	s := &standInSidecar{}
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Del(peerHeader)
			if id, err := identity.PeerID(*pr.In.TLS); err == nil {
				pr.Out.Header.Set(peerHeader, id.String())
			}
		},
		Transport: tr,
		ErrorLog:  stdlog.New(io.Discard, "", 0),
	}
	s.addr = mtlsServer(t, src, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := identity.PeerID(*r.TLS)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		s.mu.Lock()
		s.seen = append(s.seen, id)
		s.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	return s
}

func (s *standInSidecar) callers() []identity.ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]identity.ID(nil), s.seen...)
}

// echoApp is a plain HTTP app that answers "<name> <path> <peerHeader>"
// and 200 on /healthz.
func echoApp(t *testing.T, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		fmt.Fprintf(w, "%s %s %s", name, r.URL.Path, r.Header.Get(peerHeader))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestInteropWithConsulProxy checks that a CASource-based sidecar and
// Consul's built-in proxy (`consul connect proxy`, from the same binary as
// the agent) accept each other's certificates and see each other's
// identities, both ways.
//
//	plain client → built-in proxy "web" (upstream cart) → mTLS → stand-in sidecar "cart" → cart app
//	CASource client "cart" → mTLS → built-in proxy "web" (public listener) → web app
func TestInteropWithConsulProxy(t *testing.T) {
	t.Parallel()
	start := time.Now()
	agent := consultest.Start(t)
	client := agent.Client()
	cartCA := runCAWith(t, client, "cart", CAOptions{WaitTime: 10 * time.Second})
	cartBundle := waitReady(t, cartCA, 10*time.Second)

	// cart: an app behind the stand-in sidecar, registered as a mesh
	// service with its sidecar, as sidemesh registers it.
	cartApp := echoApp(t, "cart")
	sidecar := newStandInSidecar(t, cartCA, cartApp.URL)
	host, port, _ := net.SplitHostPort(sidecar.addr)
	sidecarPort, _ := strconv.Atoi(port)
	appHost, appPort, _ := net.SplitHostPort(cartApp.Listener.Addr().String())
	appPortN, _ := strconv.Atoi(appPort)
	reg := NewRegistrar(client, RegistrarOptions{
		AppAddress: appHost, AppPort: appPortN, HealthPath: "/healthz", HealthInterval: time.Second, TTL: 3 * time.Second,
	})
	if err := reg.Register(ctxFor(t), discovery.Instance{ID: "cart-1", Service: "cart", Address: host, Port: sidecarPort, Weight: 1}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Deregister(context.Background()) })
	meshtest.Eventually(t, 15*time.Second, "cart's mesh endpoint to pass", func() error {
		entries, _, err := client.Health().Connect("cart", "", true, nil)
		if err != nil {
			return err
		}
		if len(entries) != 1 {
			return fmt.Errorf("%d passing mesh endpoints of cart", len(entries))
		}
		return nil
	})

	// web: a plain app behind Consul's built-in proxy, which also has an
	// upstream listener for cart.
	webApp := echoApp(t, "web")
	upstreamPort, publicPort := meshtest.FreePort(t), meshtest.FreePort(t)
	upstream := net.JoinHostPort("127.0.0.1", strconv.Itoa(upstreamPort))
	public := net.JoinHostPort("127.0.0.1", strconv.Itoa(publicPort))
	proxy := agent.ConnectProxy(t,
		"-service", "web",
		"-service-addr", webApp.Listener.Addr().String(),
		"-listen", public,
		"-upstream", "cart:"+strconv.Itoa(upstreamPort),
	)
	t.Logf("agent, cart and the built-in proxy up after %v", time.Since(start).Round(time.Millisecond))

	wantWeb := identity.ID{TrustDomain: cartBundle.ID.TrustDomain, Namespace: "default", Datacenter: "dc1", Service: "web"}

	// (a) built-in proxy → our mTLS server.
	plain := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	var body string
	meshtest.Eventually(t, 10*time.Second, "a call through the built-in proxy's upstream", func() error {
		var err error
		body, err = get(plain, "http://"+upstream+"/hello")
		return err
	})
	if want := "cart /hello " + wantWeb.String(); body != want {
		t.Errorf("through the built-in proxy's upstream: %q, want %q", body, want)
	}
	callers := sidecar.callers()
	if len(callers) == 0 || callers[0] != wantWeb {
		t.Errorf("stand-in sidecar saw callers %v, want %v", callers, wantWeb)
	}
	if !strings.Contains(proxy.Output(), "svc/web") {
		t.Errorf("built-in proxy did not log its identity")
	}

	// (b) our mTLS client → built-in proxy's public listener.
	c := mtlsClient(t, cartCA, "web", "default", true)
	meshtest.Eventually(t, 10*time.Second, "a call to the built-in proxy's public listener", func() error {
		var err error
		body, err = get(c, "https://"+public+"/from-cart")
		return err
	})
	if want := "web /from-cart "; body != want {
		t.Errorf("through the built-in proxy's public listener: %q, want %q", body, want)
	}
	// The built-in proxy presents web's certificate: a client that
	// expects another service refuses it.
	if _, err := get(mtlsClient(t, cartCA, "billing", "", true), "https://"+public+"/"); !errors.Is(err, identity.ErrIdentityMismatch) {
		t.Errorf("calling the built-in proxy expecting billing: err = %v, want ErrIdentityMismatch", err)
	}

	// The built-in proxy identified us as cart: an intention that denies
	// cart -> web makes it refuse our connections, and one that allows
	// cart lets them through again.
	fresh := mtlsClient(t, cartCA, "web", "default", false)
	setIntention := func(action api.IntentionAction) {
		t.Helper()
		if _, _, err := client.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{
			Kind: api.ServiceIntentions, Name: "web",
			Sources: []*api.SourceIntention{{Name: "cart", Action: action}},
		}, nil); err != nil {
			t.Fatal(err)
		}
	}
	setIntention(api.IntentionActionDeny)
	meshtest.Eventually(t, 10*time.Second, "the deny intention to take effect", func() error {
		if _, err := get(fresh, "https://"+public+"/"); err == nil {
			return errors.New("cart still allowed")
		}
		return nil
	})
	// The proxy logs the denial just after it closes the connection.
	meshtest.Eventually(t, 5*time.Second, "the built-in proxy to log the denial", func() error {
		if !strings.Contains(proxy.Output(), "authz call denied") {
			return errors.New("built-in proxy did not log a denial")
		}
		return nil
	})
	out := proxy.Output()
	i := strings.LastIndex(out, "authz call denied")
	t.Logf("built-in proxy: %s", strings.SplitN(out[i:], "\n", 2)[0])
	setIntention(api.IntentionActionAllow)
	meshtest.Eventually(t, 10*time.Second, "the allow intention to take effect", func() error {
		_, err := get(fresh, "https://"+public+"/")
		return err
	})
	t.Logf("done after %v", time.Since(start).Round(time.Millisecond))
}
