package tester

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/etcd-functional/functional/htmlreport"
	"github.com/etcd-functional/functional/stresser"
)

// A case runs as named phases, in this order. Each returns a *PhaseError
// saying which phase failed and why; the case's error is built once, from
// those and from the salvage of a failed case.
const (
	PhasePrepare     = "prepare"      // healthy cluster, load started and warm
	PhaseInject      = "inject"       // the case's fault on its targets
	PhaseHold        = "hold"         // the fault held for -case-delay
	PhaseRecover     = "recover"      // the fault taken off
	PhaseWaitHealthy = "wait healthy" // every member healthy (a linearizable read) under one leader; a write taken
	PhaseCheck       = "check"        // the registered checkers
	PhaseMaintain    = "maintain"     // compaction after a case, defragmentation after a round
)

// PhaseError is a failed phase of a case (or of a round's maintenance).
type PhaseError struct {
	Phase string
	Err   error
}

func (e *PhaseError) Error() string { return e.Phase + ": " + e.Err.Error() }
func (e *PhaseError) Unwrap() error { return e.Err }

// phaseErr wraps a non-nil err as phase's failure.
func phaseErr(phase string, err error) error {
	if err == nil {
		return nil
	}
	return &PhaseError{phase, err}
}

// caseRun is one case of one round being played.
type caseRun struct {
	t        *tester
	cs       Case
	round    int
	index    int
	lg       caseLog
	res      CaseResult
	stressed bool               // the load ran during the case
	watchers *stresser.Watchers // the case's recorded watches; nil if none
	// writes follows the probe writes from injection to the first write
	// after recovery; stopWrites ends them (nil before injection).
	writes     *writeFigures
	stopWrites func()
	injected   time.Time // when injection ended
}

// runCase plays one case. It always recovers what it injected; a failed
// case archives every member under the case's label (the caller then
// bootstraps anew). When ctx ends, it returns at once: finish heals.
func (t *tester) runCase(ctx context.Context, round, index int, cs Case) CaseResult {
	name := cs.Name()
	r := &caseRun{t: t, cs: cs, round: round, index: index,
		lg:  caseLog(fmt.Sprintf("[round#%d case#%d %s]", round, index, name)),
		res: CaseResult{Case: name, Index: index, Targets: []string{}},
	}
	t.metrics.setCase(round, index, name)
	t.cluster.setRand(caseRand(t.s.Seed, round, index))
	ctx = withCaseRound(ctx, round) // EXTERNAL passes it to the user's program

	err := r.play(ctx)
	if r.watchers != nil {
		r.watchers.Collect() // stops them, if the check did not get to
	}
	r.res.Passed = err == nil && ctx.Err() == nil
	r.logVerdict()
	if !r.res.Passed && ctx.Err() == nil {
		err = errors.Join(err, r.etcdSays(ctx), r.salvage(ctx))
	}
	if err != nil {
		r.res.Error = err.Error()
	}
	return r.res
}

// play runs the phases. Once injection has begun, recovery runs whatever
// failed before it, unless ctx has ended (finish heals then).
func (r *caseRun) play(ctx context.Context) error {
	defer r.pauseStress()
	defer r.endWrites()
	if err := r.log(r.prepare(ctx)); err != nil {
		return err
	}
	err := r.log(r.inject(ctx))
	if err == nil {
		err = r.log(r.hold(ctx))
	}
	if ctx.Err() != nil {
		return err
	}
	if err := errors.Join(err, r.log(r.recover(ctx))); err != nil {
		return err
	}
	r.pauseStress()
	if err := r.log(r.waitHealthy(ctx)); err != nil {
		return err
	}
	if err := r.log(r.check(ctx)); err != nil {
		return err
	}
	return r.log(r.maintain(ctx))
}

func (r *caseRun) log(err error) error {
	if err != nil {
		r.lg.Errorf("%v", err)
	}
	return err
}

// prepare waits for a healthy cluster and starts the load. No fault is
// on: a short -recovery-timeout does not bound this wait.
func (r *caseRun) prepare(ctx context.Context) error {
	t := r.t
	if err := t.cluster.WaitHealthy(ctx, t.s.bootstrapTimeout()); err != nil {
		return phaseErr(PhasePrepare, fmt.Errorf("before the fault: %w", err))
	}
	if !caseStress(r.cs) {
		return nil
	}
	if err := t.startStress(ctx); err != nil {
		return phaseErr(PhasePrepare, fmt.Errorf("start stress: %w", err))
	}
	r.stressed = true
	w, err := t.startWatchers(ctx)
	if err != nil {
		return phaseErr(PhasePrepare, fmt.Errorf("start watchers: %w", err))
	}
	r.watchers = w
	if err := sleep(ctx, t.s.StressWarmup); err != nil {
		return phaseErr(PhasePrepare, fmt.Errorf("stress warm-up: %w", err))
	}
	return nil
}

