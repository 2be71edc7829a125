package gossip

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGenerateAndLoadKey(t *testing.T) {
	k1, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := GenerateKey()
	if k1 == k2 {
		t.Fatal("two generated keys are equal")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(path, []byte("\n  "+k1+"  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(key) != 32 || base64.StdEncoding.EncodeToString(key) != k1 {
		t.Fatalf("loaded %d bytes, want the generated 32", len(key))
	}

	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		path, want string
	}{
		{filepath.Join(dir, "missing"), "no such file"},
		{write("empty", " \n"), "file is empty"},
		{write("garbage", "not base64!"), "not base64"},
		{write("short", base64.StdEncoding.EncodeToString([]byte("0123456789"))), "key is 10 bytes; want 16, 24 or 32"},
	} {
		_, err := LoadKey(tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "gossip: load key") {
			t.Errorf("LoadKey(%s) = %v, want an error mentioning %q", filepath.Base(tc.path), err, tc.want)
		}
	}
	for _, n := range []int{16, 24} {
		if _, err := LoadKey(write("k", base64.StdEncoding.EncodeToString(make([]byte, n)))); err != nil {
			t.Errorf("%d-byte key rejected: %v", n, err)
		}
	}
}
