package proxy

import (
	"bytes"
	"io"
	"net/http"
	"sync/atomic"
)

// replayBody is a request body that a retry may send again. A body of
// known length up to the policy's BufferBytes is read once and replayed
// from memory. Any other body streams from the client untouched, since
// holding back a stream (gRPC, a long upload) would stall it; it can be
// sent again only if no try has read from it yet, as after a connect
// failure.
type replayBody struct {
	none     bool   // the request has no body
	buffered []byte // the whole body, when it was buffered
	stream   *onceBody
}

// noBody is the replayBody of every request without a body; it is
// immutable, so one value serves all.
var noBody = &replayBody{none: true}

func newReplayBody(req *http.Request, p *RetryPolicy) (*replayBody, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return noBody, nil
	}
	if p.Attempts > 0 && req.ContentLength > 0 && req.ContentLength <= int64(p.BufferBytes) {
		buf := make([]byte, req.ContentLength)
		if _, err := io.ReadFull(req.Body, buf); err != nil {
			return nil, err
		}
		return &replayBody{buffered: buf}, nil
	}
	return &replayBody{stream: &onceBody{rc: req.Body}}, nil
}

// prepare gives out the body for its try.
func (b *replayBody) prepare(out *http.Request) {
	switch {
	case b.none:
	case b.buffered != nil:
		out.ContentLength = int64(len(b.buffered))
		out.Body = io.NopCloser(bytes.NewReader(b.buffered))
		out.GetBody = func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b.buffered)), nil
		}
	default:
		out.Body = b.stream
	}
}

// replayable reports whether the body can be sent again.
func (b *replayBody) replayable() bool {
	return b.none || b.buffered != nil || !b.stream.read.Load()
}

// onceBody passes a streamed body through, noting whether it was read.
// Until then Close does nothing: a transport closes the body of a try that
// failed to connect, and the next try still needs it. Once read, Close
// closes it for real, which is what unblocks a transport still waiting to
// send more of it.
type onceBody struct {
	rc   io.ReadCloser
	read atomic.Bool
}

func (b *onceBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.rc.Read(p)
}

func (b *onceBody) Close() error {
	if !b.read.Load() {
		return nil
	}
	return b.rc.Close()
}
