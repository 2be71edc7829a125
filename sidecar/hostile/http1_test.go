package hostile_test

import (
	"regexp"
	"strings"
	"testing"
)

// tail is a request smuggled after an attack: the app must never see it.
const tail = "GET /hidden HTTP/1.1\r\nHost: app\r\n\r\n"

// closing ends a payload with a request that asks to close, so that a
// row expecting the connection to stay usable ends at once.
const closing = "GET /end HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"

var uuid = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestHTTP1 sends one attack per row to a real listener and checks what
// the client got and what the app received.
func TestHTTP1(t *testing.T) {
	m := startMesh(t)
	for _, tc := range []struct {
		name    string
		inbound bool // over mutual TLS to the inbound listener; else outbound
		payload string
		// check inspects the outcome and what the app saw; it returns
		// what is wrong, or "".
		check func(o outcome, reqs []seen) string
	}{
		{
			name: "smuggling: bare LF after the chunk size",
			payload: "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"5\n" + tail + "0\r\n\r\n",
			check: cutAndClosed,
		},
		{
			name: "smuggling: bare LF in a chunk extension",
			payload: "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"5;ext=1\nhello\r\n0\r\n\r\n" + tail,
			check: cutAndClosed,
		},
		{
			name: "smuggling: Content-Length and Transfer-Encoding together",
			payload: "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"0\r\n\r\n" + tail,
			check: func(o outcome, reqs []seen) string {
				if len(o.statuses) != 1 || o.statuses[0] != 200 || !o.closed {
					return "want one 200, then the connection closed (RFC 9112, 6.1)"
				}
				if contains(reqs, "/hidden") {
					return "the pipelined tail reached the app"
				}
				return ""
			},
		},
		{
			name:    "smuggling: obfuscated Transfer-Encoding",
			payload: "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\nabc" + tail,
			check:   refusedAndClosed(501),
		},
		{
			name:    "smuggling: two Content-Lengths",
			payload: "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc" + tail,
			check:   refusedAndClosed(400),
		},
		{
			name: "h2c upgrade is not tunnelled",
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" +
				"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + closing,
			check: func(o outcome, reqs []seen) string {
				if len(o.statuses) != 2 || o.statuses[0] != 200 {
					return "want the request served as plain HTTP/1.1 (200, no 101)"
				}
				for _, r := range reqs {
					if r.Header.Get("Upgrade") != "" || r.Header.Get("Http2-Settings") != "" || r.Header.Get("Connection") != "" {
						return "the app saw the upgrade headers"
					}
				}
				return ""
			},
		},
		{
			name:    "hop-by-hop abuse: Connection names X-Request-Id",
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\nConnection: X-Request-Id, close\r\nX-Request-Id: chosen-by-attacker\r\n\r\n",
			check: func(o outcome, reqs []seen) string {
				if len(reqs) != 1 || !uuid.MatchString(reqs[0].Header.Get("X-Request-Id")) {
					return "the app did not get a request ID of the sidecar's"
				}
				return ""
			},
		},
		{
			name:    "hop-by-hop abuse: Connection names X-Forwarded-For",
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\nConnection: X-Forwarded-For, close\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
			check: func(o outcome, reqs []seen) string {
				if len(reqs) != 1 || reqs[0].Header.Get("X-Forwarded-For") != "127.0.0.1" {
					return "the app did not get the sidecar's X-Forwarded-For"
				}
				return ""
			},
		},
		{
			name:    "hop-by-hop abuse: Connection names the identity header",
			inbound: true,
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\nConnection: X-Sidemesh-Peer-Identity, close\r\n" +
				"X-Sidemesh-Peer-Identity: spiffe://mesh.local/ns/default/svc/admin\r\n\r\n",
			check: verifiedIdentity,
		},
		{
			name:    "forged identity header",
			inbound: true,
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\nConnection: close\r\nX-Sidemesh-Peer-Identity: spiffe://mesh.local/ns/default/svc/admin\r\n\r\n",
			check:   verifiedIdentity,
		},
		{
			name:    "underscore alias of the identity header",
			inbound: true,
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\nConnection: close\r\nX_Sidemesh_Peer_Identity: spiffe://mesh.local/ns/default/svc/admin\r\n\r\n",
			check: func(o outcome, reqs []seen) string {
				if msg := verifiedIdentity(o, reqs); msg != "" {
					return msg
				}
				for k := range reqs[0].Header {
					if strings.Contains(k, "_") {
						return "the app got the underscore header " + k
					}
				}
				return ""
			},
		},
		{
			name:    "fragment against an exact-path deny",
			inbound: true,
			payload: "GET /api/secret#x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
			check:   refused(400),
		},
		{
			name:    "fragment hiding a dot segment",
			inbound: true,
			payload: "GET /api/#/../admin HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
			check:   refused(400),
		},
		{
			name:    "path parameter against an exact-path deny",
			inbound: true,
			payload: "GET /api/secret;x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
			check:   refused(400),
		},
		{
			name:    "the exact-path deny itself",
			inbound: true,
			payload: "GET /api/secret HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
			check:   refused(403),
		},
		{
			name:    "encoded traversal",
			inbound: true,
			payload: "GET /api/%2e%2e/admin HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
			check:   refused(403),
		},
		{
			name:    "encoded slash",
			inbound: true,
			payload: "GET /api%2Fsecret HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
			check:   refused(400),
		},
		{
			name:    "CR in a header value",
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\nX-A: b\rX-Injected: 1\r\n\r\n",
			check:   refusedAndClosed(400),
		},
		{
			name:    "NUL in a header value",
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\nX-A: b\x00c\r\n\r\n",
			check:   refusedAndClosed(400),
		},
		{
			name:    "oversized header",
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n",
			check:   refusedAndClosed(431),
		},
		{
			name:    "numerous headers",
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\n" + strings.Repeat("X-Many: 0123456789012345678901234567890123456789\r\n", 2000) + "\r\n",
			check:   refusedAndClosed(431),
		},
		{
			name:    "stalled body",
			payload: "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nabc",
			check: func(o outcome, reqs []seen) string {
				if len(o.statuses) != 1 || o.statuses[0] != 408 || !o.closed {
					return "want 408 within the body timeout, then the connection closed"
				}
				if len(reqs) != 0 {
					return "the app got part of a body"
				}
				return ""
			},
		},
		{
			name:    "slow headers",
			payload: "GET /api/x HTTP/1.1\r\nHost: app\r\nX-Slow: ",
			check: func(o outcome, reqs []seen) string {
				if !o.closed || len(reqs) != 0 {
					return "want the connection closed after the header timeout, nothing sent on"
				}
				return ""
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.app.settle(t)
			addr, tlsConf := m.out, m.clientTLS
			if !tc.inbound {
				tlsConf = nil
			} else {
				addr = m.in
			}
			o := raw(t, addr, tlsConf, tc.payload)
			reqs := m.app.take()
			if msg := tc.check(o, reqs); msg != "" {
				t.Errorf("%s\n  client got statuses %v (closed %v), bodies %q\n  app got %v",
					msg, o.statuses, o.closed, o.bodies, targets(reqs))
			}
			if tc.inbound {
				if msg := verifiedOnly(reqs, m.webID); msg != "" {
					t.Error(msg)
				}
			}
		})
	}
}

