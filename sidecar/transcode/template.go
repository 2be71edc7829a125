package transcode

import (
	"fmt"
	"net/url"
	"strings"
)

// template is a compiled google.api.http path template:
//
//	Template = "/" Segments [ Verb ] ;
//	Segments = Segment { "/" Segment } ;
//	Segment  = "*" | "**" | LITERAL | Variable ;
//	Variable = "{" FieldPath [ "=" Segments ] "}" ;
//	Verb     = ":" LITERAL ;
//
// "**" may only be the last segment. Immutable once built.
type template struct {
	text     string
	segs     []segment
	vars     []variable
	verb     string // "" when none
	literals int    // number of literal segments, for ordering
}

// segment is one path segment of a template.
type segment struct {
	kind int    // segLiteral, segAny or segDeep
	lit  string // the literal, for segLiteral
}

const (
	segLiteral = iota
	segAny     // "*": one segment
	segDeep    // "**": zero or more segments, last only
)

// variable binds the path segments [start, end) to a request field; end
// is -1 for a variable that ends in "**" (the rest of the path).
type variable struct {
	field      []string
	start, end int
}

// parseTemplate compiles a path template, reporting where it is wrong.
func parseTemplate(s string) (*template, error) {
	if !strings.HasPrefix(s, "/") {
		return nil, fmt.Errorf("path template %q does not start with /", s)
	}
	t := &template{text: s}
	body := s[1:]
	// The verb is a ':' outside braces after the last segment's start.
	depth, colon := 0, -1
	for i, c := range body {
		switch c {
		case '{':
			depth++
		case '}':
			depth--
		case '/':
			if depth == 0 {
				colon = -1
			}
		case ':':
			if depth == 0 {
				colon = i
			}
		}
	}
	if colon >= 0 {
		t.verb = body[colon+1:]
		body = body[:colon]
		if t.verb == "" {
			return nil, fmt.Errorf("path template %q: empty verb after ':'", s)
		}
	}
	for body != "" {
		var part string
		if strings.HasPrefix(body, "{") {
			end := strings.IndexByte(body, '}')
			if end < 0 {
				return nil, fmt.Errorf("path template %q: a '{' is not closed", s)
			}
			part, body = body[:end+1], body[end+1:]
			if err := t.addVariable(part[1 : len(part)-1]); err != nil {
				return nil, fmt.Errorf("path template %q: %w", s, err)
			}
		} else {
			end := strings.IndexByte(body, '/')
			if end < 0 {
				end = len(body)
			}
			part, body = body[:end], body[end:]
			if err := t.addSegment(part); err != nil {
				return nil, fmt.Errorf("path template %q: %w", s, err)
			}
		}
		switch {
		case body == "":
		case body[0] == '/' && len(body) > 1:
			body = body[1:]
		default:
			return nil, fmt.Errorf("path template %q: unexpected %q", s, body)
		}
	}
	for i, sg := range t.segs {
		if sg.kind == segDeep && i != len(t.segs)-1 {
			return nil, fmt.Errorf("path template %q: \"**\" must be the last segment", s)
		}
	}
	return t, nil
}

func (t *template) addSegment(part string) error {
	switch {
	case part == "*":
		t.segs = append(t.segs, segment{kind: segAny})
	case part == "**":
		t.segs = append(t.segs, segment{kind: segDeep})
	case part == "" || strings.ContainsAny(part, "{}*=:"):
		return fmt.Errorf("invalid segment %q", part)
	default:
		t.segs = append(t.segs, segment{kind: segLiteral, lit: part})
		t.literals++
	}
	return nil
}

// addVariable adds "field" or "field=segments".
func (t *template) addVariable(v string) error {
	field, pattern, ok := strings.Cut(v, "=")
	if !ok {
		pattern = "*"
	}
	names := strings.Split(field, ".")
	for _, n := range names {
		if n == "" {
			return fmt.Errorf("variable {%s}: invalid field path", v)
		}
	}
	vr := variable{field: names, start: len(t.segs)}
	for _, p := range strings.Split(pattern, "/") {
		if err := t.addSegment(p); err != nil {
			return fmt.Errorf("variable {%s}: %w", v, err)
		}
	}
	vr.end = len(t.segs)
	if t.segs[len(t.segs)-1].kind == segDeep {
		vr.end = -1
	}
	t.vars = append(t.vars, vr)
	return nil
}

// match matches an escaped request path against t; it returns the
// variables' values, unescaped, in t.vars order.
func (t *template) match(escaped string) ([]string, bool) {
	if !strings.HasPrefix(escaped, "/") {
		return nil, false
	}
	p := escaped[1:]
	if t.verb != "" {
		var ok bool
		if p, ok = strings.CutSuffix(p, ":"+t.verb); !ok {
			return nil, false
		}
	}
	var parts []string
	if p != "" {
		parts = strings.Split(p, "/")
	}
	for i, sg := range t.segs {
		switch sg.kind {
		case segDeep:
			parts = append(parts[:i:i], strings.Join(parts[i:], "/"))
			goto bind
		case segAny:
			if i >= len(parts) || parts[i] == "" {
				return nil, false
			}
		case segLiteral:
			if i >= len(parts) || parts[i] != sg.lit {
				return nil, false
			}
		}
	}
	if len(parts) != len(t.segs) {
		return nil, false
	}
bind:
	vals := make([]string, len(t.vars))
	for k, v := range t.vars {
		end := v.end
		if end < 0 {
			end = len(t.segs)
		}
		segs := make([]string, 0, end-v.start)
		for _, raw := range parts[v.start:end] {
			u, err := url.PathUnescape(raw)
			if err != nil {
				return nil, false
			}
			segs = append(segs, u)
		}
		vals[k] = strings.Join(segs, "/")
	}
	return vals, true
}
