package policy

import "fmt"

// Action is what a rule, or the default, does with a request it decides.
// The zero value is Deny, so a forgotten field fails closed.
type Action int

const (
	// Deny refuses the request (403) or closes the connection.
	Deny Action = iota
	// Allow lets the request through to the local app.
	Allow
)

// String returns "deny" or "allow", the spelling ParseAction accepts;
// any other value prints as "Action(n)".
func (a Action) String() string {
	switch a {
	case Deny:
		return "deny"
	case Allow:
		return "allow"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// valid reports whether a is Allow or Deny.
func (a Action) valid() bool { return a == Allow || a == Deny }

// ParseAction parses "allow" or "deny" (lower case, as in the config file
// and in Consul intentions).
func ParseAction(s string) (Action, error) {
	switch s {
	case "deny":
		return Deny, nil
	case "allow":
		return Allow, nil
	}
	return Deny, fmt.Errorf("policy: unknown action %q: want allow or deny", s)
}

// MarshalText implements encoding.TextMarshaler; it refuses values other
// than Allow and Deny.
func (a Action) MarshalText() ([]byte, error) {
	if !a.valid() {
		return nil, fmt.Errorf("policy: invalid action %d", int(a))
	}
	return []byte(a.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseAction.
func (a *Action) UnmarshalText(b []byte) error {
	v, err := ParseAction(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}
