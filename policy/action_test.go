package policy

import "testing"

func TestAction(t *testing.T) {
	var zero Action
	if zero != Deny {
		t.Fatal("the zero Action is not Deny")
	}
	for _, a := range []Action{Allow, Deny} {
		got, err := ParseAction(a.String())
		if err != nil || got != a {
			t.Errorf("ParseAction(%q) = %v, %v", a.String(), got, err)
		}
		b, err := a.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Action
		if err := back.UnmarshalText(b); err != nil || back != a {
			t.Errorf("text round trip of %v: %v, %v", a, back, err)
		}
	}
	for _, s := range []string{"", "Allow", "ALLOW", "permit", " deny"} {
		if _, err := ParseAction(s); err == nil {
			t.Errorf("ParseAction(%q) accepted", s)
		}
	}
	if s := Action(5).String(); s != "Action(5)" {
		t.Errorf("Action(5).String() = %q", s)
	}
	if _, err := Action(5).MarshalText(); err == nil {
		t.Error("MarshalText accepted an invalid action")
	}
	var a Action = Allow
	if err := a.UnmarshalText([]byte("nope")); err == nil || a != Allow {
		t.Errorf("UnmarshalText of a bad value: %v, left %v", err, a)
	}
}