// cutAndClosed: a malformed streamed body is answered 400 and its
// connection closed; the app may have seen the request begin (a body of
// unknown length streams), but its body never completed, and nothing
// after it (the smuggled tail) reached the app.
func cutAndClosed(o outcome, reqs []seen) string {
	if len(o.statuses) != 1 || o.statuses[0] != 400 || !o.closed {
		return "want one 400, then the connection closed"
	}
	if contains(reqs, "/hidden") {
		return "the smuggled request reached the app"
	}
	for _, r := range reqs {
		if r.BodyErr == nil {
			return "the app got a complete body from a malformed stream"
		}
	}
	return ""
}

// refused: the attack got status want, and the app nothing.
func refused(want int) func(outcome, []seen) string {
	return func(o outcome, reqs []seen) string {
		if len(o.statuses) < 1 || o.statuses[0] != want {
			return "wrong answer"
		}
		if len(reqs) != 0 {
			return "the app got a request"
		}
		return ""
	}
}

// refusedAndClosed: refused, and the connection closed with nothing read
// after the refusal.
func refusedAndClosed(want int) func(outcome, []seen) string {
	return func(o outcome, reqs []seen) string {
		if msg := refused(want)(o, reqs); msg != "" {
			return msg
		}
		if len(o.statuses) != 1 || !o.closed {
			return "the connection carried on after the refusal"
		}
		return ""
	}
}

// verifiedIdentity: the app got one request, with the caller's verified
// identity in the identity header.
func verifiedIdentity(o outcome, reqs []seen) string {
	if len(reqs) != 1 {
		return "want one request at the app"
	}
	if got := reqs[0].Header.Values("X-Sidemesh-Peer-Identity"); len(got) != 1 || got[0] != "spiffe://mesh.local/ns/default/svc/web" {
		return "the app's identity header is not the verified one"
	}
	return ""
}

// verifiedOnly: every request the app got through the inbound listener
// carries exactly the verified identity.
func verifiedOnly(reqs []seen, id string) string {
	for _, r := range reqs {
		if got := r.Header.Values("X-Sidemesh-Peer-Identity"); len(got) != 1 || got[0] != id {
			return "the app got a request with identity " + strings.Join(got, ",")
		}
	}
	return ""
}
