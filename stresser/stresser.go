// Package stresser puts rate-limited key-value and lease load on an etcd
// cluster while the tester injects faults, and counts what succeeded and
// what failed.
package stresser

import "context"

// Stresser generates load on a cluster.
type Stresser interface {
	// Stress starts the load and returns at once; the load runs until
	// Pause, Close, or ctx is done.
	Stress(ctx context.Context) error
	// Pause stops sending and returns the stats of the interval since the
	// load last started or resumed.
	Pause() Stats
	// Resume starts sending again after Pause.
	Resume()
	// Close stops the load for good, waits for every goroutine to end,
	// and returns the stats of the last interval.
	Close() Stats
	// ModifiedKeys is the number of keys the stresser has written or
	// deleted so far.
	ModifiedKeys() int64
}

// Checker verifies, after a fault has healed and the load is paused, that
// what the stresser did is still true of the cluster.
type Checker interface {
	Check(ctx context.Context) error
}
