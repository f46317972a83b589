package tester

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// leaseKeeper is a fake agent for the renewer: it records each renewal
// and can hang until the call's context ends. Only Endpoint and
// KeepFaults are implemented; any other method of client.Agent panics.
type leaseKeeper struct {
	client.Agent // nil
	ep           string
	hang         bool

	mu       sync.Mutex
	leases   []time.Duration
	inFlight int
	calls    chan struct{} // one send per call begun, if not full
}

func newLeaseKeeper(ep string, hang bool) *leaseKeeper {
	return &leaseKeeper{ep: ep, hang: hang, calls: make(chan struct{}, 100)}
}

func (k *leaseKeeper) Endpoint() string { return k.ep }

func (k *leaseKeeper) KeepFaults(ctx context.Context, lease time.Duration) (time.Time, error) {
	k.mu.Lock()
	k.leases = append(k.leases, lease)
	k.inFlight++
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		k.inFlight--
		k.mu.Unlock()
	}()
	select {
	case k.calls <- struct{}{}:
	default:
	}
	if k.hang {
		<-ctx.Done()
		return time.Time{}, ctx.Err()
	}
	return time.Now().Add(lease), nil
}

func (k *leaseKeeper) record() (leases []time.Duration, inFlight int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]time.Duration(nil), k.leases...), k.inFlight
}

// waitCalls waits until k has been called n more times.
func (k *leaseKeeper) waitCalls(t *testing.T, n int, limit time.Duration) {
	t.Helper()
	deadline := time.After(limit)
	for range n {
		select {
		case <-k.calls:
		case <-deadline:
			got, _ := k.record()
			t.Fatalf("agent %s renewed %d times in all; not %d more within %v", k.ep, len(got), n, limit)
		}
	}
}

// TestFaultLeaseRenewer: every agent is renewed at once and then every
// interval, for faultLeaseRenewals intervals; an agent that hangs holds up
// no other and its calls end at the interval; after Stop nothing is in flight and nothing more is sent.
func TestFaultLeaseRenewer(t *testing.T) {
	const every = 50 * time.Millisecond
	good, other := newLeaseKeeper("good:1", false), newLeaseKeeper("other:1", false)
	hung := newLeaseKeeper("hung:1", true)
	var r faultLeaseRenewer
	r.Stop() // before Start: nothing to do
	start := time.Now()
	r.Start(context.Background(), []client.Agent{good, hung, other}, every)
	// Each hung call lasts one interval, and the good agents' renewals
	// go on at their own pace meanwhile.
	good.waitCalls(t, 6, 5*time.Second)
	other.waitCalls(t, 6, 5*time.Second)
	if took := time.Since(start); took < 5*every {
		t.Errorf("6 renewals in %v, want one every %v", took, every)
	}
	hung.waitCalls(t, 2, 5*time.Second)
	r.Stop()
	for _, k := range []*leaseKeeper{good, other, hung} {
		leases, inFlight := k.record()
		if inFlight != 0 {
			t.Errorf("agent %s: %d renewals in flight after Stop", k.ep, inFlight)
		}
		for _, l := range leases {
			if l != faultLeaseRenewals*every {
				t.Errorf("agent %s renewed for %v, want %d × %v", k.ep, l, faultLeaseRenewals, every)
			}
		}
	}
	before, _ := good.record()
	r.Stop() // twice: nothing to do
	// After Stop returns every renewal goroutine has ended, so the count
	// is final; a restart renews again at once.
	r.Start(context.Background(), []client.Agent{good}, every)
	good.waitCalls(t, 1, 5*time.Second)
	r.Stop()
	if after, _ := good.record(); len(after) != len(before)+1 {
		t.Errorf("renewals %d before the restart, %d after one renewal: calls outside Start..Stop", len(before), len(after))
	}
}

// TestFaultLeaseRenewerEndsWithItsContext: the renewals stop when the
// context given to Start ends, and Stop then returns at once.
func TestFaultLeaseRenewerEndsWithItsContext(t *testing.T) {
	k := newLeaseKeeper("ctx:1", false)
	ctx, cancel := context.WithCancel(context.Background())
	var r faultLeaseRenewer
	r.Start(ctx, []client.Agent{k}, time.Hour)
	k.waitCalls(t, 1, 5*time.Second)
	cancel()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("renewer still running 5 s after its context ended")
	}
	r.Stop()
	if leases, _ := k.record(); len(leases) != 1 || leases[0] != min(faultLeaseRenewals*time.Hour, wire.MaxFaultLease) {
		t.Errorf("renewals %v, want one of %v (bounded by wire.MaxFaultLease)", leases, min(faultLeaseRenewals*time.Hour, wire.MaxFaultLease))
	}
}

// TestFaultLeaseRenewerBounds: the lease asked for stays within what the
// agents accept, and no interval means the default one.
func TestFaultLeaseRenewerBounds(t *testing.T) {
	for _, tc := range []struct {
		every time.Duration
		want  time.Duration
	}{
		{time.Millisecond, wire.MinFaultLease},
		{0, faultLeaseRenewals * defaultFaultLeaseEvery},
		{-time.Second, faultLeaseRenewals * defaultFaultLeaseEvery},
		{10 * time.Hour, wire.MaxFaultLease},
	} {
		k := newLeaseKeeper("bounds:1", false)
		var r faultLeaseRenewer
		r.Start(context.Background(), []client.Agent{k}, tc.every)
		k.waitCalls(t, 1, 5*time.Second)
		r.Stop()
		if leases, _ := k.record(); len(leases) == 0 || leases[0] != tc.want {
			t.Errorf("every %v: renewed for %v, want %v", tc.every, leases, tc.want)
		}
	}
}
