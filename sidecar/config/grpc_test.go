package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/transcode/transcodetest"
)

func TestGRPCTranscodeDescriptorsRelativeToConfig(t *testing.T) {
	dir := t.TempDir()
	transcodetest.WriteDescriptorSet(t, dir, transcodetest.Compile(t, false))
	file := filepath.Join(dir, "sidemesh.yaml")
	yaml := `
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  routes:
    - name: library
      matches: [{ path: { prefix: /v1/shelves } }]
      grpc: { service: library, descriptors: library.pb, headers: [Authorization] }
upstreams:
  - { service: library, protocol: grpc, endpoints: [{ address: 127.0.0.1:9000 }] }
`
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	g := c.Edge.Routes[0].GRPC
	if got, want := g.Descriptors, filepath.Join(dir, "library.pb"); got != want {
		t.Errorf("descriptors = %q, want %q (relative to the config file)", got, want)
	}
	if !g.Strict || g.MaxRequestBytes != 4<<20 || g.MaxResponseBytes != 4<<20 || g.RefreshInterval != 30*time.Second {
		t.Errorf("defaults: %+v", g)
	}
}

func TestGRPCTranscodeImplicitUpstreamNeedsGRPC(t *testing.T) {
	_, err := Parse("edge.yaml", []byte(`
discovery: { consul: { address: 127.0.0.1:8500 } }
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  routes: [{ name: library, grpc: { service: library, reflection: true } }]
`))
	if err == nil {
		t.Fatal("a grpc route to an upstream of protocol http parsed")
	}
}

// TestGRPCTranscodeDescriptorFilesChecked: Load reads every grpc route's
// descriptor set, relative to the config, and reports one that is
// missing or is not a FileDescriptorSet at its position.
func TestGRPCTranscodeDescriptorFilesChecked(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.pb"), []byte("not a descriptor set"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "edge.yaml")
	if err := os.WriteFile(file, []byte(`edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  routes:
    - { name: missing, matches: [{ path: { prefix: /a } }], grpc: { service: library, descriptors: nowhere.pb } }
    - { name: garbage, matches: [{ path: { prefix: /b } }], grpc: { service: library, descriptors: bad.pb } }
upstreams:
  - { service: library, protocol: grpc, endpoints: [{ address: 127.0.0.1:9000 }] }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(file)
	if err == nil {
		t.Fatal("Load accepted a missing and a broken descriptor set")
	}
	for _, want := range []string{
		file + ":4:100: edge.routes[0].grpc.descriptors: " + filepath.Join(dir, "nowhere.pb") + ": no such file or directory",
		file + ":5:100: edge.routes[1].grpc.descriptors: descriptor set " + filepath.Join(dir, "bad.pb") + ": not a FileDescriptorSet",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors:\n%v\nlack %s", err, want)
		}
	}
}