func (r *caseRun) inject(ctx context.Context) error {
	c := r.t.cluster
	r.lg.Infof("inject: %s", r.cs.Describe())
	r.writes, r.stopWrites = c.startWriteFigures(ctx)
	r.res.InjectTime = time.Now()
	err := r.cs.Inject(ctx, c)
	r.injected = time.Now()
	r.res.Targets = append(r.res.Targets, c.Targets()...)
	r.res.Faults = c.takeDrawn()
	r.res.LoadSeed = r.t.loadSeed()
	if r.t.s.replay != nil {
		notes, untaken := c.replayNotes()
		if untaken {
			notes = append(notes, "this case picks its own targets: they were drawn from the seed, not taken from the record")
		}
		r.res.ReplayNotes = notes
	}
	if err != nil {
		return phaseErr(PhaseInject, err)
	}
	r.lg.Infof("injected on %s; holding %v", targetList(r.res.Targets), r.t.s.CaseDelay)
	return nil
}

func (r *caseRun) hold(ctx context.Context) error {
	return phaseErr(PhaseHold, caseHold(ctx, r.cs, r.t.cluster, r.t.s.CaseDelay))
}

func (r *caseRun) recover(ctx context.Context) error {
	if !r.injected.IsZero() {
		r.res.HoldSeconds = time.Since(r.injected).Seconds()
	}
	err := r.cs.Recover(ctx, r.t.cluster)
	r.res.RecoverTime = time.Now()
	if r.writes != nil {
		r.writes.setMark(r.res.RecoverTime)
	}
	return phaseErr(PhaseRecover, err)
}

// endWrites stops the probe writes, once, and keeps the unavailability
// they measured.
func (r *caseRun) endWrites() {
	if r.stopWrites == nil {
		return
	}
	r.stopWrites()
	r.stopWrites = nil
	if d, ok := r.writes.unavailability(r.res.InjectTime); ok {
		s := d.Seconds()
		r.res.UnavailabilitySeconds = &s
	}
}

// pauseStress pauses the load, once, and keeps its figures.
func (r *caseRun) pauseStress() {
	if r.stressed && r.res.Stress == nil {
		st := r.t.stress.Pause()
		r.res.Stress = &st
	}
}

// waitHealthy waits for every member to be healthy under one leader, and
// for the first write after recovery, both measured at the figures'
// resolution (see figures.go). The probe writes, which measured the
// unavailability since injection, end at that first write: from then on
// the cluster gets no write from the tester, so that health (a
// linearizable read) is not bought with one. A cluster still unhealthy
// after half the recovery timeout without writes is written to (nudged);
// members that become healthy only then are recorded as a finding.
func (r *caseRun) waitHealthy(ctx context.Context) error {
	c, timeout := r.t.cluster, r.t.s.RecoveryTimeout
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var wg sync.WaitGroup
	var written time.Time
	var writeErr error
	quiet := make(chan struct{})
	wg.Go(func() {
		defer close(quiet)
		written, writeErr = r.writes.waitFirstWrite(wctx)
		r.endWrites()
	})
	var n nudge
	look := func(ctx context.Context) map[string]string {
		ctx, cancel := context.WithTimeout(ctx, writeProbeTimeout)
		defer cancel()
		return c.healthOnce(ctx)
	}
	nctx, stopNudges := context.WithCancel(wctx)
	defer stopNudges()
	wg.Go(func() { n = nudgeIfStuck(nctx, quiet, nudgeAfter(timeout), look, c.nudgeWrite) })
	healthy, err := c.waitHealthyFine(ctx, timeout)
	stopNudges()
	if err != nil {
		cancel() // no point waiting for a write to a cluster declared broken
	}
	wg.Wait() // for the first write after recovery too, if health came first
	if err == nil {
		r.res.HealthyTime = healthy
		r.res.RecoverySeconds = max(healthy.Sub(r.res.RecoverTime), 0).Seconds()
		if f := n.finding(healthy); f != nil {
			r.res.Findings = append(r.res.Findings, *f)
			r.lg.Infof("finding: %s %s: %s", strings.Join(f.Members, ","), f.What, f.Detail)
		}
	}
	if err != nil {
		if !n.at.IsZero() {
			err = fmt.Errorf("%w; the tester wrote to it %d times from %.3fs after its last write, to no avail", err, n.writes, n.at.Sub(n.quiet).Seconds())
		}
		return phaseErr(PhaseWaitHealthy, fmt.Errorf("after recovery (timeout %v): %w", timeout, err))
	}
	if writeErr != nil {
		return phaseErr(PhaseWaitHealthy, fmt.Errorf("healthy, but no put succeeded within %v: %w", timeout, writeErr))
	}
	r.res.FirstWriteSeconds = max(written.Sub(r.res.RecoverTime), 0).Seconds()
	unavail := "-"
	if u := r.res.UnavailabilitySeconds; u != nil {
		unavail = fmt.Sprintf("%.3fs", *u)
	}
	r.lg.Infof("unavailable %s after injection; healthy %.3fs and first write %.3fs after recovery", unavail, r.res.RecoverySeconds, r.res.FirstWriteSeconds)
	return nil
}

