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
// failure no fault explains.
type stressBudget struct {
	stats    stresser.Stats
	qps      int
	fraction float64
}

func (b stressBudget) Check(context.Context) error {
	var errs []error
	if b.stats.Unexpected > 0 {
		errs = append(errs, fmt.Errorf("%d unexpected stress errors with no fault injected (errors by class: %v)", b.stats.Unexpected, b.stats.Errors))
	}
	allowed := b.fraction * float64(b.qps) * b.stats.Duration.Seconds()
	if float64(b.stats.Failure) > allowed {
		errs = append(errs, fmt.Errorf("%d stress failures with no fault injected; allowed %.0f (%.0f%% of %d req/s × %.1fs); errors by class: %v",
			b.stats.Failure, allowed, b.fraction*100, b.qps, b.stats.Duration.Seconds(), b.stats.Errors))
	}
	return errors.Join(errs...)
}
