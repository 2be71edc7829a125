package policy

import (
	"errors"
	"fmt"
)

// ErrAmbiguousPath is wrapped by every error NormalizePath returns: the
// request path can be read more than one way (by this proxy, by the app,
// or by a proxy in between), so it is refused with 400 rather than
// authorized under one reading and served under another.
var ErrAmbiguousPath = errors.New("policy: ambiguous request path")

// NormalizePath turns a request's raw path (r.URL.EscapedPath(), or the
// path of RequestURI) into the one that is authorized AND forwarded to the
// app, so the two can never disagree. It returns the escaped normalized
// path, or an error wrapping ErrAmbiguousPath.
//
// It closes the bypass class of Envoy's CVE-2019-9901 (a prefix rule
// for "/info/" let "/info/../private" through and the app served
// /private) and CVE-2021-29492 (escaped slashes were not decoded, so
// "/public%2F..%2Fadmin" slipped past a deny on /admin and the app,
// decoding it, served /admin). It does what Envoy does with
// normalize_path: true, merge_slashes: true and
// path_with_escaped_slashes_action: REJECT_REQUEST, and a little more:
//
//   - percent-escapes of unreserved characters (ALPHA DIGIT - . _ ~) are
//     decoded ("%41" → "A", "%7e" → "~"); every other escape is kept and
//     upper-cased ("%3a" → "%3A"), as RFC 3986 section 6.2.2 says;
//   - bytes that may not appear raw in a path (such as '"', '{', or any
//     byte >= 0x80) are percent-encoded, so one resource has one spelling;
//   - dot segments are removed as in RFC 3986 section 5.2.4, after the
//     decoding above, so "%2e%2E" is "..";
//   - runs of slashes are merged ("//admin" → "/admin"), before dot
//     segments are applied, as path.Clean does ("/a//../b" → "/b");
//   - a trailing slash is kept ("/a/" stays "/a/", "/a/b/.." is "/a/").
//
// It refuses, with ErrAmbiguousPath: a path that is empty or does not
// start with '/' (this includes "*" of OPTIONS *); an escaped slash or
// backslash ("%2F", "%5C", any case); an escaped or raw NUL; a raw
// backslash; a fragment ('#', CVE-2021-32779) or query ('?': the caller
// must pass the path alone); other raw control characters and spaces;
// invalid percent-encoding ("%zz", a trailing "%4"); ".." that would climb
// above the root; and a segment that is "." or ".." followed by a ';'
// parameter ("/..;/admin"), which Java servlet containers treat as a dot
// segment.
//
// The result always starts with '/', holds no "//" and no dot segment, and
// is a fixed point: NormalizePath(p) == p for every p it returns. A path
// that is already normalized is returned as is, without allocating.
//
// Each escape is decoded once: "%252F" stays "%252F" (the text "%2F" to
// an app that decodes once). An app that decodes twice is not protected.
//
// Case is kept: rules compare paths case-sensitively, so a deny on
// "/admin/" does not cover "/Admin/" for an app that ignores case; guard
// such an app with allow rules under a default deny.
// NormalizePath is safe for concurrent use.
func NormalizePath(raw string) (string, error) {
	if raw == "" || raw[0] != '/' {
		return "", errNotAbsolute
	}
	if isNormalized(raw) {
		return raw, nil
	}
	var stack [256]byte
	out, err := normalize(stack[:0], raw)
	if err != nil {
		return "", err
	}
	if string(out) == raw {
		return raw, nil
	}
	return string(out), nil
}

// The reasons NormalizePath gives, built once: a path that is refused
// costs no allocation either.
var (
	errNotAbsolute      = ambiguous("it does not start with /")
	errBadEscape        = ambiguous("invalid percent-encoding")
	errEscapedSlash     = ambiguous("escaped slash (%2F)")
	errEscapedBackslash = ambiguous("escaped backslash (%5C)")
	errEscapedNUL       = ambiguous("escaped NUL (%00)")
	errNUL              = ambiguous("NUL byte")
	errBackslash        = ambiguous("backslash")
	errFragment         = ambiguous("fragment (#)")
	errQuery            = ambiguous("query (?) in the path")
	errControl          = ambiguous("control character or space")
	errAboveRoot        = ambiguous(".. above the root")
	errDotParam         = ambiguous("dot segment with a ; parameter")
)

func ambiguous(reason string) error { return fmt.Errorf("%w: %s", ErrAmbiguousPath, reason) }

// Byte classes of a path (RFC 3986 section 3.3).
const (
	classUnreserved = 1 << iota // ALPHA DIGIT - . _ ~
	classPathRaw                // may appear raw in a normalized path: unreserved, sub-delims, ':', '@', '/'
)

