package config

import (
	"fmt"
	"os"
	"strings"
)

// lookupEnv reads the environment for ${NAME} expansion; tests replace it.
var lookupEnv = os.LookupEnv

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
