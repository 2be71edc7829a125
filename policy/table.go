package policy

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// Table holds the current Policy, built from several named rule sets (the
// config file's, Consul intentions) that are replaced independently, and
// a default action. It implements Authorizer.
//
// Authorize reads an atomic pointer and never locks, so a reload never
// stalls requests; writers (SetRules, SetDefault) are serialized by a
// mutex and each publishes a whole new Policy. A request sees either the
// old or the new Policy, never a mix.
//
// The zero Table denies everything (default Deny, no rules); NewTable sets
// another default.
type Table struct {
	mu   sync.Mutex         // serializes writers
	sets map[string][]entry // compiled rule sets by source, seq unset
	def  Action
	cur  atomic.Pointer[Policy]
}

// NewTable returns a Table with no rules and the default action def (an
// invalid def is taken as Deny).
func NewTable(def Action) *Table {
	t := &Table{}
	t.SetDefault(def)
	return t
}

// SetRules replaces the rule set named source (such as "config" or
// "consul") with rules; nil or empty rules remove it. Rules without a Name
// are named "<source>[i]". If any rule is invalid, SetRules returns every
// problem and changes nothing: the previous rules of source keep serving.
//
// Rule sets are merged in the order of their source names; precedence
// decides between rules of different sets exactly as within one set.
func (t *Table) SetRules(source string, rules []Rule) error {
	entries, err := compileRules(rules, source)
	if err != nil {
		return fmt.Errorf("policy: rule set %q: %w", source, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(entries) == 0 {
		delete(t.sets, source)
	} else {
		if t.sets == nil {
			t.sets = map[string][]entry{}
		}
		t.sets[source] = entries
	}
	t.publish()
	return nil
}

// SetDefault sets the action taken when no rule applies. An invalid a is
// taken as Deny.
func (t *Table) SetDefault(a Action) {
	if !a.valid() {
		a = Deny
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.def = a
	t.publish()
}

// publish builds and stores the Policy of the current sets; t.mu is held.
func (t *Table) publish() {
	names := make([]string, 0, len(t.sets))
	for n := range t.sets {
		names = append(names, n)
	}
	slices.Sort(names)
	var all []entry
	for _, n := range names {
		all = append(all, t.sets[n]...)
	}
	t.cur.Store(buildPolicy(all, t.def))
}

// Policy returns the Policy in force: an immutable snapshot.
func (t *Table) Policy() *Policy {
	if p := t.cur.Load(); p != nil {
		return p
	}
	return emptyDeny
}

var emptyDeny = buildPolicy(nil, Deny)

// Authorize decides r with the Policy in force. It does not block, lock
// or allocate.
func (t *Table) Authorize(ctx context.Context, r Request) Decision {
	return t.Policy().Authorize(ctx, r)
}

// Interface guard.
var _ Authorizer = (*Table)(nil)
