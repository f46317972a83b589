package stresser

import (
	"context"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/time/rate"
)

// lockRunner races workers for one concurrency.Mutex: two holders at once
// is a violation. Each holder holds the lock over a read and a tick of the
// runner's pace, so that a second holder would have time to show up.
type lockRunner struct {
	timeout  time.Duration
	lim      *rate.Limiter
	v        violations
	holders  atomic.Int32
	acquired atomic.Int64
	// skipLock makes the workers enter without the lock: the broken
	// racer of the tests.
	skipLock bool
}

func newLockRunner(cfg Config) *lockRunner {
	return &lockRunner{timeout: cfg.RequestTimeout, lim: newRunnerLimiter()}
}

const lockPrefix = "/runner/lock"

func (l *lockRunner) name() string        { return NameLockRunner }
func (l *lockRunner) modifiedKeys() int64 { return 0 }
func (l *lockRunner) check(context.Context, *conns) error {
	return l.v.take()
}

func (l *lockRunner) run(ctx context.Context, c *conns, _ uint64) {
	runWorkers(func(w int) {
		inSessions(ctx, c.all, l.lim, func(s *concurrency.Session) { l.race(ctx, c.all, s, w) })
	})
}

// race takes the lock over and over in one session, until the session
// ends or ctx does.
func (l *lockRunner) race(ctx context.Context, cli *clientv3.Client, s *concurrency.Session, w int) {
	m := concurrency.NewMutex(s, lockPrefix)
	for ctx.Err() == nil {
		select {
		case <-s.Done():
			return
		default:
		}
		if l.lim.Wait(ctx) != nil {
			return
		}
		if !l.skipLock {
			lctx, cancel := reqCtx(ctx, l.timeout)
			err := m.Lock(lctx)
			cancel()
			if err != nil {
				continue
			}
		}
		l.acquired.Add(1)
		if n := l.holders.Add(1); n > 1 && !sessionEnded(s) {
			l.v.add("worker %d took the lock %s while %d other(s) held it", w, lockPrefix, n-1)
		}
		// Hold the lock over a read and one tick of the pace, so that
		// the other workers' attempts fall while it is held.
		gctx, cancel := reqCtx(ctx, l.timeout)
		cli.Get(gctx, lockPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
		l.lim.Wait(ctx)
		l.holders.Add(-1)
		if !l.skipLock {
			uctx, cancel := reqCtx(context.WithoutCancel(ctx), l.timeout)
			m.Unlock(uctx) // a failed unlock ends with the session
			cancel()
		}
	}
}

// sessionEnded: a session whose lease was lost may have lost its lock to
// another holder; that is the recipe's limit, not etcd's fault.
func sessionEnded(s *concurrency.Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}
