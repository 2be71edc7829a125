package edge_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

type rawResponse struct {
	status int
	body   string
}

// rawGet sends target as it is, unescaped and unnormalized by any client.
func rawGet(t *testing.T, addr, target string) rawResponse {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return rawResponse{resp.StatusCode, string(b)}
}
