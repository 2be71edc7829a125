package gossip

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
)

// GenerateKey returns a new gossip encryption key: 32 random bytes
// (AES-256), base64-encoded, as `sidemesh keygen` prints it.
func GenerateKey() (string, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("gossip: generate key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(key), nil
}

// LoadKey reads a key file holding one base64-encoded key (surrounding
// whitespace is ignored) and returns the decoded key, which must be 16, 24
// or 32 bytes.
func LoadKey(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip: load key: %w", err)
	}
	text := strings.TrimSpace(string(raw))
	if text == "" {
		return nil, fmt.Errorf("gossip: load key %s: file is empty", path)
	}
	key, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("gossip: load key %s: not base64 (generate one with `sidemesh keygen`): %w", path, err)
	}
	if err := checkKeyLen(key); err != nil {
		return nil, fmt.Errorf("gossip: load key %s: %w", path, err)
	}
	return key, nil
}

// checkKeyLen accepts the AES-128, AES-192 and AES-256 key sizes.
func checkKeyLen(key []byte) error {
	switch len(key) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("key is %d bytes; want 16, 24 or 32", len(key))
}
