//go:build compose

// Package compose holds the end-to-end test of the Docker Compose shop in
// this folder. It needs Docker with docker-compose and the tools modules'
// binaries, so it is behind the compose build tag: `make test-compose`
// (which `make test` runs) builds what it needs and runs it.
package compose

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// stack drives one Compose project made from docker-compose.yml.
type stack struct {
	t       *testing.T
	repo    string
	project string
	secrets string
}

// run runs name with args in the repository, bounded by timeout, and
// returns its standard output. The test fails with stderr on an error.
func (s *stack) run(timeout time.Duration, name string, args ...string) string {
	s.t.Helper()
	out, err := s.try(timeout, name, args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// try is run returning the error instead of failing.
func (s *stack) try(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = s.repo
	cmd.Env = append(os.Environ(), "SIDEMESH_COMPOSE_SECRETS="+s.secrets)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, lastLines(stderr.String(), 30))
	}
	return stdout.String(), nil
}

// compose runs docker-compose on the project.
func (s *stack) compose(timeout time.Duration, args ...string) string {
	s.t.Helper()
	return s.run(timeout, "docker-compose", append(s.composeArgs(), args...)...)
}

func (s *stack) composeArgs() []string {
	return []string{"-p", s.project, "-f", filepath.Join(s.repo, "deploy/compose/docker-compose.yml")}
}

// addr returns the host address a service's container port is published
// on ("127.0.0.1:49153").
func (s *stack) addr(service string, port int) string {
	s.t.Helper()
	out := strings.TrimSpace(s.compose(time.Minute, "port", service, fmt.Sprint(port)))
	if out == "" || strings.HasSuffix(out, ":0") {
		s.t.Fatalf("%s's port %d is not published", service, port)
	}
	return out
}

// container returns the ID of a service's container.
func (s *stack) container(service string) string {
	s.t.Helper()
	id := strings.TrimSpace(s.compose(time.Minute, "ps", "-q", service))
	if id == "" {
		s.t.Fatalf("no container for %s", service)
	}
	return id
}

// down removes the project's containers, network and volumes, and fails
// the test if any of them is left.
func (s *stack) down() {
	s.t.Helper()
	s.compose(3*time.Minute, "down", "--volumes", "--remove-orphans", "--timeout", "5")
	label := "label=com.docker.compose.project=" + s.project
	for _, what := range [][]string{
		{"ps", "-aq", "--filter", label},
		{"network", "ls", "-q", "--filter", label},
		{"volume", "ls", "-q", "--filter", label},
		{"images", "-q", "--filter", "dangling=true", "--filter", "label=io.sidemesh.compose=1"},
	} {
		if left := strings.TrimSpace(s.run(time.Minute, "docker", what...)); left != "" {
			s.t.Errorf("docker %s: left behind:\n%s", strings.Join(what, " "), left)
		}
	}
}

// logs returns the last lines of every container's log.
func (s *stack) logs() string {
	out, err := s.try(time.Minute, "docker-compose", append(s.composeArgs(), "logs", "--no-color", "--tail", "40")...)
	if err != nil {
		return err.Error()
	}
	return out
}

// lastLines returns the last n lines of text.
func lastLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// timings are the test's steps and how long each took, printed at the end.
type timings struct {
	steps []string
	took  []time.Duration
}

// since records step as having taken the time since start.
func (ts *timings) since(step string, start time.Time) time.Duration {
	d := time.Since(start)
	ts.record(step, d)
	return d
}

// record records step as having taken d.
func (ts *timings) record(step string, d time.Duration) {
	ts.steps = append(ts.steps, step)
	ts.took = append(ts.took, d)
}

// String formats the steps as a table.
func (ts *timings) String() string {
	var b strings.Builder
	b.WriteString("compose end-to-end timings:\n")
	for i, s := range ts.steps {
		fmt.Fprintf(&b, "  %-58s %8.1fs\n", s, ts.took[i].Seconds())
	}
	return b.String()
}
