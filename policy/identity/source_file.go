package identity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultInterval is how often a FileSource polls its files by default.
const DefaultInterval = 2 * time.Second

// racyWindow is how recent a file's modification time may be for its
// size and mtime not to prove it unchanged: a file rewritten within the
// mtime granularity of its file system (up to 2s on some) with the same size
// looks unchanged to stat, so such files are hashed again on every poll
// until their mtime is old enough (git calls this "racy clean").
const racyWindow = 2 * time.Second

// FileOptions configure a FileSource. The zero value is usable.
type FileOptions struct {
	// Interval is the time between two polls of the files. Zero or
	// negative means DefaultInterval (2s).
	Interval time.Duration
	// Logger receives a reload at info, a file that is not usable (yet) at
	// warn and a refused leaf at error. nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock the leaf's validity is checked against; chains are
	// verified at the same time. nil means time.Now.
	Now func() time.Time
}

// FileSource is a Source that reads PEM files (the leaf certificate
// followed by any intermediates, its private key, and a bundle of one or
// more CA certificates) and reloads them when they change on disk.
//
// Run polls every Interval, by size and modification time first and then
// by a hash of the contents. A change is installed only if the three files
// form a valid bundle (see NewBundle) at that moment; otherwise the current
// bundle stays and the files are tried again on every poll. That tolerates
// the half-written states of a rotation, for instance a new certificate
// whose key is not written yet, or leaves from a new CA that the CA file
// does not list yet: they are logged once at warn. A leaf that is expired or
// not yet valid is refused and logged once at error. Each distinct content
// is logged once, not on every poll.
//
// Current and Ready are safe for concurrent use and never block.
type FileSource struct {
	files    [3]string // certificate, key, CA
	interval time.Duration
	log      *slog.Logger
	now      func() time.Time

	cur   atomic.Pointer[Bundle]
	ready chan struct{}

	mu            sync.Mutex // serializes polls; guards the fields below
	seen          fileState  // the files behind cur
	lastBad       string     // identifies the last problem logged
	expiredLogged bool       // whether cur's expiry has been logged
}

// fileState is what one read of the three files saw.
type fileState struct {
	stamps [3]stamp
	sum    [sha256.Size]byte
	data   [3][]byte
}

// stamp is the stat of one file as seen when it was read.
type stamp struct {
	size  int64
	mtime time.Time
	racy  bool // mtime too recent to prove the file unchanged later
}

// NewFileSource loads certFile (leaf certificate, then any intermediates),
// keyFile (its private key) and caFile (the roots) and returns a source
// that is ready at once. It returns an error if that first load fails. Call
// Run to keep the bundle up to date.
func NewFileSource(certFile, keyFile, caFile string, o FileOptions) (*FileSource, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("identity: file source: certificate, key and CA files are all required")
	}
	s := &FileSource{
		files:    [3]string{certFile, keyFile, caFile},
		interval: o.Interval,
		log:      o.Logger,
		now:      o.Now,
		ready:    make(chan struct{}),
	}
	if s.interval <= 0 {
		s.interval = DefaultInterval
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	st, err := s.read()
	if err != nil {
		return nil, fmt.Errorf("identity: file source: %w", err)
	}
	b, roots, err := buildBundle(st.data, s.now())
	if err != nil {
		return nil, fmt.Errorf("identity: file source %s: %w", certFile, err)
	}
	s.install(b, st, roots, "identity: loaded certificates")
	close(s.ready)
	return s, nil
}

// Run polls the files every Interval until ctx is done. Call it once, in
// its own goroutine.
func (s *FileSource) Run(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.poll()
		}
	}
}

// Current returns the latest valid bundle read from the files; never nil.
func (s *FileSource) Current() *Bundle { return s.cur.Load() }

// Ready returns a closed channel: NewFileSource returns a loaded source.
func (s *FileSource) Ready() <-chan struct{} { return s.ready }

