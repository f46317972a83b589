package stresser

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/time/rate"
)

// The runners: stressers with a property of their own to keep, as
// upstream's *_RUNNER stressers had (election, lock racer, lease renewer,
// watcher). Each runs a few workers through etcd's client recipes, paced
// by a limiter of its own (they are not the load; the key stresser is),
// treats a failed request as the fault's doing, and records a violation
// only when etcd broke the property outright. Check fails on any
// violation since the last Check.

// Names of the runners (Config.Names).
const (
	NameElectionRunner = "election-runner"
	NameLockRunner     = "lock-racer-runner"
	NameLeaseRunner    = "lease-runner"
	NameWatchRunner    = "watch-runner"
)

const (
	runnerWorkers = 3
	// runnerQPS paces each runner's loop over all its workers: enough to
	// meet every fault, little next to the load.
	runnerQPS = 50
	// runnerSessionTTL is the TTL, in seconds, of the sessions behind
	// elections and locks: longer than a case's fault, so that a
	// session rarely expires under one (an expired session may lose
	// what it held, which is no violation).
	runnerSessionTTL = 10
	// maxViolations bounds the violations kept for the report.
	maxViolations = 5
)

func newRunnerLimiter() *rate.Limiter { return rate.NewLimiter(runnerQPS, 1) }

// runWorkers runs worker 0..runnerWorkers-1, each in its own goroutine,
// and returns when all have.
func runWorkers(worker func(w int)) {
	var wg sync.WaitGroup
	for w := range runnerWorkers {
		wg.Go(func() { worker(w) })
	}
	wg.Wait()
}

// inSessions calls use with one concurrency.Session after another, each
// closed once use returns, until ctx ends; a session that cannot be made
// is retried at lim's pace.
func inSessions(ctx context.Context, cli *clientv3.Client, lim *rate.Limiter, use func(s *concurrency.Session)) {
	for ctx.Err() == nil {
		// Not ctx itself: Close must still revoke the session's lease
		// after the interval ends, or its keys block the next
		// interval's workers for a whole TTL.
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(runnerSessionTTL), concurrency.WithContext(context.WithoutCancel(ctx)))
		if err != nil {
			if lim.Wait(ctx) != nil {
				return
			}
			continue
		}
		use(s)
		s.Close()
	}
}

// violations records the times a runner saw its property broken.
type violations struct {
	mu   sync.Mutex
	n    int
	msgs []string
}

func (v *violations) add(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.n++
	if len(v.msgs) < maxViolations {
		v.msgs = append(v.msgs, fmt.Sprintf(format, args...))
	}
	plog.Errorf("violation: "+format, args...)
}

// take returns the violations since the last take as one error, nil if
// none, and forgets them.
func (v *violations) take() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.n == 0 {
		return nil
	}
	err := fmt.Errorf("%d violation(s): %s", v.n, strings.Join(v.msgs, "; "))
	if v.n > len(v.msgs) {
		err = fmt.Errorf("%w; (%d more)", err, v.n-len(v.msgs))
	}
	v.n, v.msgs = 0, nil
	return err
}

// ended reports whether ctx is done: a request cut off by the end of the
// interval proves nothing.
func ended(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, context.Canceled)
}

// reqCtx bounds one request of a runner.
func reqCtx(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d)
}

// count returns the violations not yet taken.
func (v *violations) count() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.n
}
