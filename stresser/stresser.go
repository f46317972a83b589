// Package stresser puts rate-limited key-value and lease load on an etcd
// cluster while the tester injects faults, and counts what succeeded and
// what failed.
//
// New builds a Composite of the stressers a Config names; all of them share
// one rate limit (Config.QPS is cluster-wide) and one set of Stats:
//
//	cfg := stresser.DefaultConfig()
//	cfg.Endpoints = []string{"http://127.0.0.1:2379", ...}
//	s, err := stresser.New(cfg) // validates; sends nothing yet
//	err = s.Stress(ctx)         // connects and starts the load
//	stats := s.Pause()          // after the fault has healed
//	err = s.Check(ctx)          // what the load did is still true
//	s.Resume()
//	...
//	stats = s.Close()
//
// Errors a fault explains (see Classify) are counted and the load goes on;
// others are counted as Unexpected, logged with the member and operation,
// and fail the next Check.
// The load stops only on Pause, Close or the end of Stress's context.
package stresser

import "context"

// Stresser generates load on a cluster.
type Stresser interface {
	// Stress starts the load and returns at once; the load runs until
	// Pause, Close, or ctx is done.
	Stress(ctx context.Context) error
	// Pause stops sending and returns the stats of the interval since the
	// load last started or resumed. Requests in flight are cut off and
	// counted as canceled in that interval, so none spills into the next.
	Pause() Stats
	// Resume starts sending again after Pause.
	Resume()
	// Close stops the load for good, waits for every goroutine to end,
	// and returns the stats of the last interval (zero if paused: Pause
	// returned them).
	Close() Stats
	// ModifiedKeys is the number of keys the stresser has written or
	// deleted so far.
	ModifiedKeys() int64
}

// Checker verifies, after a fault has healed and the load is paused, that
// what the stresser did is still true of the cluster and that its clients
// met no error a fault does not explain. Check returns an error
// naming what is wrong; it waits (bounded, and honouring ctx) for what takes
// time, such as short-TTL leases expiring.
type Checker interface {
	Check(ctx context.Context) error
}