var pathClass = func() (t [256]uint8) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = classUnreserved | classPathRaw
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = classUnreserved | classPathRaw
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = classUnreserved | classPathRaw
	}
	for _, c := range "-._~" {
		t[c] = classUnreserved | classPathRaw
	}
	for _, c := range "!$&'()*+,;=:@/" {
		t[c] = classPathRaw
	}
	return t
}()

const upperHex = "0123456789ABCDEF"

// unhex returns the value of a hex digit and whether it is one.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// isNormalized reports whether p (which starts with '/') is already the
// output of NormalizePath for itself. It is the allocation-free fast path;
// a false answer only sends p through normalize.
func isNormalized(p string) bool {
	seg := 1 // start of the current segment
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			s := p[seg:i]
			if s == "" && i != len(p) { // "//"
				return false
			}
			if dotSegment(s) != notDot {
				return false
			}
			seg = i + 1
			continue
		}
		c := p[i]
		if c == '%' {
			if i+2 >= len(p) {
				return false
			}
			hi, lo := p[i+1], p[i+2]
			h, ok1 := unhex(hi)
			l, ok2 := unhex(lo)
			if !ok1 || !ok2 || 'a' <= hi || 'a' <= lo { // lower-case hex letters
				return false
			}
			b := h<<4 | l
			if pathClass[b]&classUnreserved != 0 || b == '/' || b == '\\' || b == 0 {
				return false
			}
			i += 2
			continue
		}
		if pathClass[c]&classPathRaw == 0 {
			return false
		}
	}
	return true
}

// dot kinds of a path segment.
const (
	notDot = iota
	dot    // "."
	dotDot // ".."
	dotParam
)

// dotSegment classifies a decoded segment: ".", "..", a dot segment with
// a ';' parameter ("..;x", Tomcat's reading), or none of these.
func dotSegment[T ~string | ~[]byte](s T) int {
	n := len(s)
	for i := 0; i < len(s); i++ {
		if s[i] == ';' {
			n = i
			break
		}
	}
	switch {
	case n == 0 || n > 2 || s[0] != '.' || (n == 2 && s[1] != '.'):
		return notDot
	case n != len(s):
		return dotParam
	case n == 1:
		return dot
	}
	return dotDot
}

// normalize appends the normalized form of p (which starts with '/') to
// buf[:0] and returns it.
func normalize(buf []byte, p string) ([]byte, error) {
	// Pass 1: one spelling per byte.
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%':
			if i+2 >= len(p) {
				return nil, errBadEscape
			}
			h, ok1 := unhex(p[i+1])
			l, ok2 := unhex(p[i+2])
			if !ok1 || !ok2 {
				return nil, errBadEscape
			}
			switch b := h<<4 | l; {
			case b == '/':
				return nil, errEscapedSlash
			case b == '\\':
				return nil, errEscapedBackslash
			case b == 0:
				return nil, errEscapedNUL
			case pathClass[b]&classUnreserved != 0:
				buf = append(buf, b)
			default:
				buf = append(buf, '%', upperHex[b>>4], upperHex[b&15])
			}
			i += 2
		case pathClass[c]&classPathRaw != 0:
			buf = append(buf, c)
		case c == 0:
			return nil, errNUL
		case c == '\\':
			return nil, errBackslash
		case c == '#':
			return nil, errFragment
		case c == '?':
			return nil, errQuery
		case c <= ' ' || c == 0x7f:
			return nil, errControl
		default:
			buf = append(buf, '%', upperHex[c>>4], upperHex[c&15])
		}
	}

	// Pass 2: remove dot segments and empty segments, in place. The
	// output never overtakes the input: out ends at or before the start
	// of the segment being read.
	out := buf[:1] // "/"
	keptLast := false
	for i := 1; i <= len(buf); {
		j := i
		for j < len(buf) && buf[j] != '/' {
			j++
		}
		seg := buf[i:j]
		switch dotSegment(seg) {
		case notDot:
			if len(seg) == 0 {
				keptLast = false
				break
			}
			out = append(out, seg...)
			out = append(out, '/')
			keptLast = true
		case dot:
			keptLast = false
		case dotDot:
			if len(out) == 1 {
				return nil, errAboveRoot
			}
			k := len(out) - 2
			for out[k] != '/' {
				k--
			}
			out = out[:k+1]
			keptLast = false
		case dotParam:
			return nil, errDotParam
		}
		i = j + 1
	}
	if keptLast {
		out = out[:len(out)-1]
	}
	return out, nil
}
