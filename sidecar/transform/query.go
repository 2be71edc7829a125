package transform

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
)

// QueryEdit sets, removes and renames query parameters. It keeps the
// other parameters as they were written, in their order: a renamed
// parameter keeps its place and value, a set one takes the place of its
// first occurrence (later ones are dropped) or goes at the end. A
// renamed parameter replaces any the request had of its new name. It is
// immutable and safe for concurrent use.
type QueryEdit struct {
	set    map[string]string
	order  []string // set's names, sorted: the order appended
	remove map[string]bool
	rename map[string]string
	target map[string]string // rename's values, to their keys
}

// NewQueryEdit compiles edits: set maps a name to its one value, remove
// lists names, rename maps old names to new. It fails on an empty name
// and on a name edited twice. Nil maps and slices are empty.
func NewQueryEdit(set map[string]string, remove []string, rename map[string]string) (*QueryEdit, error) {
	q := &QueryEdit{set: set, order: slices.Sorted(maps.Keys(set)), remove: map[string]bool{}, rename: rename, target: map[string]string{}}
	seen := map[string]bool{}
	check := func(name string) error {
		if name == "" {
			return errors.New("empty parameter name")
		}
		if seen[name] {
			return fmt.Errorf("parameter %q is edited twice", name)
		}
		seen[name] = true
		return nil
	}
	for _, name := range q.order {
		if err := check(name); err != nil {
			return nil, err
		}
	}
	for _, name := range remove {
		if err := check(name); err != nil {
			return nil, err
		}
		q.remove[name] = true
	}
	for _, from := range slices.Sorted(maps.Keys(rename)) {
		if err := check(from); err != nil {
			return nil, err
		}
		if err := check(rename[from]); err != nil {
			return nil, err
		}
		q.target[rename[from]] = from
	}
	return q, nil
}

// Apply edits the raw (escaped) query and returns it and whether it
// changed. A parameter whose name does not unescape is kept as it is.
func (q *QueryEdit) Apply(raw string) (string, bool) {
	var parts []string
	if raw != "" {
		parts = strings.Split(raw, "&")
	}
	present := map[string]bool{}
	for _, p := range parts {
		if name, err := url.QueryUnescape(cut(p)); err == nil {
			present[name] = true
		}
	}
	changed := false
	done := map[string]bool{}
	out := make([]string, 0, len(parts)+len(q.set))
	for _, p := range parts {
		name, err := url.QueryUnescape(cut(p))
		if err != nil {
			out = append(out, p)
			continue
		}
		to, renamed := q.rename[name]
		from, isTarget := q.target[name]
		_, set := q.set[name]
		switch {
		case q.remove[name]:
			changed = true
		case renamed:
			out = append(out, url.QueryEscape(to)+p[len(cut(p)):])
			changed = true
		case isTarget && present[from]:
			changed = true // replaced by the renamed parameter
		case set:
			if !done[name] {
				out = append(out, url.QueryEscape(name)+"="+url.QueryEscape(q.set[name]))
				done[name] = true
			}
			changed = true
		default:
			out = append(out, p)
		}
	}
	for _, name := range q.order {
		if !done[name] {
			out = append(out, url.QueryEscape(name)+"="+url.QueryEscape(q.set[name]))
			changed = true
		}
	}
	if !changed {
		return raw, false
	}
	return strings.Join(out, "&"), true
}

// cut returns the name part of a raw "name=value".
func cut(p string) string {
	name, _, _ := strings.Cut(p, "=")
	return name
}
