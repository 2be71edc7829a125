package edge

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Describe writes the table in precedence order, for `sidemesh validate
// --print`: per hostname (exact names, then wildcards, longest first, then
// routes for any host), the paths in the order they are tried, each with
// its conditions and route. The first line that matches a request takes
// it; a hostname whose lines all miss hands over to the next that covers
// the request.
func (t *Table) Describe() string {
	var b strings.Builder
	b.WriteString("routes, in precedence order (the first line that matches a request takes it):\n")
	exact := make([]string, 0, len(t.exactHosts))
	for h := range t.exactHosts {
		exact = append(exact, h)
	}
	slices.Sort(exact)
	for _, h := range exact {
		t.exactHosts[h].describe(&b, h)
	}
	wild := make([]string, 0, len(t.wildHosts))
	for h := range t.wildHosts {
		wild = append(wild, h)
	}
	slices.SortFunc(wild, func(a, c string) int { return cmp.Or(len(c)-len(a), strings.Compare(a, c)) })
	for _, h := range wild {
		t.wildHosts[h].describe(&b, "*."+h)
	}
	t.anyHost.describe(&b, "any host")
	return b.String()
}

func (hr *hostRoutes) describe(b *strings.Builder, host string) {
	var lines []string
	paths := make([]string, 0, len(hr.exact))
	for p := range hr.exact {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		for _, e := range hr.exact[p] {
			lines = append(lines, e.line("exact  "+p))
		}
	}
	type prefixed struct {
		prefix string
		es     []*entry
	}
	var prefixes []prefixed
	var walk func(n *segNode)
	walk = func(n *segNode) {
		if len(n.entries) > 0 {
			prefixes = append(prefixes, prefixed{n.entries[0].prefix, n.entries})
		}
		for _, c := range n.children {
			walk(c)
		}
	}
	walk(&hr.prefixes)
	slices.SortFunc(prefixes, func(a, c prefixed) int {
		return cmp.Or(len(c.prefix)-len(a.prefix), strings.Compare(a.prefix, c.prefix))
	})
	for _, p := range prefixes {
		for _, e := range p.es {
			lines = append(lines, e.line("prefix "+cmp.Or(p.prefix, "/")))
		}
	}
	for _, e := range hr.regexes {
		lines = append(lines, e.line("regex  "+strings.TrimSuffix(strings.TrimPrefix(e.regex.String(), "^(?:"), ")$")))
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(b, "  %s\n", host)
	for _, l := range lines {
		b.WriteString("    ")
		b.WriteString(l)
		b.WriteByte('\n')
	}
}

// line describes e after its path.
func (e *entry) line(path string) string {
	var conds []string
	if e.method != "" {
		conds = append(conds, e.method)
	}
	for _, h := range e.headers {
		conds = append(conds, "header "+h.describe())
	}
	for _, q := range e.query {
		conds = append(conds, "query "+q.describe())
	}
	if v := e.version; v != nil {
		c := fmt.Sprintf("version %s=%s", v.header, v.value)
		if v.isDefault {
			c += " (default)"
		}
		conds = append(conds, c)
	}
	s := fmt.Sprintf("%-32s", path)
	if len(conds) > 0 {
		s += " [" + strings.Join(conds, ", ") + "]"
	}
	return s + " -> " + e.route.Name
}

func (m *valueMatcher) describe() string {
	if m.regex != nil {
		return m.name + "~" + strings.TrimSuffix(strings.TrimPrefix(m.regex.String(), "^(?:"), ")$")
	}
	return m.name + "=" + m.exact
}
