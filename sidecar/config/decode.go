package config

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// maxNodes caps the YAML nodes one file may decode to, counting every
// visit through an alias, so that an alias bomb ("billion laughs") is
// refused instead of expanded. Recursion needs no separate limit: the
// decoder only descends where the Go type does, and the config's types
// are not recursive.
const maxNodes = 100_000

// decoder overlays a YAML node tree onto config structs by their yaml
// tags, recording where each field was written and collecting every
// problem rather than stopping at the first.
type decoder struct {
	file      string
	positions map[string]Position
	errs      ErrorList
	// failed holds the paths whose value could not be decoded; validation
	// problems at or under them would only repeat the decode error.
	failed map[string]bool
	nodes  int
	// tooBig is set once nodes passes maxNodes; decoding then stops.
	tooBig bool
}

// defaulter is implemented by structs whose zero value is not their
// default. The decoder calls setDefaults on each one it allocates before
// overlaying the file.
type defaulter interface{ setDefaults() }

var durationType = reflect.TypeFor[time.Duration]()

func (d *decoder) errorf(pos Position, path, format string, args ...any) {
	d.errs = append(d.errs, &Error{
		File: d.file,
		Pos:  pos,
		Path: path,
		Msg:  fmt.Sprintf(format, args...),
	})
}

// fail reports a value that could not be decoded.
func (d *decoder) fail(pos Position, path, format string, args ...any) {
	d.errorf(pos, path, format, args...)
	d.failed[path] = true
}

// decode overlays node n onto v, the field at path. A null node leaves v
// as it is, except for an optional section (a pointer to a struct): "admin:"
// with nothing after it turns the section on with its defaults, as if
// "admin: {}" were written. Problems with the value as a whole are
// reported where it is written, at the alias when it is one.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if d.tooBig {
		return
	}
	pos := Position{n.Line, n.Column}
	if d.nodes++; d.nodes > maxNodes {
		d.tooBig = true
		d.errorf(pos, "", "too many values (over %d, counting each use of an alias)", maxNodes)
		return
	}
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		if v.Kind() == reflect.Pointer && v.Type().Elem().Kind() == reflect.Struct && path != "" {
			if v.IsNil() {
				v.Set(newDefault(v.Type().Elem()).Addr())
			}
			d.positions[path] = pos
		}
		return
	}
	switch {
	case v.Type() == jsonValueType:
		b, err := yamlToJSON(n)
		if err != nil {
			d.errorf(pos, path, "%v", err)
			return
		}
		v.SetBytes(b)
	case v.Kind() == reflect.Pointer && v.Type().Elem().Kind() != reflect.Struct:
		// An optional scalar (*bool): set means written in the file.
		elem := reflect.New(v.Type().Elem())
		d.decode(n, elem.Elem(), path)
		v.Set(elem)
		return
	case v.Kind() == reflect.Pointer:
		if !d.expect(n, pos, yaml.MappingNode, path) {
			return
		}
		if v.IsNil() {
			v.Set(newDefault(v.Type().Elem()).Addr())
		}
		d.decodeStruct(n, v.Elem(), path)
	case v.Kind() == reflect.Struct:
		if !d.expect(n, pos, yaml.MappingNode, path) {
			return
		}
		d.decodeStruct(n, v, path)
	case v.Kind() == reflect.Map:
		if !d.expect(n, pos, yaml.MappingNode, path) {
			return
		}
		d.decodeMap(n, v, path)
	case v.Kind() == reflect.Slice:
		if !d.expect(n, pos, yaml.SequenceNode, path) {
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, elem := range n.Content {
			e := s.Index(i)
			e.Set(newDefault(e.Type()))
			d.decode(elem, e, fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	default:
		if !d.expect(n, pos, yaml.ScalarNode, path) || !d.typed(n, pos, v, path) || !d.decodeScalar(n.Value, pos, v, path) {
			return
		}
	}
	if path != "" {
		d.positions[path] = pos
	}
}

// decodeMap decodes a mapping into a map[string]T: keys are scalars and
// are not expanded; a key written twice is an error at the second.
func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		kpos := Position{k.Line, k.Column}
		if k.Kind != yaml.ScalarNode {
			d.errorf(kpos, path, "keys must be strings")
			continue
		}
		if seen[k.Value] {
			d.errorf(kpos, path, "duplicate key %s", quote(k.Value))
			continue
		}
		seen[k.Value] = true
		elem := newDefault(v.Type().Elem())
		d.decode(val, elem, join(path, k.Value))
		m.SetMapIndex(reflect.ValueOf(k.Value), elem)
	}
	v.Set(m)
}

// newDefault returns a new addressable value of type t, with its defaults
// set if it has any.
func newDefault(t reflect.Type) reflect.Value {
	p := reflect.New(t)
	if d, ok := p.Interface().(defaulter); ok {
		d.setDefaults()
	}
	return p.Elem()
}

// expect reports whether n is of the kind the field at path needs, and
// reports an error when it is not.
func (d *decoder) expect(n *yaml.Node, pos Position, kind yaml.Kind, path string) bool {
	if n.Kind == kind {
		return true
	}
	d.fail(pos, path, "expected %s, got %s", kindName(kind), describe(n))
	return false
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return "a single value"
	}
}

// describe names what node n holds, for "expected X, got Y".
func describe(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return quote(n.Value)
	}
	return kindName(n.Kind)
}

