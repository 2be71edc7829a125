package main

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestDocumentedCommandsExist reads every sidemesh command line in the
// README and docs/ (in code blocks and code spans) and checks that its
// subcommands and flags exist, so the docs cannot name a command or a
// flag that was renamed or never built.
func TestDocumentedCommandsExist(t *testing.T) {
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md", "../../examples/quickstart/README.md")
	root := newRoot(io.Discard, io.Discard)
	root.InitDefaultCompletionCmd() // cobra adds it when the command runs
	invocation := regexp.MustCompile(`(?:^|[\s(/` + "`" + `])sidemesh((?: +[a-z][a-z0-9-]*| +--?[a-z][a-z0-9-]*(?:[ =][^\s|` + "`" + `\]]+)?)+)`)
	checked := 0
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		inFence := false
		for i, line := range strings.Split(string(data), "\n") {
			for _, code := range codeOf(line, &inFence) {
				for _, m := range invocation.FindAllStringSubmatch(code, -1) {
					if err := checkInvocation(root, strings.Fields(m[1])); err != "" {
						t.Errorf("%s:%d: sidemesh%s: %s", file, i+1, m[1], err)
					}
					checked++
				}
			}
		}
	}
	if checked < 20 {
		t.Errorf("found only %d sidemesh command lines in the docs; is the pattern still right?", checked)
	}
}

// codeOf returns the code in a Markdown line: all of it inside a fenced
// or indented block, else its code spans. *inFence says whether the line
// is inside a fenced block, and codeOf keeps it up to date.
func codeOf(line string, inFence *bool) []string {
	if strings.HasPrefix(strings.TrimSpace(line), "```") {
		*inFence = !*inFence
		return nil
	}
	if *inFence || strings.HasPrefix(line, "    ") {
		code, _, _ := strings.Cut(line, " #") // a shell comment is prose
		return []string{code}
	}
	var spans []string
	parts := strings.Split(line, "`")
	for i := 1; i < len(parts); i += 2 {
		spans = append(spans, parts[i])
	}
	return spans
}

// checkInvocation resolves words to a command and checks its flags; it
// returns what is wrong, or "".
func checkInvocation(root *cobra.Command, words []string) string {
	cmd := root
	for len(words) > 0 && !strings.HasPrefix(words[0], "-") {
		sub, _, err := cmd.Find(words[:1])
		if err != nil || sub == cmd {
			break // an argument (a file name, a shell name)
		}
		cmd, words = sub, words[1:]
	}
	if cmd == root && len(words) > 0 && !strings.HasPrefix(words[0], "-") {
		return "no command " + words[0]
	}
	for _, w := range words {
		if !strings.HasPrefix(w, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(w, "-"), "=")
		var ok bool
		if strings.HasPrefix(w, "--") {
			ok = cmd.Flags().Lookup(name) != nil || cmd.InheritedFlags().Lookup(name) != nil || name == "help" || name == "version"
		} else {
			ok = cmd.Flags().ShorthandLookup(name) != nil || cmd.InheritedFlags().ShorthandLookup(name) != nil || name == "h"
		}
		if !ok {
			return cmd.CommandPath() + " has no flag " + w
		}
	}
	return ""
}
