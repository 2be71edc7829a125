package transform

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// Path addresses a field of a JSON document: the names of the members
// to go through, from the top-level object down. "a.b.c" is the member
// c of the object b of the object a. A name cannot hold a dot.
type Path []string

// ParsePath splits a dotted path. It fails on an empty path and on an
// empty segment ("a..b", ".a", "a.").
func ParsePath(s string) (Path, error) {
	if s == "" {
		return nil, errors.New("empty field path")
	}
	p := Path(strings.Split(s, "."))
	if slices.Contains(p, "") {
		return nil, fmt.Errorf("field path %q has an empty segment", s)
	}
	return p, nil
}

// String returns the dotted form of p.
func (p Path) String() string { return strings.Join(p, ".") }

// overlaps reports whether p and q are the same field or one lies
// inside the other.
func (p Path) overlaps(q Path) bool {
	n := min(len(p), len(q))
	return slices.Equal(p[:n], q[:n])
}

// ErrNotJSON is returned by JSONEdit.Apply for a document that is not
// valid JSON.
var ErrNotJSON = errors.New("not valid JSON")

// JSONEdit sets, removes and renames fields of JSON documents. It is
// immutable and safe for concurrent use.
//
// Numbers are never decoded: every value the edit does not touch is
// copied byte for byte, so an int64 id keeps every digit. Members keep
// their order: a set of an existing member and a rename within one
// object keep the member's place; a new member (set, or a rename into
// another object) goes at the end of its object. Members that appear
// more than once in an object are all removed, all set, or all renamed
// (a rename takes the value of the last one, as encoding/json reads it).
// In a changed document, the objects the edits went through are written
// without insignificant whitespace; every other value keeps its own. A
// document no edit applied to is returned as it came.
type JSONEdit struct {
	// The edits address disjoint fields (see NewJSONEdit), so their
	// order changes nothing but where new members go: removals, renames
	// and sets, each in path order.
	remove []Path
	rename []renameOp
	set    []setOp
}

type renameOp struct{ from, to Path }

type setOp struct {
	path  Path
	value json.RawMessage
}

// NewJSONEdit compiles edits: set maps a dotted path to the JSON text of
// the value to put there; remove lists paths to delete; rename maps a
// path to the one its value moves to. It fails on an invalid path, a
// set value that is not JSON, and on two edits whose fields overlap (the
// same field, or one inside the other): each field is edited once. Nil
// maps and slices are empty.
func NewJSONEdit(set map[string]json.RawMessage, remove []string, rename map[string]string) (*JSONEdit, error) {
	e := &JSONEdit{}
	var all []Path
	add := func(s string) (Path, error) {
		p, err := ParsePath(s)
		if err != nil {
			return nil, err
		}
		for _, q := range all {
			if p.overlaps(q) {
				return nil, fmt.Errorf("fields %q and %q overlap: edit each field once", q, p)
			}
		}
		all = append(all, p)
		return p, nil
	}
	for _, s := range slices.Sorted(maps.Keys(rename)) {
		from, err := add(s)
		if err != nil {
			return nil, err
		}
		to, err := add(rename[s])
		if err != nil {
			return nil, err
		}
		e.rename = append(e.rename, renameOp{from, to})
	}
	for _, s := range slices.Sorted(maps.Keys(set)) {
		p, err := add(s)
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, set[s]); err != nil {
			return nil, fmt.Errorf("value of %q is not JSON: %v", s, err)
		}
		e.set = append(e.set, setOp{p, buf.Bytes()})
	}
	for _, s := range slices.Sorted(slices.Values(remove)) {
		p, err := add(s)
		if err != nil {
			return nil, err
		}
		e.remove = append(e.remove, p)
	}
	return e, nil
}

// Apply edits doc and returns the result and whether any edit applied.
// A doc that is valid JSON but not an object is returned unchanged; one
// that is not valid JSON fails with ErrNotJSON. An edit whose path goes
// through a value that is not an object is skipped, as is the removal
// or rename of a field that is missing; a set creates the objects its
// path goes through when they are missing.
func (e *JSONEdit) Apply(doc []byte) ([]byte, bool, error) {
	trimmed := bytes.TrimLeft(doc, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		if !json.Valid(doc) {
			return doc, false, ErrNotJSON
		}
		return doc, false, nil
	}
	obj, err := parseObject(doc)
	if err != nil {
		return doc, false, ErrNotJSON
	}
	changed := false
	for _, p := range e.remove {
		changed = obj.remove(p) || changed
	}
	for _, op := range e.rename {
		changed = obj.rename(op.from, op.to) || changed
	}
	for _, op := range e.set {
		changed = obj.set(op.path, op.value) || changed
	}
	if !changed {
		return doc, false, nil
	}
	var out bytes.Buffer
	out.Grow(len(doc) + 64)
	obj.encode(&out)
	return out.Bytes(), true, nil
}

// object is a JSON object as its members, in order, each value kept as
// its raw text until an edit goes into it.
type object struct {
	members []member
}

type member struct {
	name string
	key  []byte // the name as written, quoted
	raw  json.RawMessage
	obj  *object // raw parsed, once an edit went into it
}

