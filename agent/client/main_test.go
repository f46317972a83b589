package client_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any goroutine outlives the tests: a client
// that forgot a connection, or a call left running after it returned.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
