package tester

import (
	"context"
	"errors"
	"fmt"

	"github.com/etcd-functional/functional/stresser"
)

// newStresserCheck is the "stresser" checker: the load's own checks (its
// leases are where it left them), for a case that ran with load.
func newStresserCheck(cc *CheckContext) Checker {
	if cc.Stresser == nil || cc.Result.Stress == nil {
		return nil
	}
	return cc.Stresser
}

// newStressBudgetCheck is the "stress budget" checker: the case judges the
// load of its run, if it says how (see statsChecker).
func newStressBudgetCheck(cc *CheckContext) Checker {
	if cc.Result.Stress == nil {
		return nil
	}
	return caseStressChecker(cc.Case, *cc.Result.Stress)
}

// stressBudget fails a quiet round whose load saw too many failures, or any
// failure no fault explains. The budget is a fraction of the requests the
// load actually sent (a load that sent little cannot hide failures behind
// the rate it was asked for), and at least some requests must succeed: a
// load that got nothing through did not find the cluster healthy.
type stressBudget struct {
	stats    stresser.Stats
	qps      int // the rate asked for, for the message
	fraction float64
}

func (b stressBudget) Check(context.Context) error {
	var errs []error
	st := b.stats
	if st.Unexpected > 0 {
		errs = append(errs, fmt.Errorf("%d unexpected stress errors with no fault injected (errors by class: %v)", st.Unexpected, st.Errors))
	}
	sent := st.Success + st.Failure
	switch {
	case sent == 0:
		errs = append(errs, fmt.Errorf("no stress request finished in %.1fs (asked %d req/s): nothing shows the cluster served the load", st.Duration.Seconds(), b.qps))
	case st.Success == 0:
		errs = append(errs, fmt.Errorf("none of %d stress requests succeeded with no fault injected; errors by class: %v", sent, st.Errors))
	case float64(st.Failure) > b.fraction*float64(sent):
		errs = append(errs, fmt.Errorf("%d of %d stress requests failed with no fault injected (%.1f%%); allowed %.0f%% of those sent, so at least %.0f%% must succeed; errors by class: %v",
			st.Failure, sent, 100*float64(st.Failure)/float64(sent), b.fraction*100, (1-b.fraction)*100, st.Errors))
	}
	return errors.Join(errs...)
}
