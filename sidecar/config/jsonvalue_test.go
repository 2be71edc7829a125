package config

import (
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestJSONValue: a JSONValue takes any YAML value and holds its JSON,
// integers with every digit.
func TestJSONValue(t *testing.T) {
	for src, want := range map[string]string{
		`9007199254740993`:               `9007199254740993`,
		`-12`:                            `-12`,
		`0x1F`:                           `31`,
		`1_000`:                          `1000`,
		`123456789012345678901234567890`: `123456789012345678901234567890`,
		`1.50`:                           `1.50`,
		`1e3`:                            `1e3`,
		`edge`:                           `"edge"`,
		`"2"`:                            `"2"`,
		`true`:                           `true`,
		`~`:                              `null`,
		`[1, two, { x: 3 }]`:             `[1,"two",{"x":3}]`,
		`{ b: 1, a: "q\"uote" }`:         `{"b":1,"a":"q\"uote"}`,
		`2001-12-14`:                     `"2001-12-14"`,
	} {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(src), &n); err != nil {
			t.Fatal(err)
		}
		got, err := yamlToJSON(n.Content[0])
		if err != nil || string(got) != want {
			t.Errorf("%s: %s %v, want %s", src, got, err, want)
		}
	}
	for _, bad := range []string{`.inf`, `.nan`, `{ [1]: x }`} {
		var n yaml.Node
		yaml.Unmarshal([]byte(bad), &n)
		if got, err := yamlToJSON(n.Content[0]); err == nil {
			t.Errorf("%s: %s, want an error", bad, got)
		}
	}
}