// parseObject parses data, which must hold one JSON object and nothing
// else but whitespace.
func parseObject(data []byte) (*object, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, ErrNotJSON
	}
	o := &object{}
	for dec.More() {
		start := dec.InputOffset()
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, ok := tok.(string)
		if !ok {
			return nil, ErrNotJSON
		}
		key := bytes.TrimLeft(data[start:dec.InputOffset()], " \t\r\n,")
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		o.members = append(o.members, member{name: name, key: key, raw: raw})
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, ErrNotJSON
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, ErrNotJSON // trailing data
	}
	return o, nil
}

// child returns the object member m holds, parsing it on first use; nil
// when its value is not an object.
func (m *member) child() *object {
	if m.obj == nil {
		if t := bytes.TrimLeft(m.raw, " \t\r\n"); len(t) == 0 || t[0] != '{' {
			return nil
		}
		o, err := parseObject(m.raw)
		if err != nil {
			return nil // cannot happen: raw was validated as part of its parent
		}
		m.obj = o
	}
	return m.obj
}

// each calls f with every member named name.
func (o *object) each(name string, f func(*member) bool) bool {
	changed := false
	for i := range o.members {
		if o.members[i].name == name {
			changed = f(&o.members[i]) || changed
		}
	}
	return changed
}

func (o *object) remove(p Path) bool {
	if len(p) > 1 {
		return o.each(p[0], func(m *member) bool {
			c := m.child()
			return c != nil && c.remove(p[1:])
		})
	}
	n := len(o.members)
	o.members = slices.DeleteFunc(o.members, func(m member) bool { return m.name == p[0] })
	return len(o.members) != n
}

func (o *object) set(p Path, value json.RawMessage) bool {
	if len(p) > 1 {
		found := false
		changed := o.each(p[0], func(m *member) bool {
			found = true
			c := m.child()
			return c != nil && c.set(p[1:], value)
		})
		if !found {
			c := &object{}
			c.set(p[1:], value)
			o.members = append(o.members, member{name: p[0], key: quote(p[0]), obj: c})
			changed = true
		}
		return changed
	}
	if !o.each(p[0], func(m *member) bool { m.raw, m.obj = value, nil; return true }) {
		o.members = append(o.members, member{name: p[0], key: quote(p[0]), raw: value})
	}
	return true
}

// get returns the value at p, as encoding/json reads it (the last of
// members of the same name).
func (o *object) get(p Path) (*member, bool) {
	for i := len(o.members) - 1; i >= 0; i-- {
		m := &o.members[i]
		if m.name != p[0] {
			continue
		}
		if len(p) == 1 {
			return m, true
		}
		c := m.child()
		if c == nil {
			return nil, false
		}
		return c.get(p[1:])
	}
	return nil, false
}

// parent returns the object holding the field at p, without creating
// any; nil when there is none.
func (o *object) parent(p Path) *object {
	for _, name := range p[:len(p)-1] {
		m, ok := o.get(Path{name})
		if !ok {
			return nil
		}
		if o = m.child(); o == nil {
			return nil
		}
	}
	return o
}

func (o *object) rename(from, to Path) bool {
	if slices.Equal(from[:len(from)-1], to[:len(to)-1]) {
		// Within one object: the member keeps its place (the first of
		// its name's), with the value encoding/json reads (the last's).
		par := o.parent(from)
		if par == nil {
			return false
		}
		fromName, toName := from[len(from)-1], to[len(to)-1]
		first := slices.IndexFunc(par.members, func(x member) bool { return x.name == fromName })
		if first < 0 {
			return false
		}
		m, _ := par.get(Path{fromName})
		renamed := *m
		renamed.name, renamed.key = toName, quote(toName)
		out := make([]member, 0, len(par.members))
		for i, x := range par.members {
			switch {
			case i == first:
				out = append(out, renamed)
			case x.name != fromName && x.name != toName:
				out = append(out, x)
			}
		}
		par.members = out
		return true
	}
	src, ok := o.get(from)
	if !ok {
		return false
	}
	var buf bytes.Buffer
	src.encodeValue(&buf)
	value := json.RawMessage(buf.Bytes())
	if !o.canSet(to) {
		return false
	}
	o.remove(from)
	o.set(to, value)
	return true
}

// canSet reports whether set(p) would put the value somewhere: no value
// on the way is something other than an object.
func (o *object) canSet(p Path) bool {
	for _, name := range p[:len(p)-1] {
		m, ok := o.get(Path{name})
		if !ok {
			return true
		}
		if o = m.child(); o == nil {
			return false
		}
	}
	return true
}

func quote(name string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.Encode(name) // a string always encodes
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func (o *object) encode(buf *bytes.Buffer) {
	buf.WriteByte('{')
	for i := range o.members {
		if i > 0 {
			buf.WriteByte(',')
		}
		m := &o.members[i]
		buf.Write(m.key)
		buf.WriteByte(':')
		m.encodeValue(buf)
	}
	buf.WriteByte('}')
}

func (m *member) encodeValue(buf *bytes.Buffer) {
	if m.obj != nil {
		m.obj.encode(buf)
		return
	}
	buf.Write(m.raw)
}
