package health

import (
	"testing"

	"go.uber.org/goleak"
)

// Run promises that no check goroutine outlives it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
