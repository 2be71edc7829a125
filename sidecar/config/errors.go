package config

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// Error is one problem found in a config.
type Error struct {
	// File is the config file's path; empty for a Config built in code.
	File string
	// Pos is where the problem is; zero when unknown.
	Pos Position
	// Path names the field, as in "upstreams[0].endpoints[1].address";
	// empty for problems with the file as a whole.
	Path string
	// Msg describes the problem, in lower case.
	Msg string
}

// Error formats e as "file:line:col: path: msg". The location is cut
// short to what is known, and the path is left out when Msg names it.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Pos.Line > 0 {
		if e.File != "" {
			b.WriteByte(':')
		}
		b.WriteString(strconv.Itoa(e.Pos.Line))
		if e.Pos.Column > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Pos.Column))
		}
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Path != "" && !strings.Contains(e.Msg, e.Path) {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in a config, in file order. Parse and
// Validate return a non-empty ErrorList as their error.
type ErrorList []*Error

// Error returns one line per problem.
func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sort orders l by line, then column, keeping the order of problems found
// at the same place.
func (l ErrorList) sort() {
	slices.SortStableFunc(l, func(a, b *Error) int { return a.Pos.compare(b.Pos) })
}

// compare orders positions by line, then column.
func (p Position) compare(q Position) int {
	return cmp.Or(cmp.Compare(p.Line, q.Line), cmp.Compare(p.Column, q.Column))
}

// err returns l sorted, or nil when it is empty: a nil ErrorList in an
// error interface would not compare equal to nil.
func (l ErrorList) err() error {
	if len(l) == 0 {
		return nil
	}
	l.sort()
	return l
}

// quote quotes text taken from the file for an error message, cutting it
// short so that a huge value, repeated through aliases, cannot blow up the
// error.
func quote(s string) string {
	const limit = 64
	if len(s) > limit {
		return strconv.Quote(s[:limit]) + "..."
	}
	return strconv.Quote(s)
}
