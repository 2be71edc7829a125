package authn

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
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

func TestKeySetAdminKeys(t *testing.T) {
	file := filepath.Join(t.TempDir(), "partners.keys")
	os.WriteFile(file, []byte("- { id: acme, key: partner-a-secret-key-0001 }\n"), 0o600)
	ks, err := LoadKeySet("partners", file)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2029, 6, 1, 0, 0, 0, 0, time.UTC)
	admin := func(id, secret string, expires time.Time) AdminKey {
		return AdminKey{ID: id, SHA256: sha256.Sum256([]byte(secret)), Expires: expires, Metadata: map[string]string{"by": "admin"}}
	}
	verifies := func(presented, want string) {
		t.Helper()
		k, err := ks.Verify(presented, now)
		switch {
		case want == "" && !errors.Is(err, ErrInvalid):
			t.Errorf("%s: %+v %v, want refused", presented, k, err)
		case want != "" && (err != nil || k.ID != want):
			t.Errorf("%s: %+v %v, want %s", presented, k, err, want)
		}
	}

	if c := ks.SetAdminKeys([]AdminKey{admin("hooli", "hooli-secret-key-0001", time.Time{}), admin("umbrella", "umbrella-secret-0001", now.Add(time.Hour))}); len(c) != 0 {
		t.Errorf("conflicts %v", c)
	}
	verifies("hooli-secret-key-0001", "hooli")
	verifies("umbrella-secret-0001", "umbrella")
	verifies("partner-a-secret-key-0001", "acme")
	if k, ok := ks.Key("hooli"); !ok || k.Source != KeyFromAdmin || k.Principal != "apikey:partners:hooli" || k.Metadata["by"] != "admin" {
		t.Errorf("Key(hooli) = %+v %v", k, ok)
	}
	if k, ok := ks.Key("acme"); !ok || k.Source != KeyFromFile {
		t.Errorf("Key(acme) = %+v %v", k, ok)
	}
	if id, ok := ks.IDOf(sha256.Sum256([]byte("hooli-secret-key-0001"))); !ok || id != "hooli" {
		t.Errorf("IDOf = %q %v", id, ok)
	}
	if got := ks.Keys(); len(got) != 3 || got[0].ID != "acme" || got[1].ID != "hooli" || got[2].ID != "umbrella" {
		t.Errorf("Keys() = %+v", got)
	}

	t.Run("expiry", func(t *testing.T) {
		if _, err := ks.Verify("umbrella-secret-0001", now.Add(time.Hour)); !errors.Is(err, ErrInvalid) {
			t.Errorf("expired admin key: %v", err)
		}
	})
	t.Run("revocation", func(t *testing.T) {
		ks.SetRevoked([]string{"hooli"})
		defer ks.SetRevoked(nil)
		verifies("hooli-secret-key-0001", "")
	})
	t.Run("replaced", func(t *testing.T) {
		ks.SetAdminKeys([]AdminKey{admin("hooli", "hooli-secret-key-0002", time.Time{})})
		verifies("hooli-secret-key-0001", "")
		verifies("hooli-secret-key-0002", "hooli")
		verifies("umbrella-secret-0001", "")
	})
	t.Run("reload keeps admin keys", func(t *testing.T) {
		os.WriteFile(file, []byte("- { id: acme, key: partner-a-secret-key-0009 }\n"), 0o600)
		if err := ks.Reload(); err != nil {
			t.Fatal(err)
		}
		verifies("hooli-secret-key-0002", "hooli")
		verifies("partner-a-secret-key-0009", "acme")
		verifies("partner-a-secret-key-0001", "")
	})
	t.Run("collisions", func(t *testing.T) {
		c := ks.SetAdminKeys([]AdminKey{
			admin("acme", "acme-by-admin-key-0001", time.Time{}),      // the file's ID
			admin("a-copy", "partner-a-secret-key-0009", time.Time{}), // the file's secret
			admin("b-first", "shared-admin-secret-01", time.Time{}),   // same secret: lower ID wins
			admin("c-second", "shared-admin-secret-01", time.Time{}),
		})
		if !slices.Equal(c, []string{"a-copy", "acme", "c-second"}) || !slices.Equal(ks.Conflicts(), c) {
			t.Errorf("conflicts %v, Conflicts() %v", c, ks.Conflicts())
		}
		verifies("acme-by-admin-key-0001", "")
		verifies("partner-a-secret-key-0009", "acme")
		verifies("shared-admin-secret-01", "b-first")
		if k, _ := ks.Key("acme"); k.Source != KeyFromFile {
			t.Errorf("Key(acme) = %+v, want the file's", k)
		}
	})
	t.Run("removed", func(t *testing.T) {
		if c := ks.SetAdminKeys(nil); len(c) != 0 {
			t.Errorf("conflicts %v", c)
		}
		verifies("hooli-secret-key-0002", "")
		verifies("shared-admin-secret-01", "")
		verifies("partner-a-secret-key-0009", "acme")
		if got := ks.Keys(); len(got) != 1 {
			t.Errorf("Keys() = %+v", got)
		}
		if _, ok := ks.Key("hooli"); ok {
			t.Error("Key(hooli) after removal")
		}
	})
}

// TestKeySetAdminKeysSwap: requests verified while the admin keys are
// replaced and the file reloaded see each file key throughout, and an
// admin key either present or absent (run with -race).
func TestKeySetAdminKeysSwap(t *testing.T) {
	file := filepath.Join(t.TempDir(), "partners.keys")
	os.WriteFile(file, []byte("- { id: acme, key: partner-a-secret-key-0001 }\n"), 0o600)
	ks, err := LoadKeySet("partners", file)
	if err != nil {
		t.Fatal(err)
	}
	added := []AdminKey{{ID: "hooli", SHA256: sha256.Sum256([]byte("hooli-secret-key-0001"))}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			if i%2 == 0 {
				ks.SetAdminKeys(added)
			} else {
				ks.SetAdminKeys(nil)
			}
			if i%20 == 0 {
				ks.Reload()
			}
		}
	}()
	now := time.Now()
	for {
		select {
		case <-done:
			return
		default:
		}
		if _, err := ks.Verify("partner-a-secret-key-0001", now); err != nil {
			t.Fatalf("the file key while admin keys change: %v", err)
		}
		if k, err := ks.Verify("hooli-secret-key-0001", now); err == nil && (k.ID != "hooli" || k.Source != KeyFromAdmin) {
			t.Fatalf("the admin key: %+v", k)
		}
		ks.Keys()
		ks.Conflicts()
	}
}