// check runs the registered checkers, bounded: the hash checker retries,
// the lease checker waits for short leases to expire.
func (r *caseRun) check(ctx context.Context) error {
	t := r.t
	cc := CheckContext{
		Cluster: t.cluster,
		Config:  t.s.Config,
		Case:    r.cs,
		Result:  &r.res,
		Dir:     caseDir(t.s.ReportDir, r.round, r.index, r.cs.Name()),
	}
	if r.stressed {
		cc.Stresser = t.stress
	}
	cc.Watchers, cc.tombstone = r.watchers, t.compaction.tombstone
	cctx, cancel := context.WithTimeout(ctx, max(2*t.s.RecoveryTimeout, time.Minute))
	defer cancel()
	results, err := runCheckers(cctx, buildCheckers(cc), t.s.AllowUnknown)
	r.res.Checks = results
	return phaseErr(PhaseCheck, err)
}

// maintain compacts the cluster after a passed case, so that the load's
// reads of the past meet compacted revisions in every round, and verifies
// the compaction. The first case of a round compacts on purpose at a
// delete (see Cluster.CompactAtTombstone); the others keep compactKeep
// revisions.
func (r *caseRun) maintain(ctx context.Context) error {
	t := r.t
	var rev int64
	var ts *stresser.Tombstone
	var err error
	if r.index == 1 {
		ts, err = t.cluster.CompactAtTombstone(ctx)
		if ts != nil {
			rev = ts.Revision
		}
	} else {
		rev, err = t.cluster.Compact(ctx, compactKeep)
	}
	if rev > t.compaction.revision {
		t.compaction = compaction{revision: rev, tombstone: ts}
	}
	r.res.CompactRevision = t.compaction.revision
	if err != nil {
		return phaseErr(PhaseMaintain, err)
	}
	return nil
}

func (r *caseRun) logVerdict() {
	res := &r.res
	stressLine := "no stress"
	if res.Stress != nil {
		stressLine = fmt.Sprintf("stress %.0f req/s %d errors", res.Stress.QPS, res.Stress.Failure)
	}
	verdict := "PASS"
	if !res.Passed {
		verdict = "FAIL"
	}
	recovery := fmt.Sprintf("recovery %.2fs", res.RecoverySeconds)
	if res.HealthyTime.IsZero() {
		recovery = "not recovered"
	}
	t := r.t
	r.lg.Infof("%s %s (targets %s) %s; %s", verdict, recovery, targetList(res.Targets), stressLine,
		htmlreport.Progress(r.index, len(t.cases), r.round, t.s.Limit, time.Since(t.report.Started)))
}

// salvage heals what is left of a failed case's faults and archives every
// member for the post-mortem.
func (r *caseRun) salvage(ctx context.Context) error {
	c := r.t.cluster
	hctx, cancel := context.WithTimeout(ctx, healTimeout)
	defer cancel()
	var errs []error
	if err := c.Heal(hctx); err != nil {
		r.lg.Errorf("healing what is left: %v", err)
		errs = append(errs, fmt.Errorf("heal: %w", err))
	}
	dirs, err := c.Archive(hctx, caseLabel(r.round, r.index, r.cs.Name()))
	r.res.Archives = dirs
	if err != nil {
		r.lg.Errorf("archive: %v", err)
		errs = append(errs, fmt.Errorf("archive: %w", err))
	}
	r.lg.Infof("archived: %v", dirs)
	return errors.Join(errs...)
}

// caseLog prefixes every line of a case with [round#N case#M NAME].
type caseLog string

func (l caseLog) Infof(format string, args ...any) {
	plog.Infof("%s %s", string(l), fmt.Sprintf(format, args...))
}
func (l caseLog) Errorf(format string, args ...any) {
	plog.Errorf("%s %s", string(l), fmt.Sprintf(format, args...))
}

func targetList(ts []string) string {
	if len(ts) == 0 {
		return "none"
	}
	return strings.Join(ts, ",")
}

// etcdSays is what the members' own logs say of a failed case: a case that
// failed before its checks (a member that never came back, say) would
// otherwise name only the symptom, while etcd may have said why ("found
// data inconsistency with peers" from its initial corruption check).
// Lines the check phase already read are not read again.
func (r *caseRun) etcdSays(ctx context.Context) error {
	err := logCheck{&CheckContext{Cluster: r.t.cluster}}.Check(ctx)
	if err == nil || errors.Is(err, ErrCheckUnknown) {
		return nil
	}
	return fmt.Errorf("etcd's logs: %w", err)
}
