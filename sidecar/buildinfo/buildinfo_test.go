package buildinfo

import "testing"

// TestStampedVersionWins: a version stamped with -ldflags is what every
// caller sees, whatever the build info says.
func TestStampedVersionWins(t *testing.T) {
	old := version
	t.Cleanup(func() { version = old })
	version = "v1.2.3"
	if got := Version(); got != "v1.2.3" {
		t.Fatalf("Version() = %q, want the stamped v1.2.3", got)
	}
	version = ""
	if got := Version(); got == "" || got == "v1.2.3" {
		t.Fatalf("Version() = %q without a stamp", got)
	}
}
