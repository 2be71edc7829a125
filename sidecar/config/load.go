package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Load reads the config file at path, parses it with Parse, and checks
// the files it names (certificates, keys, the gossip key, the Consul
// token): that they exist and hold what they should.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	if errs := c.checkFiles(); len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

// Parse overlays data, the YAML contents of file, onto Default and
// validates the result. Keys the Config does not know are errors, ${ENV}
// references in values are expanded, and fields the file leaves unset (or
// sets to null) keep their defaults. An empty file is the default config.
//
// Parse returns either a valid Config or an ErrorList holding every
// problem found, decoding and validation alike, in file order. file names
// the data in errors and in the Config's File.
func Parse(file string, data []byte) (*Config, error) {
	c := Default()
	c.file = file
	c.positions = make(map[string]Position)
	d := &decoder{file: file, positions: c.positions, failed: make(map[string]bool)}
	d.decodeFile(data, c)
	if d.tooBig {
		return nil, d.errs.err()
	}
	c.resolveDefaults()
	c.resolvePaths()
	errs := d.errs
	for _, e := range c.validate() {
		if !d.covers(e.Path) {
			errs = append(errs, e)
		}
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// decodeFile decodes the single YAML document in data onto c.
func (d *decoder) decodeFile(data []byte, c *Config) {
	if bytes.Contains(data, []byte(envOpen)) || bytes.Contains(data, []byte(envClose)) {
		d.errorf(Position{Line: 1, Column: 1}, "", "the file holds the private-use characters U+E000 or U+E001, which sidemesh reserves")
		return
	}
	data = markEnv(data)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.empty()
		} else {
			d.syntaxError(err)
		}
		return
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		d.errorf(Position{next.Line, next.Column}, "", "a second YAML document; a config file holds one")
	case !errors.Is(err, io.EOF):
		d.syntaxError(err)
	}
	if len(doc.Content) != 1 || doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].Tag == "!!null" {
		d.empty()
		return
	}
	unmarkEnv(&doc)
	d.decode(doc.Content[0], reflect.ValueOf(c).Elem(), "")
}

// empty records that the file holds no config. An empty file is what a
// writer that truncates before it writes leaves for a moment; applied on
// reload, it would drop every listener and upstream.
func (d *decoder) empty() {
	d.errorf(Position{Line: 1, Column: 1}, "", "the file is empty: a config needs at least a service or an upstream")
}

// syntaxError records an error from the YAML parser, taking the line from
// its "yaml: line N: " prefix when there is one.
func (d *decoder) syntaxError(err error) {
	e := &Error{File: d.file, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	if rest, ok := strings.CutPrefix(e.Msg, "line "); ok {
		if num, msg, ok := strings.Cut(rest, ": "); ok {
			if line, err := strconv.Atoi(num); err == nil {
				e.Pos.Line, e.Msg = line, msg
			}
		}
	}
	e.Msg = "invalid YAML: " + e.Msg
	d.errs = append(d.errs, e)
}

// covers reports whether path is at or under a field that failed to
// decode.
func (d *decoder) covers(path string) bool {
	for p := range lineage(path) {
		if d.failed[p] {
			return true
		}
	}
	return false
}

// resolveDefaults fills the fields whose default depends on other fields
// and that the file left unset.
func (c *Config) resolveDefaults() {
	if _, set := c.positions["concurrency"]; !set && c.Edge == nil && os.Getenv("GOMAXPROCS") == "" {
		c.Concurrency = DefaultSidecarConcurrency
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if _, set := c.positions[fmt.Sprintf("upstreams[%d].idle_timeout", i)]; set {
			continue
		}
		u.IdleTimeout = DefaultPoolIdleTimeout
		if u.Protocol == ProtocolTCP {
			u.IdleTimeout = DefaultTCPIdleTimeout
		}
	}
	if c.Edge != nil {
		// Services the routes name without an upstreams entry get one with
		// the defaults, found by discovery.
		for _, name := range c.Edge.BackendServices() {
			if !slices.ContainsFunc(c.Upstreams, func(u Upstream) bool { return u.Service == name }) {
				var u Upstream
				u.setDefaults()
				u.Service, u.implicit = name, true
				c.Upstreams = append(c.Upstreams, u)
			}
		}
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if _, set := c.positions[fmt.Sprintf("upstreams[%d].retries.per_try_timeout", i)]; !set && u.Retries.Attempts > 0 && u.Timeout > 0 && u.Protocol != ProtocolTCP {
			// The upstream's timeout shared among the tries.
			u.Retries.PerTryTimeout = u.Timeout / time.Duration(u.Retries.Attempts+1)
		}
	}
}

// pos returns where the field at path was written, or else where its
// nearest written parent was; zero if neither was.
func (c *Config) pos(path string) Position {
	for p := range lineage(path) {
		if pos, ok := c.positions[p]; ok {
			return pos
		}
	}
	return Position{}
}

// lineage yields path and then each of its parents:
// "upstreams[0].endpoints[1]", "upstreams[0].endpoints", "upstreams[0]",
// "upstreams".
func lineage(path string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for path != "" && yield(path) {
			i := strings.LastIndexAny(path, ".[")
			if i < 0 {
				return
			}
			path = path[:i]
		}
	}
}
