package tester

import (
	"context"
	"sync"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// faultLeaseRenewals is how many renewals fit in one lease: a lease
// outlasts two renewals in a row that fail or come late (a busy machine,
// an agent restarting), and still ends a few renewal intervals after the
// tester died.
const faultLeaseRenewals = 3

// defaultFaultLeaseEvery is the renewal interval when Start is given none.
const defaultFaultLeaseEvery = 5 * time.Second

// faultLeaseRenewer renews the fault lease of every agent (see
// wire.MethodKeepFaults) while the tester may hold faults, so that they
// last as long as the tester lives and, should it die, end within one
// lease: the agents then heal them on their own.
//
// The zero value is ready to Start. Start and Stop are not safe to call
// concurrently with each other.
type faultLeaseRenewer struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Start renews the lease of each agent every `every` (defaultFaultLeaseEvery
// if every ≤ 0) for faultLeaseRenewals × every, at once and then until Stop
// or until ctx ends. Each agent is renewed on its own, with a timeout of
// `every`, so that an agent that does not answer delays no other's renewal.
// A renewer already running is stopped first.
func (r *faultLeaseRenewer) Start(ctx context.Context, agents []client.Agent, every time.Duration) {
	r.Stop()
	if every <= 0 {
		every = defaultFaultLeaseEvery
	}
	lease := min(max(faultLeaseRenewals*every, wire.MinFaultLease), wire.MaxFaultLease)
	ctx, cancel := context.WithCancel(ctx)
	r.cancel, r.done = cancel, make(chan struct{})
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Go(func() { renewFaultLease(ctx, a.Endpoint(), a, every, lease) })
	}
	go func() {
		wg.Wait()
		close(r.done)
	}()
}

// Stop stops renewing and returns once no renewal is in flight. The
// leases then run out on their own unless renewed again; the faults the
// tester recovered meanwhile are gone anyway. Stop without Start, or twice,
// does nothing.
func (r *faultLeaseRenewer) Stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel, r.done = nil, nil
}

// renewFaultLease renews one agent's lease every `every` until ctx ends.
// A failure is logged when it starts and when it ends, not at every
// renewal: an agent away for minutes would otherwise flood the log.
func renewFaultLease(ctx context.Context, endpoint string, k client.FaultKeeper, every, lease time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	var failing error
	for {
		cctx, cancel := context.WithTimeout(ctx, every)
		_, err := k.KeepFaults(cctx, lease)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && failing == nil:
			plog.Warningf("agent %s: cannot renew the fault lease (%v); its faults end when the lease (%v) runs out", endpoint, err, lease)
		case err == nil && failing != nil:
			plog.Infof("agent %s: fault lease renewed again", endpoint)
		}
		failing = err
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