// decodeStruct overlays mapping n onto struct v by the fields' yaml tags.
func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	fields := fieldsOf(v.Type())
	seen := make(map[string]int, len(n.Content)/2) // key -> line
	in := ""
	if path != "" {
		in = " in " + path
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		pos := Position{k.Line, k.Column}
		for k.Kind == yaml.AliasNode {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			d.errorf(pos, path, "expected a key%s, got %s", in, kindName(k.Kind))
			continue
		}
		if line, dup := seen[k.Value]; dup {
			d.errorf(pos, path, "duplicate key %s%s (first at line %d)", quote(k.Value), in, line)
			continue
		}
		seen[k.Value] = pos.Line
		f, ok := fields[k.Value]
		if !ok {
			d.errorf(pos, path, "unknown key %s%s%s", quote(k.Value), in, suggest(k.Value, fields))
			continue
		}
		d.decode(val, v.FieldByIndex(f.Index), join(path, k.Value))
	}
}

// fieldsOf maps the yaml keys of struct type t to its fields. The keys of
// an embedded struct tagged `yaml:",inline"` are t's own; their Index
// leads through the embedded field.
func fieldsOf(t reflect.Type) map[string]reflect.StructField {
	fields := make(map[string]reflect.StructField, t.NumField())
	for f := range t.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if f.Anonymous && opts == "inline" && f.Type.Kind() == reflect.Struct {
			for key, inner := range fieldsOf(f.Type) {
				inner.Index = append([]int{f.Index[0]}, inner.Index...)
				fields[key] = inner
			}
			continue
		}
		if f.IsExported() && name != "" && name != "-" {
			fields[name] = f
		}
	}
	return fields
}

// suggest returns ` (did you mean "key"?)` naming the known key closest
// to an unknown one, or "" when none is within two edits.
func suggest(key string, fields map[string]reflect.StructField) string {
	best, bestDist := "", 3
	for name := range fields {
		if len(key)-len(name) >= bestDist || len(name)-len(key) >= bestDist {
			continue // at least that many edits apart
		}
		if d := editDistance(key, name); d < bestDist || d == bestDist && name < best {
			best, bestDist = name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance returns the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := range len(a) {
		cur[0] = i + 1
		for j := range len(b) {
			cost := 1
			if a[i] == b[j] {
				cost = 0
			}
			cur[j+1] = min(prev[j+1]+1, cur[j]+1, prev[j]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// typed reports whether scalar n is of a YAML type that field v takes,
// and reports an error when it is not: no scalar is coerced, so
// "access_log: true" is a mistake pointed out, not a file named "true",
// and "port: \"8080\"" is text where a number belongs. Integers are the
// one thing text fields take as they are written. A value with ${ENV} in
// it is text until it is expanded, and is checked then.
func (d *decoder) typed(n *yaml.Node, pos Position, v reflect.Value, path string) bool {
	tag := n.ShortTag()
	if tag == "!!str" && strings.Contains(n.Value, "${") {
		return true
	}
	var ok bool
	var want string
	switch {
	case v.Type() == durationType:
		// Numbers pass on to "needs a unit", below.
		ok, want = tag == "!!str" || tag == "!!int" || tag == "!!float", "a duration"
	case v.Kind() == reflect.String:
		// An integer reads the same as text ("on: [503]", "build: 12");
		// a boolean, a float or a date does not ("true" for a file name,
		// "1.10" that YAML reads as 1.1).
		ok, want = tag == "!!str" || tag == "!!int", "text"
	case v.Kind() == reflect.Int:
		ok, want = tag == "!!int", "an integer"
	case v.Kind() == reflect.Float64:
		ok, want = tag == "!!float" || tag == "!!int", "a number"
	case v.Kind() == reflect.Bool:
		ok, want = tag == "!!bool", "true or false"
	default:
		return true
	}
	if ok {
		return true
	}
	what := ""
	if t := typeName(n); t != "text" {
		what = " (" + t + ")"
	}
	if v.Kind() == reflect.String {
		what += "; quote it if you mean the text"
	}
	d.fail(pos, path, "expected %s, got %s%s", want, quote(n.Value), what)
	return false
}

// typeName says what YAML made of a scalar.
func typeName(n *yaml.Node) string {
	switch n.ShortTag() {
	case "!!bool":
		return "a boolean"
	case "!!int":
		return "an integer"
	case "!!float":
		return "a number"
	case "!!null":
		return "null"
	case "!!timestamp":
		return "a date"
	case "!!str":
		if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
			return "a quoted string"
		}
		return "text"
	}
	return n.ShortTag()
}

// decodeScalar sets v from the scalar value written at pos, after ${ENV}
// expansion, and reports whether it did.
func (d *decoder) decodeScalar(value string, pos Position, v reflect.Value, path string) bool {
	s, err := expand(value)
	if err != nil {
		d.fail(pos, path, "%v", err)
		return false
	}
	switch {
	case v.Type() == durationType:
		dur, err := time.ParseDuration(s)
		if err != nil {
			if _, numErr := strconv.ParseFloat(s, 64); numErr == nil {
				d.fail(pos, path, "duration %s needs a unit, e.g. 5s", quote(s))
			} else {
				d.fail(pos, path, "invalid duration %s", quote(s))
			}
			return false
		}
		v.SetInt(int64(dur))
	case v.Kind() == reflect.String:
		v.SetString(s)
	case v.Kind() == reflect.Int:
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v.OverflowInt(i) {
			d.fail(pos, path, "expected an integer, got %s", quote(s))
			return false
		}
		v.SetInt(i)
	case v.Kind() == reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.fail(pos, path, "expected a number, got %s", quote(s))
			return false
		}
		v.SetFloat(f)
	case v.Kind() == reflect.Bool:
		switch s {
		case "true", "True", "TRUE":
			v.SetBool(true)
		case "false", "False", "FALSE":
			v.SetBool(false)
		default:
			d.fail(pos, path, "expected true or false, got %s", quote(s))
			return false
		}
	default:
		panic("config: no decoder for field type " + v.Type().String())
	}
	return true
}

// join returns the path of key under the mapping at path.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
