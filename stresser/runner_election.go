package stresser

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/time/rate"
)

// electionRunner has workers campaign in one concurrency.Election: once
// elected, the leader the election shows must be the elected worker, and
// no two workers may be elected at once. A violation is either seen while
// the worker's session still lives.
type electionRunner struct {
	timeout time.Duration
	lim     *rate.Limiter
	v       violations
	leaders atomic.Int32
	elected atomic.Int64
	// skipCampaign makes workers act as leader without campaigning:
	// the broken runner of the tests.
	skipCampaign bool
}

func newElectionRunner(cfg Config) *electionRunner {
	return &electionRunner{timeout: cfg.RequestTimeout, lim: newRunnerLimiter()}
}

const electionPrefix = "/runner/election"

func (e *electionRunner) name() string                        { return NameElectionRunner }
func (e *electionRunner) modifiedKeys() int64                 { return 0 }
func (e *electionRunner) check(context.Context, *conns) error { return e.v.take() }

func (e *electionRunner) run(ctx context.Context, c *conns, interval uint64) {
	runWorkers(func(w int) {
		me := fmt.Sprintf("w%d-%d", w, interval)
		inSessions(ctx, c.all, e.lim, func(s *concurrency.Session) { e.campaign(ctx, s, me) })
	})
}

func (e *electionRunner) campaign(ctx context.Context, s *concurrency.Session, me string) {
	el := concurrency.NewElection(s, electionPrefix)
	for ctx.Err() == nil && !sessionEnded(s) {
		if e.lim.Wait(ctx) != nil {
			return
		}
		if !e.skipCampaign {
			cctx, cancel := reqCtx(ctx, e.timeout)
			err := el.Campaign(cctx, me)
			cancel()
			if err != nil {
				continue
			}
		}
		e.elected.Add(1)
		if n := e.leaders.Add(1); n > 1 && !sessionEnded(s) {
			e.v.add("%s elected in %s while %d other(s) were", me, electionPrefix, n-1)
		}
		lctx, cancel := reqCtx(ctx, e.timeout)
		resp, err := el.Leader(lctx)
		cancel()
		switch {
		case ended(ctx, err) || sessionEnded(s):
		case errors.Is(err, concurrency.ErrElectionNoLeader):
			e.v.add("%s elected, but the election shows no leader", me)
		case err != nil:
			// The fault's doing: nothing observed.
		case string(resp.Kvs[0].Value) != me:
			e.v.add("%s elected, but the election shows %q as leader", me, resp.Kvs[0].Value)
		}
		e.leaders.Add(-1)
		if !e.skipCampaign {
			rctx, cancel := reqCtx(context.WithoutCancel(ctx), e.timeout)
			el.Resign(rctx) // a failed resign ends with the session
			cancel()
		}
	}
}
