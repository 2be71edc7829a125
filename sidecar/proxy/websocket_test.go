package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsEcho is a WebSocket echo backend; it records the protocol version of
// each upgrade request and, for plain requests, answers with it.
type wsEcho struct {
	wg         sync.WaitGroup
	mu         sync.Mutex
	upgradeVia []int
	// closeAfter, when > 0, makes the backend close the socket itself
	// after echoing that many messages.
	closeAfter int
}

func (e *wsEcho) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") == "" {
		fmt.Fprintf(w, "HTTP/%d", r.ProtoMajor)
		return
	}
	e.mu.Lock()
	e.upgradeVia = append(e.upgradeVia, r.ProtoMajor)
	e.mu.Unlock()
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	c.SetReadLimit(1 << 20)
	e.wg.Add(1)
	defer e.wg.Done()
	defer c.CloseNow()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for n := 0; ; n++ {
		if e.closeAfter > 0 && n == e.closeAfter {
			c.Close(websocket.StatusGoingAway, "backend done")
			return
		}
		typ, data, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, append([]byte("echo:"), data...)); err != nil {
			return
		}
	}
}

func TestWebSocketEcho(t *testing.T) {
	for _, tc := range []struct {
		name       string
		closeAfter int
	}{
		{name: "client closes"},
		{name: "backend closes", closeAfter: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo := &wsEcho{closeAfter: tc.closeAfter}
			backend := startBackend(t, h2c, echo)
			t.Cleanup(echo.wg.Wait) // after the backend closed the socket
			// The main transport speaks h2c; upgrades must go over HTTP/1.1.
			addr, bal := startOutbound(t, "catalog", upstreamOpts{HTTP2: true}, hostPort(backend))
			client := newClient(t, addr, h1)

			if _, body := get(t, client, "http://catalog/plain", nil); body != "HTTP/2" {
				t.Errorf("plain request reached the backend over %s, want HTTP/2", body)
			}

			ctx := testCtx(t, testTimeout)
			c, resp, err := websocket.Dial(ctx, "ws://catalog.mesh/ws", &websocket.DialOptions{HTTPClient: client})
			if err != nil {
				t.Fatalf("dial through proxy: %v", err)
			}
			defer c.CloseNow()
			c.SetReadLimit(1 << 20)
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Errorf("handshake status %d", resp.StatusCode)
			}
			if n := bal.Endpoints()[0].InFlight(); n != 1 {
				t.Errorf("InFlight with an open WebSocket = %d, want 1", n)
			}

			rounds := 5
			if tc.closeAfter > 0 {
				rounds = tc.closeAfter
			}
			for i := range rounds {
				typ, msg := websocket.MessageText, []byte(fmt.Sprintf("hello %d", i))
				if i%2 == 1 {
					typ, msg = websocket.MessageBinary, bytes.Repeat([]byte{byte(i), 0, 0xff}, 20000)
				}
				if err := c.Write(ctx, typ, msg); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				gotTyp, got, err := c.Read(ctx)
				if err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
				if gotTyp != typ || !bytes.Equal(got, append([]byte("echo:"), msg...)) {
					t.Fatalf("echo %d: got %v %d bytes", i, gotTyp, len(got))
				}
			}
			if tc.closeAfter > 0 {
				_, _, err := c.Read(ctx)
				if websocket.CloseStatus(err) != websocket.StatusGoingAway {
					t.Errorf("read after backend close: %v, want StatusGoingAway", err)
				}
			} else if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
				t.Errorf("close: %v", err)
			}
			waitIdle(t, bal)

			echo.mu.Lock()
			defer echo.mu.Unlock()
			if len(echo.upgradeVia) != 1 || echo.upgradeVia[0] != 1 {
				t.Errorf("upgrade requests reached the backend over HTTP/%v, want one over HTTP/1", echo.upgradeVia)
			}
		})
	}
}

func TestWebSocketBackendDownIs503(t *testing.T) {
	addr, _ := startOutbound(t, "catalog", upstreamOpts{}, deadAddr(t))
	ctx := testCtx(t, testTimeout)
	start := time.Now()
	_, resp, err := websocket.Dial(ctx, "ws://catalog/ws", &websocket.DialOptions{HTTPClient: newClient(t, addr, h1)})
	if err == nil {
		t.Fatal("dial succeeded with no backend")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Sidemesh-Error") != "connect_failure" {
		t.Errorf("got %v, %v", resp, err)
	}
	if time.Since(start) > time.Second {
		t.Errorf("took %v", time.Since(start))
	}
}

func TestUpgradeToWrongProtocolIs502AndReleased(t *testing.T) {
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	backend := startBackend(t, h1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(testTimeout))
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: not-websocket\r\n\r\n")
		brw.Flush()
		brw.ReadByte() // until the proxy closes the connection
	}))
	addr, bal := startOutbound(t, "catalog", upstreamOpts{}, hostPort(backend))
	resp := rawRequest(t, addr, "GET /ws HTTP/1.1\r\nHost: catalog\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status = %d, want 502", resp.StatusCode)
	}
	waitIdle(t, bal)
}
