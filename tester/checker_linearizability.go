package tester

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/etcd-functional/functional/checker/linearizability"
	"github.com/etcd-functional/functional/stresser"
)

// The linearizability check judges what the history stresser's clients
// saw during the case (values, revisions, errors; writes of unknown
// outcome may have applied or not) against a model of etcd's key-value
// store with one global revision: a stale read, a lost acknowledged write
// or a revision going back fails it, though every member agrees. On a
// verdict other than pass, porcupine's visualization and the history go
// beside the case. It runs for every case whose load records a history
// (the "history" stresser, on by default).

// newLinearizabilityCheck is the "linearizability" checker.
func newLinearizabilityCheck(cc *CheckContext) Checker {
	if cc.Stresser == nil || !slices.Contains(cc.Config.Stresser.Names, stresser.NameHistory) {
		return nil
	}
	return &linearizabilityCheck{cc}
}

type linearizabilityCheck struct{ cc *CheckContext }

func (l *linearizabilityCheck) Check(ctx context.Context) error {
	cc := l.cc
	h, err := cc.Stresser.History()
	if err != nil {
		return fmt.Errorf("%w: take the history: %v", ErrCheckUnknown, err)
	}
	timeout := cc.Config.LinearizabilityTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(0, time.Until(d)))
	}
	res := linearizability.Check(h, timeout)
	cc.Figure("ops", float64(res.Ops))
	cc.Figure("dropped", float64(h.Dropped))
	cc.Figure("check_seconds", res.Duration.Seconds())
	if res.Verdict == linearizability.Pass {
		return nil
	}
	if dir, err := cc.MkDir(); err == nil {
		page, js, err := res.Save(dir, "linearizability")
		if err != nil {
			plog.Warningf("saving the history: %v", err)
		}
		for _, f := range []string{page, js} {
			if f != "" {
				cc.File(f)
			}
		}
	}
	if res.Verdict == linearizability.Unknown {
		return fmt.Errorf("%w: %s", ErrCheckUnknown, res.Error)
	}
	return fmt.Errorf("not linearizable (%d operations): %s", res.Ops, res.Error)
}
