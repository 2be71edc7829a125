package authn

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestKeySet(t *testing.T) {
	digest := sha256.Sum256([]byte("partner-b-secret-key-0002"))
	file := filepath.Join(t.TempDir(), "partners.keys")
	os.WriteFile(file, []byte(`
- { id: acme, key: partner-a-secret-key-0001, metadata: { tier: gold } }
- { id: globex, sha256: `+hex.EncodeToString(digest[:])+` }
- { id: initech, key: partner-c-secret-key-0003, expires: 2030-01-01T00:00:00Z }
`), 0o600)
	ks, err := LoadKeySet("partners", file)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2029, 6, 1, 0, 0, 0, 0, time.UTC)
	for presented, id := range map[string]string{"partner-a-secret-key-0001": "acme", "partner-b-secret-key-0002": "globex", "partner-c-secret-key-0003": "initech"} {
		k, err := ks.Verify(presented, now)
		if err != nil || k.ID != id {
			t.Errorf("%s: %+v %v, want %s", presented, k, err, id)
		}
	}
	for name, presented := range map[string]string{"unknown": "nope-nope-nope-nope", "a prefix": "partner-a-secret", "empty": ""} {
		if _, err := ks.Verify(presented, now); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ks.Verify("partner-c-secret-key-0003", time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC)); !errors.Is(err, ErrInvalid) {
		t.Errorf("expired key: %v", err)
	}
	ks.SetRevoked([]string{"acme"})
	if _, err := ks.Verify("partner-a-secret-key-0001", now); !errors.Is(err, ErrInvalid) {
		t.Errorf("revoked key: %v", err)
	}
	ks.SetRevoked(nil)
	if _, err := ks.Verify("partner-a-secret-key-0001", now); err != nil {
		t.Errorf("revocation ended: %v", err)
	}
	if got := ks.Keys(); len(got) != 3 || got[0].ID != "acme" || got[0].Metadata["tier"] != "gold" {
		t.Errorf("Keys() = %+v", got)
	}

	for name, content := range map[string]string{
		"no id":     "- { key: partner-a-secret-key-0001 }",
		"duplicate": "- { id: a, key: partner-a-secret-key-0001 }\n- { id: a, key: partner-b-secret-key-0002 }",
		"short":     "- { id: a, key: short }",
		"both":      "- { id: a, key: partner-a-secret-key-0001, sha256: abcd }",
		"bad hash":  "- { id: a, sha256: abcd }",
	} {
		os.WriteFile(file, []byte(content), 0o600)
		if err := ks.Reload(); err == nil {
			t.Errorf("%s: the key file was accepted", name)
		}
	}
	if _, err := ks.Verify("partner-b-secret-key-0002", now); err != nil {
		t.Errorf("after failed reloads the keys in use changed: %v", err)
	}
}

func BenchmarkAPIKey(b *testing.B) {
	file := filepath.Join(b.TempDir(), "k")
	os.WriteFile(file, []byte("- { id: acme, key: partner-a-secret-key-0001 }"), 0o600)
	ks, _ := LoadKeySet("p", file)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ks.Verify("partner-a-secret-key-0001", now); err != nil {
			b.Fatal(err)
		}
	}
}
