package config

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/policy/identity"
)

var update = flag.Bool("update", false, "rewrite testdata/invalid/*.golden from the current output")

// testEnv is the environment the testdata files are loaded with.
var testEnv = map[string]string{
	"SERVICE_NAME": "cart",
	"CATALOG_HOST": "127.0.0.1",
	"ZONE":         "not-used",
	"EMPTY":        "",
}

// setEnv makes env the whole environment seen by ${NAME} expansion until
// the test ends.
func setEnv(t testing.TB, env map[string]string) {
	old := lookupEnv
	lookupEnv = func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}
	t.Cleanup(func() { lookupEnv = old })
}

func mustParse(t *testing.T, yaml string) *Config {
	t.Helper()
	c, err := Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	return c
}

func TestLoadValid(t *testing.T) {
	setEnv(t, testEnv)
	files, err := filepath.Glob("testdata/valid/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	// The fixtures name their certificates, keys and tokens relative to
	// themselves, under files/: each is loaded from a copy next to real
	// ones, started from another directory.
	dir := t.TempDir()
	writeFixtureFiles(t, filepath.Join(dir, "files"))
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			copy := filepath.Join(dir, filepath.Base(file))
			if err := os.WriteFile(copy, data, 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(copy)
			if err != nil {
				t.Fatalf("Load:\n%v", err)
			}
			if c.File() != copy {
				t.Errorf("File() = %q, want %q", c.File(), copy)
			}
		})
	}
}

