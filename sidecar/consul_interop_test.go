package sidecar

import (
	"net"

	"github.com/sidemesh/sidemesh/internal/meshtest"

	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery/consul/consultest"
)

// TestConsulInteropWithBuiltInProxy has a sidemesh sidecar and Consul's
// own proxy (`consul connect proxy`, from the same binary) talk to each
// other in both directions, with intentions enforced on the sidemesh side.
func TestConsulInteropWithBuiltInProxy(t *testing.T) {
	agent := consultest.Start(t)
	cartApp, _ := echoApp(t)
	cartIn, cartOut := listenAddr(t), listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: cart, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
discovery: { consul: { address: %s } }
tls: { source: consul }
upstreams:
  - { service: api, retries: { attempts: 0 } }
`, cartApp, cartIn, cartOut, agent.URL())))

	// Consul's proxy as web's sidecar: its upstream listener reaches cart
	// through Consul's catalog, that is, through our registration.
	up := meshtest.FreePort(t)
	agent.ConnectProxy(t, "-service", "web", "-upstream", "cart:"+strconv.Itoa(up))
	viaBuiltIn := func() (int, string) {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
		resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(up) + "/api/x")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	poll := func(what string, ok func() (bool, string)) {
		t.Helper()
		meshtest.Eventually(t, 60*time.Second, what, func() error {
			if done, last := ok(); !done {
				return fmt.Errorf("last: %s", last)
			}
			return nil
		})
	}

	// (1) built-in proxy -> sidemesh: denied by default on our side, then
	// allowed by an intention, with web's identity handed to the app.
	poll("sidemesh denies web without an intention", func() (bool, string) {
		code, body := viaBuiltIn()
		return code == http.StatusForbidden && strings.Contains(body, "sidemesh: denied by default"), fmt.Sprint(code, " ", body)
	})
	if _, _, err := agent.Client().ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "cart",
		Sources: []*api.SourceIntention{{Name: "web", Action: api.IntentionActionAllow}}}, nil); err != nil {
		t.Fatal(err)
	}
	poll("sidemesh allows web after the intention", func() (bool, string) {
		code, body := viaBuiltIn()
		return code == 200 && strings.HasPrefix(body, "GET /api/x spiffe://") && strings.HasSuffix(body, "/dc/dc1/svc/web"),
			fmt.Sprint(code, " ", body)
	})

	// (2) sidemesh -> built-in proxy: cart calls api, an app behind
	// Consul's proxy, which enforces its own intentions.
	apiApp := startPlainApp(t, "api says hi")
	public := "127.0.0.1:" + strconv.Itoa(meshtest.FreePort(t))
	agent.ConnectProxy(t, "-service", "api", "-service-addr", apiApp, "-listen", public, "-register")
	if _, _, err := agent.Client().ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api",
		Sources: []*api.SourceIntention{{Name: "cart", Action: api.IntentionActionAllow}}}, nil); err != nil {
		t.Fatal(err)
	}
	client := newClient(t)
	poll("sidemesh reaches the app behind Consul's proxy", func() (bool, string) {
		code, body, err := get(client, cartOut, "api")
		return err == nil && code == 200 && body == "api says hi", fmt.Sprint(code, " ", body, " ", err)
	})
}

// startPlainApp answers every request with body and returns its address.
func startPlainApp(t *testing.T, body string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
