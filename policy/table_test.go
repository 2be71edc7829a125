package policy

import (
	"context"
	"strings"
	"sync"
	"testing"
)

func TestZeroTableDenies(t *testing.T) {
	var tb Table
	d := tb.Authorize(context.Background(), get(webProd, "/"))
	if d.Allow || d.Rule != "default" {
		t.Errorf("zero Table: %+v", d)
	}
	if err := tb.SetRules("config", []Rule{allow("", "cart", "web")}); err != nil {
		t.Fatal(err)
	}
	if d := tb.Authorize(context.Background(), get(webProd, "/")); !d.Allow || d.Rule != "config[0]" {
		t.Errorf("zero Table after SetRules: %+v", d)
	}
}

func TestTable(t *testing.T) {
	ctx := context.Background()
	tb := NewTable(Deny)
	check := func(step string, r Request, allow bool, rule string) {
		t.Helper()
		if d := tb.Authorize(ctx, r); d.Allow != allow || d.Rule != rule {
			t.Errorf("%s: %+v; want allow=%v rule=%q", step, d, allow, rule)
		}
	}
	check("empty", get(webProd, "/"), false, "default")

	if err := tb.SetRules("config", []Rule{allow("policy.rules[0]", "cart", "*")}); err != nil {
		t.Fatal(err)
	}
	check("config", get(webProd, "/"), true, "policy.rules[0]")

	// A second set merges by precedence, not by set.
	if err := tb.SetRules("consul", []Rule{deny("consul intention web -> cart", "cart", "web")}); err != nil {
		t.Fatal(err)
	}
	check("consul exact deny beats config *", get(webProd, "/"), false, "consul intention web -> cart")
	check("consul leaves others", get(apiProd, "/"), true, "policy.rules[0]")

	// An invalid set is refused whole and the old one keeps serving.
	err := tb.SetRules("consul", []Rule{allow("ok", "cart", "web"), {Name: "bad", To: "cart"}})
	if err == nil || !strings.Contains(err.Error(), `rule set "consul"`) || !strings.Contains(err.Error(), "rule bad: from") {
		t.Errorf("SetRules with a bad rule: %v", err)
	}
	check("after refused update", get(webProd, "/"), false, "consul intention web -> cart")

	// Replacing one set leaves the other.
	if err := tb.SetRules("consul", []Rule{allow("", "cart", "web")}); err != nil {
		t.Fatal(err)
	}
	check("consul replaced", get(webProd, "/"), true, "consul[0]")

	// Removing a set.
	if err := tb.SetRules("config", nil); err != nil {
		t.Fatal(err)
	}
	check("config removed", get(apiProd, "/"), false, "default")
	check("consul kept", get(webProd, "/"), true, "consul[0]")

	// Default.
	tb.SetDefault(Allow)
	check("default allow", get(apiProd, "/"), true, "default")
	if tb.Policy().Default() != Allow {
		t.Error("Policy().Default() is not Allow")
	}
	tb.SetDefault(Action(9))
	check("invalid default is deny", get(apiProd, "/"), false, "default")
}

// TestTableConcurrent swaps rule sets and defaults while readers
// authorize; run with -race. Every decision must come from one whole
// Policy: under set A web is allowed by "a" and api denied by default;
// under set B web is denied by "b" and api allowed by "b-api".
func TestTableConcurrent(t *testing.T) {
	ctx := context.Background()
	setA := []Rule{allow("a", "cart", "web")}
	setB := []Rule{deny("b", "cart", "web"), allow("b-api", "cart", "api")}
	tb := NewTable(Deny)
	if err := tb.SetRules("config", setA); err != nil {
		t.Fatal(err)
	}

	const writes = 300
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		for i := range writes {
			set := setA
			if i%2 == 1 {
				set = setB
			}
			if err := tb.SetRules("config", set); err != nil {
				t.Error(err)
				return
			}
			if i%10 == 0 {
				if err := tb.SetRules("consul", []Rule{allow("c", "orders", "web")}); err != nil {
					t.Error(err)
					return
				}
				tb.SetDefault(Deny)
			}
		}
	})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				p := tb.Policy()
				w := p.Authorize(ctx, get(webProd, "/"))
				a := p.Authorize(ctx, get(apiProd, "/"))
				inA := w.Allow && w.Rule == "a" && !a.Allow && a.Rule == "default"
				inB := !w.Allow && w.Rule == "b" && a.Allow && a.Rule == "b-api"
				if !inA && !inB {
					t.Errorf("decisions from no whole policy: web %+v, api %+v", w, a)
					return
				}
				if d := tb.Authorize(ctx, get(webProd, "/")); d.Rule != "a" && d.Rule != "b" {
					t.Errorf("Table.Authorize: %+v", d)
					return
				}
			}
		})
	}
	wg.Wait()
}