// writeFixtureFiles writes what the valid fixtures name under files/: a
// CA and a leaf for cart, a gossip key, a Consul token.
func writeFixtureFiles(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewTestCA("mesh.local")
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteCA(filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.WriteLeaf(dir, "cart", time.Hour); err != nil {
		t.Fatal(err)
	}
	key, err := gossip.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"gossip.key": key, "consul-token": "0e4d-secret"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLoadChecksFiles: the files a config names are checked by Load, so
// `validate` reports what `run` would fail on, at the field's position;
// relative paths are read from the config file's directory.
func TestLoadChecksFiles(t *testing.T) {
	dir := t.TempDir()
	writeFixtureFiles(t, filepath.Join(dir, "files"))
	os.WriteFile(filepath.Join(dir, "files", "empty-token"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "files", "bad.key"), []byte("not base64!\n"), 0o600)
	cfg := filepath.Join(dir, "sidemesh.yaml")
	os.WriteFile(cfg, []byte(`service: { name: cart, port: 8080 }
tls: { cert_file: files/ca.pem, key_file: files/cart-key.pem, ca_file: files/cart-key.pem }
discovery:
  consul: { token_file: files/empty-token }
  gossip: { key_file: files/bad.key }
telemetry: { access_log: nowhere/access.log }
`), 0o600)
	_, err := Load(cfg)
	files := filepath.Join(dir, "files")
	want := []string{
		cfg + ":2:19: tls.cert_file: tls: private key does not match public key",
		cfg + ":2:72: tls.ca_file: " + files + "/cart-key.pem holds no PEM certificate",
		cfg + ":4:25: discovery.consul.token_file: " + files + "/empty-token is empty",
		cfg + ":5:23: discovery.gossip.key_file: gossip: load key " + files + "/bad.key: not base64 (generate one with `sidemesh keygen`): illegal base64 data at input byte 3",
		cfg + ":6:26: telemetry.access_log: the directory of " + filepath.Join(dir, "nowhere", "access.log") + " does not exist",
	}
	if err == nil {
		t.Fatal("Load accepted broken files")
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

func TestLoadMissingFile(t *testing.T) {
	if _, err := Load("testdata/no-such-file.yaml"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load = %v, want a not-exist error", err)
	}
}

// TestParseInvalid checks the exact errors for each file in
// testdata/invalid against the file's .golden twin. Run with -update to
// rewrite the goldens, then read the diff.
func TestParseInvalid(t *testing.T) {
	setEnv(t, testEnv)
	files, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			c, err := Parse(filepath.Base(file), data)
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			if c != nil {
				t.Errorf("Parse returned a Config with its error")
			}
			if _, ok := err.(ErrorList); !ok {
				t.Errorf("error is a %T, want ErrorList", err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("errors:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	t.Setenv("GOMAXPROCS", "") // else it, not the sidecar default, sets concurrency
	c := mustParse(t, `
service: { name: cart, port: 8080 }
upstreams:
  - service: web
    endpoints: [{ address: 127.0.0.1:1 }]
  - service: db
    protocol: tcp
    listen: 127.0.0.1:5432
    endpoints: [{ address: 127.0.0.1:2, weight: 5 }]
  - service: api
    protocol: grpc
    timeout: 0s
    idle_timeout: 0s
    endpoints: [{ address: 127.0.0.1:3 }]
`)
	upstream := func(service, protocol string, idle time.Duration, eps ...Endpoint) Upstream {
		return Upstream{
			Service:            service,
			Protocol:           protocol,
			Balancer:           "round_robin",
			Endpoints:          eps,
			Timeout:            DefaultUpstreamTimeout,
			ConnectTimeout:     DefaultConnectTimeout,
			IdleTimeout:        idle,
			MaxIdlePerEndpoint: DefaultMaxIdlePerEndpoint,
			CircuitBreaker:     defaultCircuitBreaker(),
			Outlier:            defaultOutlier(),
			HealthCheck:        defaultHealthCheck(),
			Retries:            defaultRetries(),
			Consul:             UpstreamConsul{Mesh: true},
			MTLS:               true,
		}
	}
	want := Default()
	want.Service = &Service{Name: "cart", Address: "127.0.0.1", Port: 8080, Protocol: "http", Weight: 1,
		Health: ServiceHealth{Interval: 10 * time.Second, Timeout: 2 * time.Second}}
	want.Upstreams = []Upstream{
		upstream("web", "http", DefaultPoolIdleTimeout, Endpoint{Address: "127.0.0.1:1", Weight: 1}),
		upstream("db", "tcp", DefaultTCPIdleTimeout, Endpoint{Address: "127.0.0.1:2", Weight: 5}),
		upstream("api", "grpc", 0, Endpoint{Address: "127.0.0.1:3", Weight: 1}),
	}
	want.Upstreams[1].Listen = "127.0.0.1:5432"
	want.Upstreams[2].Timeout = 0
	// With retries on, the timeout is shared among the tries; tcp has no
	// tries, and no timeout leaves nothing to share.
	want.Upstreams[0].Retries.PerTryTimeout = DefaultUpstreamTimeout / 3
	want.Concurrency = DefaultSidecarConcurrency // no edge section: a sidecar

	got := *c
	got.file, got.positions = "", nil
	if !reflect.DeepEqual(&got, want) {
		t.Errorf("Parse =\n%+v\nwant\n%+v", &got, want)
	}
	if c.Inbound.Listen != "0.0.0.0:21000" || c.Outbound.Listen != "127.0.0.1:15001" ||
		c.Outbound.ReadHeaderTimeout != 10*time.Second || c.DrainTimeout != 15*time.Second {
		t.Errorf("listener defaults not applied: %+v %+v", c.Inbound, c.Outbound)
	}
}

// TestParseEmpty: an empty file is refused (a writer that truncates
// before writing leaves one for a moment; a reload must not apply it).
func TestParseEmpty(t *testing.T) {
	for _, data := range []string{"", "# nothing\n", "---\n", "~\n", "  \n\n"} {
		_, err := Parse("empty.yaml", []byte(data))
		if err == nil || err.Error() != "empty.yaml:1:1: the file is empty: a config needs at least a service or an upstream" {
			t.Errorf("Parse(%q) = %v, want the empty-file error", data, err)
		}
	}
}

// TestPerTryTimeoutDefault: the per-try timeout shares the upstream's
// timeout among the tries unless it is written, 0s included.
func TestPerTryTimeoutDefault(t *testing.T) {
	for _, tc := range []struct {
		upstream string
		want     time.Duration
	}{
		{"{ service: a, endpoints: [{ address: 127.0.0.1:1 }] }", 5 * time.Second},
		{"{ service: a, timeout: 9s, retries: { attempts: 1 }, endpoints: [{ address: 127.0.0.1:1 }] }", 4500 * time.Millisecond},
		{"{ service: a, retries: { attempts: 0 }, endpoints: [{ address: 127.0.0.1:1 }] }", 0},
		{"{ service: a, retries: { per_try_timeout: 0s }, endpoints: [{ address: 127.0.0.1:1 }] }", 0},
		{"{ service: a, retries: { per_try_timeout: 2s }, endpoints: [{ address: 127.0.0.1:1 }] }", 2 * time.Second},
		{"{ service: a, timeout: 0s, endpoints: [{ address: 127.0.0.1:1 }] }", 0},
	} {
		c := mustParse(t, "upstreams: ["+tc.upstream+"]\n")
		if got := c.Upstreams[0].Retries.PerTryTimeout; got != tc.want {
			t.Errorf("%s: per_try_timeout %v, want %v", tc.upstream, got, tc.want)
		}
	}
}

func TestParseNullKeepsDefault(t *testing.T) {
	c := mustParse(t, "drain_timeout:\noutbound:\n  listen: ~\nupstreams: [{ service: a, endpoints: [{ address: 127.0.0.1:1 }] }]\n")
	if c.DrainTimeout != DefaultDrainTimeout || c.Outbound.Listen != DefaultOutboundListen {
		t.Errorf("null values changed defaults: %+v", c)
	}
}

// TestParseNullSectionIsOn: an optional section written with nothing
// after it ("admin:", as the README says to turn the admin API on) is on,
// with its defaults; the service section then says what it lacks.
func TestParseNullSectionIsOn(t *testing.T) {
	c := mustParse(t, "admin:\nupstreams: [{ service: a, endpoints: [{ address: 127.0.0.1:1 }] }]\n")
	if c.Admin == nil || c.Admin.Listen != "127.0.0.1:19000" {
		t.Errorf("admin: = %+v, want on at 127.0.0.1:19000", c.Admin)
	}
	_, err := Parse("test.yaml", []byte("service:\n"))
	if err == nil || !strings.Contains(err.Error(), "test.yaml:1:9: service.name: required") {
		t.Errorf("a bare service: parsed with %v", err)
	}
}

func TestParsePositions(t *testing.T) {
	c := mustParse(t, `service:
  name: cart
  port: 8080
upstreams:
  - service: catalog
    endpoints:
      - address: 10.0.0.1:80
      - { address: "10.0.0.2:80", weight: 2 }
`)
	for path, want := range map[string]Position{
		"service":                           {2, 3},
		"service.port":                      {3, 9},
		"upstreams":                         {5, 3},
		"upstreams[0]":                      {5, 5},
		"upstreams[0].service":              {5, 14},
		"upstreams[0].endpoints[0].address": {7, 18},
		"upstreams[0].endpoints[1]":         {8, 9},
		"upstreams[0].endpoints[1].address": {8, 20},
		"upstreams[0].endpoints[1].weight":  {8, 43},
	} {
		if got := c.positions[path]; got != want {
			t.Errorf("position of %s = %v, want %v", path, got, want)
		}
	}
	for _, path := range []string{"inbound", "inbound.listen", "upstreams[0].timeout", ""} {
		if got, ok := c.positions[path]; ok {
			t.Errorf("position of unwritten %q = %v, want none", path, got)
		}
	}
	if got, want := c.pos("upstreams[0].balancer"), (Position{5, 5}); got != want {
		t.Errorf("pos(upstreams[0].balancer) = %v, want the upstream's %v", got, want)
	}
}

func TestParseEnv(t *testing.T) {
	setEnv(t, map[string]string{"NAME": "cart", "PORT": "8080", "EMPTY": ""})
	c := mustParse(t, `
service:
  name: ${NAME}
  port: ${PORT}
  address: ${EMPTY:-127.0.0.9}
upstreams:
  - service: ${NAME}-db
    listen: ${MISSING:-127.0.0.1:9191}
    endpoints: [{ address: "127.0.0.1:9001", zone: "$${NAME} $NAME-$" }]
`)
	if s := c.Service; s.Name != "cart" || s.Port != 8080 || s.Address != "127.0.0.9" {
		t.Errorf("service = %+v", s)
	}
	u := c.Upstreams[0]
	if u.Service != "cart-db" || u.Listen != "127.0.0.1:9191" || u.Endpoints[0].Zone != "${NAME} $NAME-$" {
		t.Errorf("upstream = %+v", u)
	}
}

func TestParseUnsetEnv(t *testing.T) {
	setEnv(t, nil)
	_, err := Parse("env.yaml", []byte("service:\n  name: cart\n  port: \"${PORT}\"\n"))
	list, ok := err.(ErrorList)
	if !ok || len(list) != 1 {
		t.Fatalf("Parse = %v, want one error", err)
	}
	want := Error{File: "env.yaml", Pos: Position{3, 9}, Path: "service.port", Msg: `environment variable "PORT" is not set`}
	if *list[0] != want {
		t.Errorf("error = %+v, want %+v", *list[0], want)
	}
}

func TestParseAliasBomb(t *testing.T) {
	// typed is a few kilobytes that would decode to a million endpoints:
	// an upstream with 1000 endpoints, listed 1000 times.
	typed := "upstreams:\n  - &u\n    service: catalog\n    endpoints: [&e { address: 127.0.0.1:1 }" +
		strings.Repeat(", *e", 999) + "]\n" + strings.Repeat("  - *u\n", 999)
	// laughs is the classic "billion laughs", aimed at a list of strings.
	laughs := `a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]` + "\n"
	for c := 'b'; c <= 'i'; c++ {
		laughs += fmt.Sprintf("%c: &%c [%s]\n", c, c, strings.Repeat(fmt.Sprintf("*%c,", c-1), 8)+fmt.Sprintf("*%c", c-1))
	}
	laughs += "trusted_proxies: *i\n"

	for name, tc := range map[string]struct{ data, want string }{
		"typed":  {typed, "too many values (over 100000"},
		"laughs": {laughs, "trusted_proxies[0]: expected a single value, got a list"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("bomb.yaml", []byte(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestEffective: the effective config resolves what depends on other
// settings, reduces what is off, and redacts inline secrets.
func TestEffective(t *testing.T) {
	c := mustParse(t, `
service: { name: cart, port: 8080 }
tls: { cert_file: c.pem, key_file: k.pem, ca_file: ca.pem }
upstreams:
  - { service: a, balancer: consistent_hash, endpoints: [{ address: 127.0.0.1:1 }] }
  - { service: b, circuit_breaker: { enabled: false }, retries: { attempts: 0 }, endpoints: [{ address: 127.0.0.1:2 }] }
telemetry: { tracing: { otlp_endpoint: 127.0.0.1:4317, headers: { x-api-key: s3cret } } }
`)
	out, err := c.EffectiveYAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"default: deny", "hash_on: source_ip", "circuit_breaker:\n        enabled: false\n", "retries:\n        attempts: 0\n", "x-api-key: '[redacted]'", "per_try_timeout: 5s", "- static"} {
		if !strings.Contains(out, want) {
			t.Errorf("effective config lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "s3cret") || strings.Contains(out, "health_check") {
		t.Errorf("effective config shows a secret or a section that is off:\n%s", out)
	}
}

// TestEffectiveSticky: a sticky cookie's name and path, which default to
// the route's, are shown resolved; modes without a cookie show none.
func TestEffectiveSticky(t *testing.T) {
	c := mustParse(t, `
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  sticky: { key_file: sticky.key }
  routes:
    - { name: shop, matches: [{ path: { prefix: /shop } }], backends: [{ service: shop }], sticky: { mode: cookie } }
    - { name: api, matches: [{ path: { prefix: /api } }], backends: [{ service: api }], sticky: { mode: header, header: X-User } }
discovery: { gossip: { bind: 127.0.0.1:7946, key_file: gossip.key } }
`)
	out, err := c.EffectiveYAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name: sm_shop\n", "path: /shop\n", "header: X-User\n", "clock_skew: 5s\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("effective config lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "same_site") != 1 {
		t.Errorf("a cookie block shows for a route without cookies:\n%s", out)
	}
}
