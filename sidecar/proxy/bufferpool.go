package proxy

// copyBufferSize is the size of the buffers used to copy bodies and TCP
// streams: large enough for few syscalls per megabyte, small enough that
// thousands of concurrent streams stay cheap.
const copyBufferSize = 32 << 10

// BufferPool is a bounded free list of copy buffers. It implements
// httputil.BufferPool. Unlike a sync.Pool of []byte, Put does not allocate
// (no interface boxing), and the list survives garbage collections. Safe
// for concurrent use.
type BufferPool struct {
	free chan []byte
}

// NewBufferPool returns a pool keeping at most max idle buffers.
func NewBufferPool(max int) *BufferPool {
	return &BufferPool{free: make(chan []byte, max)}
}

// Get returns a buffer of copyBufferSize bytes.
func (p *BufferPool) Get() []byte {
	select {
	case b := <-p.free:
		return b
	default:
		return make([]byte, copyBufferSize)
	}
}

// Put returns b to the pool; buffers of another size, and buffers beyond
// the pool's capacity, are dropped.
func (p *BufferPool) Put(b []byte) {
	if cap(b) != copyBufferSize {
		return
	}
	select {
	case p.free <- b[:copyBufferSize]:
	default:
	}
}

// sharedBuffers is the pool every proxy in the process copies with.
var sharedBuffers = NewBufferPool(1024)