// poll reloads the files if they changed and form a valid bundle.
func (s *FileSource) poll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.unchanged() {
		s.checkExpired(now)
		return
	}
	st, err := s.read()
	if err != nil {
		s.bad("read: "+err.Error(), slog.LevelWarn, "identity: cannot read certificate files; keeping the current bundle", err)
		return
	}
	if st.sum == s.seen.sum { // touched or restored, not changed
		s.seen.stamps = st.stamps
		s.lastBad = ""
		s.checkExpired(now)
		return
	}
	b, roots, err := buildBundle(st.data, now)
	if err != nil {
		if errors.Is(err, errValidity) {
			s.bad(hex.EncodeToString(st.sum[:]), slog.LevelError, "identity: refusing the certificate on disk; keeping the current bundle", err)
		} else {
			s.bad(hex.EncodeToString(st.sum[:]), slog.LevelWarn, "identity: certificate files not usable (yet); keeping the current bundle and retrying", err)
		}
		s.checkExpired(now)
		return
	}
	s.install(b, st, roots, "identity: reloaded certificates")
}

// install publishes b, read as st. Callers hold mu, or own s exclusively.
func (s *FileSource) install(b *Bundle, st fileState, roots int, msg string) {
	st.data = [3][]byte{} // not needed any more
	s.seen = st
	s.lastBad = ""
	s.expiredLogged = false
	s.cur.Store(b)
	s.log.Info(msg, "id", b.ID.String(), "serial", fmt.Sprintf("%x", b.Leaf.Leaf.SerialNumber),
		"not_after", b.NotAfter, "roots", roots, "cert", s.files[0], "ca", s.files[2])
}

// bad logs a problem unless it is the one logged last.
func (s *FileSource) bad(key string, level slog.Level, msg string, err error) {
	if key == s.lastBad {
		return
	}
	s.lastBad = key
	s.log.Log(context.Background(), level, msg, "cert", s.files[0], "key", s.files[1], "ca", s.files[2], "error", err)
}

// checkExpired logs, once, that the current leaf expired with no valid
// replacement on disk.
func (s *FileSource) checkExpired(now time.Time) {
	if b := s.cur.Load(); !s.expiredLogged && now.After(b.NotAfter) {
		s.expiredLogged = true
		s.log.Error("identity: the current certificate has expired and no valid replacement is on disk",
			"id", b.ID.String(), "not_after", b.NotAfter, "cert", s.files[0])
	}
}

// unchanged reports whether stat proves the files are those behind cur.
func (s *FileSource) unchanged() bool {
	for i, name := range s.files {
		st := s.seen.stamps[i]
		if st.racy {
			return false
		}
		fi, err := os.Stat(name)
		if err != nil || fi.Size() != st.size || !fi.ModTime().Equal(st.mtime) {
			return false
		}
	}
	return true
}

// read stats, then reads, the three files and hashes their contents. A
// write after the stat leaves a newer mtime behind, so it is not missed.
func (s *FileSource) read() (fileState, error) {
	var st fileState
	h := sha256.New()
	for i, name := range s.files {
		fi, err := os.Stat(name)
		if err != nil {
			return st, err
		}
		data, err := os.ReadFile(name)
		if err != nil {
			return st, err
		}
		st.stamps[i] = stamp{size: fi.Size(), mtime: fi.ModTime(), racy: time.Since(fi.ModTime()) < racyWindow}
		st.data[i] = data
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(data)))
		h.Write(n[:])
		h.Write(data)
	}
	h.Sum(st.sum[:0])
	return st, nil
}

// buildBundle makes a bundle of the certificate, key and CA files' contents
// and returns it with the number of roots.
func buildBundle(data [3][]byte, now time.Time) (*Bundle, int, error) {
	roots, n, err := parseRoots(data[2])
	if err != nil {
		return nil, 0, err
	}
	leaf, err := tls.X509KeyPair(data[0], data[1])
	if err != nil {
		return nil, 0, fmt.Errorf("certificate and key: %w", err)
	}
	b, err := newBundle(&leaf, roots, now)
	return b, n, err
}

// parseRoots parses a PEM bundle of CA certificates strictly: any bytes
// that are not PEM blocks, as a partly written file has, are an error.
func parseRoots(data []byte) (*x509.CertPool, int, error) {
	pool := x509.NewCertPool()
	n := 0
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, 0, fmt.Errorf("CA file: certificate %d: %w", n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, 0, errors.New("CA file: data that is not PEM (partly written?)")
	}
	if n == 0 {
		return nil, 0, errors.New("CA file: no certificates")
	}
	return pool, n, nil
}

var _ Source = (*FileSource)(nil)
