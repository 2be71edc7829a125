package config

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// decodeInto runs the decoder on src over v, a pointer to a struct.
func decodeInto(t *testing.T, src string, v any) *decoder {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	d := &decoder{file: "t.yaml", positions: make(map[string]Position), failed: make(map[string]bool)}
	d.decode(doc.Content[0], reflect.ValueOf(v).Elem(), "")
	return d
}

func TestDecodeScalars(t *testing.T) {
	setEnv(t, map[string]string{"N": "7"})
	var v struct {
		On    bool          `yaml:"on"`
		Off   bool          `yaml:"off"`
		Bad   bool          `yaml:"bad"`
		N     int           `yaml:"n"`
		Big   int           `yaml:"big"`
		Hex   int           `yaml:"hex"`
		Wait  time.Duration `yaml:"wait"`
		Zero  time.Duration `yaml:"zero"`
		Float time.Duration `yaml:"float"`
		S     string        `yaml:"s"`
		Q     string        `yaml:"q"`
		L     []string      `yaml:"l"`
		Log   string        `yaml:"log"`
		Env   int           `yaml:"env"`
	}
	v.Off = true
	d := decodeInto(t, `
on: true
off: False
bad: yes
n: -12
big: 99999999999999999999
hex: 0x10
wait: 1m30s
zero: 0
float: 1.5
s: 123
q: "123"
l: [a, "b", 3, 1.10]
log: true
env: "${N}"
`, &v)
	if !v.On || v.Off || v.N != -12 || v.Wait != 90*time.Second || v.Zero != 0 || v.Q != "123" || v.Env != 7 ||
		v.S != "123" || !reflect.DeepEqual(v.L, []string{"a", "b", "3", ""}) {
		t.Errorf("decoded %+v", v)
	}
	// No scalar is coerced: a number or a boolean where text belongs, a
	// quoted number where a number belongs, is pointed out.
	want := `t.yaml:4:6: bad: expected true or false, got "yes"
t.yaml:6:6: big: expected an integer, got "99999999999999999999" (a number)
t.yaml:7:6: hex: expected an integer, got "0x10"
t.yaml:10:8: float: duration "1.5" needs a unit, e.g. 5s
t.yaml:13:16: l[3]: expected text, got "1.10" (a number); quote it if you mean the text
t.yaml:14:6: log: expected text, got "true" (a boolean); quote it if you mean the text`
	if got := d.errs.Error(); got != want {
		t.Errorf("errors:\n%s\nwant\n%s", got, want)
	}
}

func TestSuggest(t *testing.T) {
	fields := fieldsOf(reflect.TypeFor[Upstream]())
	for key, want := range map[string]string{
		"balancr":        "balancer",
		"Balancer":       "balancer",
		"endpoint":       "endpoints",
		"connect-timout": "connect_timeout",
		"redirects":      "",
		"x":              "",
	} {
		got := suggest(key, fields)
		if want != "" {
			want = ` (did you mean "` + want + `"?)`
		}
		if got != want {
			t.Errorf("suggest(%q) = %q, want %q", key, got, want)
		}
	}
}

// TestFieldTags makes sure every exported field of the config can be set
// from the file.
func TestFieldTags(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type)
	walk = func(typ reflect.Type) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || seen[typ] {
			return
		}
		seen[typ] = true
		for f := range typ.Fields() {
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if (name == "" || name == "-") && !(f.Anonymous && opts == "inline") {
				t.Errorf("%s.%s has no yaml key", typ.Name(), f.Name)
			}
			// The decoder's scalars: a field of another kind would panic.
			scalar := f.Type
			for scalar != jsonValueType && (scalar.Kind() == reflect.Pointer || scalar.Kind() == reflect.Slice || scalar.Kind() == reflect.Map) {
				scalar = scalar.Elem()
			}
			switch scalar.Kind() {
			case reflect.String, reflect.Int, reflect.Float64, reflect.Bool, reflect.Struct:
			default:
				if scalar != durationType && scalar != jsonValueType {
					t.Errorf("%s.%s is a %s, which the decoder does not read", typ.Name(), f.Name, scalar)
				}
			}
			walk(f.Type)
		}
	}
	walk(reflect.TypeFor[Config]())
}
