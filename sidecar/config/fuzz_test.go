package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics, that it fails only with a
// well-formed ErrorList, and that what it accepts passes Validate.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob("testdata/*/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"upstreams: &u [*u]\n",
		"service: &s {name: *s}\n",
		"&k {a: 1}: x\n*k : y\n",
		"? [a, b]\n: c\n",
		"<<: {drain_timeout: 5s}\n",
		"service: {name: !!int x, port: !!float 8080}\n",
		"[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]\n",
		"drain_timeout: ${A:-${B}}\n",
		"---\n...\n---\n",
	} {
		f.Add([]byte(s))
	}
	setEnv(f, testEnv)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			list, ok := err.(ErrorList)
			if !ok || len(list) == 0 {
				t.Fatalf("error %#v is not a non-empty ErrorList", err)
			}
			if c != nil {
				t.Fatal("Parse returned both a Config and an error")
			}
			for _, e := range list {
				if e == nil || e.Pos.Line < 0 || e.Pos.Column < 0 || e.Msg == "" {
					t.Fatalf("malformed error %#v", e)
				}
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that fails Validate:\n%v", err)
		}
	})
}
