package tester

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// What follows the cases: the round's maintenance, a new cluster after a
// failed case, and the end of the run.

// maintain defragments after every DefragInterval rounds and after the
// last round, so that a run of any length defragments at least once. (Each
// passed case compacts; see caseRun.maintain.)
func (t *tester) maintain(ctx context.Context, rr *RoundResult) error {
	c := t.cluster
	rr.CompactRevision = t.compaction.revision
	last := t.s.Limit >= 0 && rr.Round == t.s.Limit
	if t.s.DefragInterval > 0 && (rr.Round%t.s.DefragInterval == 0 || last) {
		// No fault was just recovered: a short -recovery-timeout does
		// not bound this wait (nor the one before a fault).
		if err := c.WaitHealthy(ctx, t.s.bootstrapTimeout()); err != nil {
			return fmt.Errorf("before defragmentation: %w", err)
		}
		if err := c.Defragment(ctx); err != nil {
			return err
		}
		rr.Defragmented = true
		plog.Infof("[round#%d] defragmented every member", rr.Round)
	}
	return nil
}

// rebootstrap starts a new cluster after a failed case archived the old
// one, with a new load.
func (t *tester) rebootstrap(ctx context.Context) error {
	if t.stress != nil {
		t.stress.Close()
	}
	// The failed case archived what it could; terminate makes sure no
	// member of the old cluster runs on.
	if err := t.cluster.Terminate(ctx); err != nil {
		return fmt.Errorf("re-bootstrap: %w", err)
	}
	if err := t.cluster.Bootstrap(ctx); err != nil {
		return fmt.Errorf("re-bootstrap: %w", err)
	}
	t.compaction = compaction{}
	return t.newStress()
}

// finish ends the run: it stops the load; after an interrupt it heals what
// is still injected and leaves the cluster up, else it terminates the
// cluster (failed cases' data was archived). It writes the final report.
func (t *tester) finish(ctx context.Context, runErr error, failed bool) error {
	interrupted := errors.Is(runErr, ErrInterrupted) || ctx.Err() != nil
	if t.stress != nil {
		t.stress.Close()
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), healTimeout)
	defer cancel()
	if fs := t.cluster.Faults(); len(fs) > 0 {
		plog.Noticef("healing the faults still injected: %s", strings.Join(fs, "; "))
	}
	if err := t.cluster.Heal(hctx); err != nil {
		plog.Errorf("healing the injected faults: %v", err)
		if runErr == nil {
			runErr = fmt.Errorf("%w: %v", ErrFailed, err)
		}
	}
	t.report.Unhealed = t.cluster.Faults()
	t.report.cutRound()
	if !interrupted {
		if err := t.cluster.Terminate(hctx); err != nil {
			plog.Warningf("terminating the cluster at the end: %v", err)
		}
	}
	if interrupted && !errors.Is(runErr, ErrInterrupted) {
		runErr = fmt.Errorf("%w: %v", ErrInterrupted, runErr)
	}
	if runErr == nil && failed {
		runErr = fmt.Errorf("%w: %s", ErrFailed, t.report.failures())
	}
	t.report.Interrupted = interrupted
	t.report.Passed = runErr == nil
	if runErr != nil {
		t.report.Error = runErr.Error()
	}
	t.report.Finished = time.Now()
	t.save()
	var sum strings.Builder
	t.report.summary(&sum)
	fmt.Fprint(t.out, sum.String())
	return runErr
}

func (t *tester) save() {
	if err := t.report.write(t.s.ReportDir); err != nil {
		plog.Errorf("%v", err)
	}
}
