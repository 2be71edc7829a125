package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocumentedConfigsParse: every YAML block in the README and docs/
// is a config that parses and validates (the files it names are not
// opened), so the docs cannot show a key that does not exist, a value of
// the wrong type, or a combination validate refuses.
func TestDocumentedConfigsParse(t *testing.T) {
	t.Setenv("OTEL_KEY", "k") // the tracing example reads it
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md", "../../examples/quickstart/README.md")
	blocks := 0
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var block strings.Builder
		start, in := 0, false
		for i, line := range strings.Split(string(data), "\n") {
			switch {
			case !in && strings.TrimSpace(line) == "```yaml":
				in, start = true, i+2
				block.Reset()
				block.WriteString(strings.Repeat("\n", i+1)) // positions are the file's lines
			case in && strings.TrimSpace(line) == "```":
				in = false
				blocks++
				if _, err := Parse(file, []byte(block.String())); err != nil {
					t.Errorf("the YAML block at %s:%d does not validate:\n%v", file, start, err)
				}
			case in:
				block.WriteString(line + "\n")
			}
		}
	}
	if blocks < 3 {
		t.Errorf("found %d YAML blocks in the docs; is the fence still ```yaml?", blocks)
	}
}
