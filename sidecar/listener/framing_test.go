package listener

import (
	"bytes"
	"testing"
)

// ambiguousRef is the plain statement of what framingConn detects: some
// block of lines (blocks end at a blank line) has a line starting with
// "content-length:" and one starting with "transfer-encoding:", in any
// case. data ends with a line end.
func ambiguousRef(data []byte) bool {
	var cl, te bool
	for _, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSuffix(line, []byte("\r"))
		lower := bytes.ToLower(line)
		switch {
		case len(line) == 0:
			cl, te = false, false
		case bytes.HasPrefix(lower, []byte(headerCL)):
			cl = true
		case bytes.HasPrefix(lower, []byte(headerTE)):
			te = true
		}
		if cl && te {
			return true
		}
	}
	return false
}

// scanChunked feeds data to a framingConn in pieces of the given sizes.
func scanChunked(data []byte, sizes []byte) bool {
	c := &framingConn{}
	for i := 0; len(data) > 0; i++ {
		n := len(data)
		if len(sizes) > 0 {
			n = min(int(sizes[i%len(sizes)])+1, len(data))
		}
		c.scan(data[:n])
		data = data[n:]
	}
	return c.ambiguous.Load()
}

func TestFramingScan(t *testing.T) {
	for _, tc := range []struct {
		head string
		want bool
	}{
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH:5\r\n\r\n", true},
		{"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nTransfer-Encoding: chunked\r\n\r\n", false}, // two blocks
		{"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"POST / HTTP/1.1\nContent-Length: 5\nTransfer-Encoding: chunked\n\n", true},
	} {
		for _, sizes := range [][]byte{nil, {0}, {2}, {6, 1, 17}} {
			if got := scanChunked([]byte(tc.head), sizes); got != tc.want {
				t.Errorf("%q in pieces %v: ambiguous = %v, want %v", tc.head, sizes, got, tc.want)
			}
		}
	}
	h2 := &framingConn{}
	h2.scan([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n"))
	if h2.ambiguous.Load() {
		t.Error("an HTTP/2 connection was scanned")
	}
}

// FuzzFramingScan: however the bytes arrive, the scanner agrees with the
// plain statement of what it looks for.
func FuzzFramingScan(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), []byte{3})
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), []byte{0})
	f.Add([]byte("transfer-encoding: x\ncontent-length: 1\n"), []byte{20, 1})
	f.Fuzz(func(t *testing.T, data, sizes []byte) {
		if bytes.HasPrefix(data, []byte("PRI * HTTP/2")) {
			return
		}
		data = append(data, '\n')
		want := ambiguousRef(data)
		if got := scanChunked(data, nil); got != want {
			t.Fatalf("whole: ambiguous = %v, want %v for %q", got, want, data)
		}
		if got := scanChunked(data, sizes); got != want {
			t.Fatalf("in pieces %v: ambiguous = %v, want %v for %q", sizes, got, want, data)
		}
	})
}
