package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"regexp"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// JSONValue is a config value of any YAML kind, held as the JSON it
// stands for: a string, number, boolean, null, sequence or mapping. An
// integer keeps every digit as written (9007199254740993 stays exact,
// 0x1F becomes 31), a quoted scalar is a string ("2" is the string "2"),
// and a mapping keeps its keys' order.
type JSONValue json.RawMessage

var jsonValueType = reflect.TypeFor[JSONValue]()

// jsonNumber is JSON's number grammar (RFC 8259 section 6).
var jsonNumber = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

// yamlToJSON returns the JSON of the YAML node n.
func yamlToJSON(n *yaml.Node) ([]byte, error) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return []byte("null"), nil
		case "!!bool":
			b, err := strconv.ParseBool(n.Value)
			if err != nil {
				return nil, fmt.Errorf("%q is not a boolean", n.Value)
			}
			return strconv.AppendBool(nil, b), nil
		case "!!int":
			if jsonNumber.MatchString(n.Value) {
				return []byte(n.Value), nil
			}
			i, ok := new(big.Int).SetString(n.Value, 0) // 0x, 0o, 0b, _ separators
			if !ok {
				return nil, fmt.Errorf("%q is not an integer", n.Value)
			}
			return []byte(i.String()), nil
		case "!!float":
			if jsonNumber.MatchString(n.Value) {
				return []byte(n.Value), nil
			}
			f, err := strconv.ParseFloat(n.Value, 64)
			if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
				return nil, fmt.Errorf("%q has no JSON number (JSON has no infinities or NaN)", n.Value)
			}
			return strconv.AppendFloat(nil, f, 'g', -1, 64), nil
		}
		return json.Marshal(n.Value) // strings, and timestamps as written
	case yaml.SequenceNode:
		out := []byte{'['}
		for i, e := range n.Content {
			if i > 0 {
				out = append(out, ',')
			}
			b, err := yamlToJSON(e)
			if err != nil {
				return nil, err
			}
			out = append(out, b...)
		}
		return append(out, ']'), nil
	case yaml.MappingNode:
		out := []byte{'{'}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			for k.Kind == yaml.AliasNode {
				k = k.Alias
			}
			if k.Kind != yaml.ScalarNode {
				return nil, errors.New("a mapping key must be a plain value")
			}
			if i > 0 {
				out = append(out, ',')
			}
			key, _ := json.Marshal(k.Value)
			out = append(append(out, key...), ':')
			b, err := yamlToJSON(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			out = append(out, b...)
		}
		return append(out, '}'), nil
	}
	return nil, fmt.Errorf("unsupported YAML node kind %d", n.Kind)
}
