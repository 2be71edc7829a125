package consul

import (
	"context"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/internal/meshtest"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTokenFile checks that the token of a token file reaches Consul on
// every request, from both the Source and the Registrar, and never appears
// in their logs, even in errors.
func TestTokenFile(t *testing.T) {
	t.Parallel()
	const token = "s3cr3t-5e1f-4c7a"
	f := newFakeConsul(t,
		answer{status: http.StatusForbidden, body: "ACL not found"},
		answer{index: 3},
	)
	cfg := Config{Address: f.srv.URL, TokenFile: writeFile(t, "token", token+"\n")}
	client, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	log, logs := newLogger(t)
	log.Info("consul configured", "consul", cfg, "with_token", Config{Token: token})
	log.Info(fmt.Sprintf("%v %+v %#v %s", Config{Token: token}, Config{Token: token}, Config{Token: token}, Config{Token: token}))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := NewSource(client, SourceOptions{MinBackoff: time.Millisecond, Logger: log})
	ch, err := src.Watch(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, ch, 5*time.Second, "an empty snapshot", func(s discovery.Snapshot) bool { return len(s.Endpoints) == 0 })

	r := NewRegistrar(client, RegistrarOptions{AppPort: 8080, TTL: 300 * time.Millisecond, Logger: log})
	if err := r.Register(ctx, testInstance(21000)); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 5*time.Second, "a TTL update", func() error {
		_, _, paths := f.seen()
		for _, p := range paths {
			if strings.HasPrefix(p, "/v1/agent/check/update/") {
				return nil
			}
		}
		return fmt.Errorf("no TTL update yet in %v", paths)
	})
	if err := r.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	waitClosed(t, ch, 5*time.Second)

	_, tokens, paths := f.seen()
	if len(tokens) < 6 {
		t.Errorf("only %d requests: %v", len(tokens), paths)
	}
	for i, got := range tokens {
		if got != token {
			t.Errorf("request %s carried token %q, want the file's", paths[i], got)
		}
	}
	out := logs.String()
	if strings.Contains(out, token) {
		t.Errorf("the token appears in the logs:\n%s", out)
	}
	for _, want := range []string{"ACL not found", "<redacted>", "consul unreachable"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}
}

// TestNewClientEnvironment checks the fallback to the CONSUL_HTTP_*
// variables and the precedence of explicit fields. Not parallel: it sets
// the environment.
func TestNewClientEnvironment(t *testing.T) {
	f := newFakeConsul(t)
	envFile := writeFile(t, "env-token", "env-file-token")
	cfgFile := writeFile(t, "cfg-token", "cfg-file-token")
	for _, tc := range []struct {
		name      string
		env       map[string]string
		cfg       Config
		wantToken string
		wantQuery string
	}{
		{"address and token from the environment",
			map[string]string{"CONSUL_HTTP_ADDR": f.srv.URL, "CONSUL_HTTP_TOKEN": "env-token"}, Config{}, "env-token", ""},
		{"token file from the environment",
			map[string]string{"CONSUL_HTTP_ADDR": f.srv.URL, "CONSUL_HTTP_TOKEN_FILE": envFile}, Config{}, "env-file-token", ""},
		{"explicit token wins over the environment",
			map[string]string{"CONSUL_HTTP_ADDR": "127.0.0.1:1", "CONSUL_HTTP_TOKEN": "env-token"},
			Config{Address: f.srv.URL, Token: "cfg-token"}, "cfg-token", ""},
		{"explicit token file wins over an explicit token",
			map[string]string{"CONSUL_HTTP_TOKEN_FILE": envFile},
			Config{Address: f.srv.URL, Token: "cfg-token", TokenFile: cfgFile}, "cfg-file-token", ""},
		{"datacenter", nil, Config{Address: f.srv.URL, Datacenter: "dc9"}, "", "dc=dc9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"} {
				t.Setenv(k, tc.env[k])
			}
			client, err := NewClient(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := client.Status().Leader(); err != nil {
				t.Fatal(err)
			}
			_, tokens, paths := f.seen()
			if got := tokens[len(tokens)-1]; got != tc.wantToken {
				t.Errorf("token %q, want %q", got, tc.wantToken)
			}
			if got := paths[len(paths)-1]; !strings.Contains(got, tc.wantQuery) {
				t.Errorf("request %s, want %s in it", got, tc.wantQuery)
			}
		})
	}

	t.Run("unreadable token file", func(t *testing.T) {
		_, err := NewClient(Config{Address: f.srv.URL, TokenFile: filepath.Join(t.TempDir(), "missing")})
		if err == nil || !strings.HasPrefix(err.Error(), "consul: new client: ") {
			t.Errorf("err = %v, want a consul: new client error", err)
		}
	})
}

// TestNewClientTLS checks that CAFile and TLSServerName reach the
// transport: the test server's certificate is valid for example.com.
func TestNewClientTLS(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `"127.0.0.1:8300"`)
	}))
	defer srv.Close()
	ca := writeFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))

	for _, tc := range []struct {
		cfg     Config
		wantErr string
	}{
		{Config{Address: srv.URL, CAFile: ca, TLSServerName: "example.com"}, ""},
		{Config{Address: srv.URL, CAFile: ca, TLSServerName: "wrong.test"}, "certificate is valid for"},
		{Config{Address: srv.URL}, "certificate signed by unknown authority"},
		{Config{Address: srv.URL, CAFile: filepath.Join(t.TempDir(), "missing.pem")}, "consul: new client"},
	} {
		client, err := NewClient(tc.cfg)
		if err == nil {
			_, err = client.Status().Leader()
		}
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%v: %v", tc.cfg, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%v: err = %v, want %q", tc.cfg, err, tc.wantErr)
		}
	}
}
