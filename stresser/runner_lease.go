package stresser

import (
	"context"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"
)

// leaseRunner keeps leases alive with the client's KeepAlive and asks
// etcd for their TTL: a lease must not expire within its TTL of the last
// keep-alive etcd acknowledged. A lease whose keep-alives stop getting
// through may expire later, which is no violation: the worker then grants
// a new one.
type leaseRunner struct {
	timeout time.Duration
	ttl     int64 // seconds
	lim     *rate.Limiter
	v       violations
	checked atomic.Int64
	// skipRenew makes workers believe they renewed without sending a
	// keep-alive: the broken renewer of the tests.
	skipRenew bool
}

// leaseRunnerTTL is the TTL of the runner's leases, in seconds: a few
// election timeouts, so that a fault's lost keep-alives can expire one.
const leaseRunnerTTL = 5

// leaseMargin absorbs the time between etcd's acknowledging a keep-alive
// and the worker's noting it, and between its TTL request and etcd's
// answer.
const leaseMargin = time.Second

func newLeaseRunner(cfg Config) *leaseRunner {
	return &leaseRunner{timeout: cfg.RequestTimeout, ttl: leaseRunnerTTL, lim: newRunnerLimiter()}
}

func (l *leaseRunner) name() string                        { return NameLeaseRunner }
func (l *leaseRunner) modifiedKeys() int64                 { return 0 }
func (l *leaseRunner) check(context.Context, *conns) error { return l.v.take() }

func (l *leaseRunner) run(ctx context.Context, c *conns, _ uint64) {
	runWorkers(func(w int) { l.worker(ctx, c.all, w) })
}

func (l *leaseRunner) worker(ctx context.Context, cli *clientv3.Client, w int) {
	for ctx.Err() == nil {
		if l.lim.Wait(ctx) != nil {
			return
		}
		gctx, cancel := reqCtx(ctx, l.timeout)
		g, err := cli.Grant(gctx, l.ttl)
		cancel()
		if err != nil {
			continue
		}
		l.keep(ctx, cli, w, g.ID, time.Now())
		rctx, cancel := reqCtx(context.WithoutCancel(ctx), l.timeout)
		cli.Revoke(rctx, g.ID)
		cancel()
	}
}

// keep renews lease id until ctx ends or the client gives it up, asking
// its TTL in between. granted is when the grant was acknowledged.
func (l *leaseRunner) keep(ctx context.Context, cli *clientv3.Client, w int, id clientv3.LeaseID, granted time.Time) {
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	var acks <-chan *clientv3.LeaseKeepAliveResponse
	if !l.skipRenew {
		var err error
		if acks, err = cli.KeepAlive(kctx, id); err != nil {
			return
		}
	}
	var last atomic.Int64 // unix nanoseconds of the last acknowledged keep-alive
	last.Store(granted.UnixNano())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if acks == nil {
			// The broken renewer: no keep-alive, and it believes
			// every tick renewed.
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-kctx.Done():
					return
				case <-t.C:
					last.Store(time.Now().UnixNano())
				}
			}
		}
		for range acks {
			last.Store(time.Now().UnixNano())
		}
	}()
	defer func() { stop(); <-done }()
	for {
		select {
		case <-done:
			return // the client gave the lease up: no longer kept
		default:
		}
		if l.lim.Wait(kctx) != nil {
			return
		}
		sent := time.Now()
		tctx, cancel := reqCtx(kctx, l.timeout)
		resp, err := cli.TimeToLive(tctx, id)
		cancel()
		if err != nil {
			continue
		}
		l.checked.Add(1)
		renewed := time.Unix(0, last.Load())
		if resp.TTL <= 0 && sent.Before(renewed.Add(time.Duration(l.ttl)*time.Second-leaseMargin)) {
			select {
			case <-done: // given up meanwhile: not kept
				return
			default:
			}
			l.v.add("worker %d: lease %x expired %v after its last acknowledged keep-alive; its TTL is %ds", w, id, sent.Sub(renewed).Round(time.Millisecond), l.ttl)
			return
		}
	}
}
