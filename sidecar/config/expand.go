package config

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// lookupEnv reads the environment for ${NAME} expansion; tests replace it.
var lookupEnv = os.LookupEnv

// envOpen and envClose stand in for the braces of ${NAME} while YAML
// parses the file: "{ port: ${PORT} }" is not valid YAML (braces open
// and close flow mappings), yet is the natural way to write it. They are
// single runes, so positions do not move; the parsed values get their
// braces back before expansion.
const (
	envOpen  = "\ue000"
	envClose = "\ue001"
)

// markEnv replaces the braces of each "${...}" on one line with envOpen
// and envClose.
func markEnv(data []byte) []byte {
	if !bytes.Contains(data, []byte("${")) {
		return data
	}
	var out bytes.Buffer
	out.Grow(len(data) + 16)
	for len(data) > 0 {
		i := bytes.Index(data, []byte("${"))
		if i < 0 {
			out.Write(data)
			break
		}
		end := bytes.IndexAny(data[i+2:], "}\n")
		if end < 0 || data[i+2+end] != '}' {
			out.Write(data[:i+2]) // unterminated: expand reports it
			data = data[i+2:]
			continue
		}
		out.Write(data[:i+1])
		out.WriteString(envOpen)
		out.Write(data[i+2 : i+2+end])
		out.WriteString(envClose)
		data = data[i+2+end+1:]
	}
	return out.Bytes()
}

// unmarkEnv gives every scalar under n its braces back.
func unmarkEnv(n *yaml.Node) {
	if strings.Contains(n.Value, envOpen) || strings.Contains(n.Value, envClose) {
		n.Value = strings.NewReplacer(envOpen, "{", envClose, "}").Replace(n.Value)
	}
	for _, c := range n.Content {
		unmarkEnv(c)
	}
}

// expand replaces ${NAME} and ${NAME:-default} in a scalar value with the
// environment variable's value; the default applies when NAME is unset or
// empty, as in the shell. "$${" stands for a literal "${", and any other
// "$" is kept as it is, so "$NAME" is not expanded. Substituted values are
// not expanded again.
func expand(s string) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		if i > 0 && s[i-1] == '$' { // "$${": an escaped "${"
			b.WriteString(s[:i-1])
			b.WriteString("${")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("unterminated %s", quote(s[i:]))
		}
		name, def, hasDef := strings.Cut(s[i+2:i+end], ":-")
		if !validEnvName(name) {
			return "", fmt.Errorf("invalid environment variable name %s", quote(name))
		}
		val, ok := lookupEnv(name)
		if hasDef && val == "" {
			val, ok = def, true
		}
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", quote(name))
		}
		b.WriteString(val)
		s = s[i+end+1:]
	}
}

// validEnvName reports whether name is a shell variable name.
func validEnvName(name string) bool {
	if name == "" || '0' <= name[0] && name[0] <= '9' {
		return false
	}
	for _, c := range []byte(name) {
		if !(c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}
