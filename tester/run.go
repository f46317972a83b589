package tester

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/coreos/pkg/capnslog"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/stresser"
)

var plog = capnslog.NewPackageLogger("github.com/etcd-functional/functional", "tester")

// Errors Run returns besides *SetupError.
var (
	// ErrFailed: a case or a round's own step failed.
	ErrFailed = errors.New("tester: the run failed")
	// ErrInterrupted: the context ended the run; injected faults were
	// healed (see the report's unhealed list for any that were not).
	ErrInterrupted = errors.New("tester: interrupted")
)

// Exit statuses for a command running Run.
const (
	ExitPass        = 0   // every case of every round passed
	ExitFail        = 1   // a case failed, the cluster never formed, a case was skipped under -require-all-cases, or the run was interrupted
	ExitSetup       = 2   // bad input, or agents could not be reached or set up
	ExitInterrupted = 130 // a second interrupt: exited at once, faults may remain
)

// ExitCode maps Run's error to an exit status.
func ExitCode(err error) int {
	var se *SetupError
	switch {
	case err == nil:
		return ExitPass
	case errors.As(err, &se):
		return ExitSetup
	default:
		return ExitFail
	}
}

// Bounds of the steps after a case.
const (
	// healTimeout bounds healing on interrupt or after a failure: every
	// agent call is bounded too, this bounds them together.
	healTimeout = 3 * time.Minute
	// compactKeep is how many revisions compaction leaves (upstream's).
	compactKeep = 10000
)

// Run runs the rounds cfg asks for. It returns nil if every case passed, a
// *SetupError if nothing could start (bad input, agents that do not
// answer), ErrInterrupted (wrapped) if ctx ended the run, and ErrFailed
// (wrapped) otherwise — also when the first cluster never became healthy,
// which is etcd's failure, not the infrastructure's, and when
// RequireAllCases is set and a case had to be skipped.
func Run(ctx context.Context, cfg Config) error {
	s, err := cfg.normalize()
	if err != nil {
		return err
	}
	t := &tester{s: s, out: os.Stdout, metrics: newMetrics()}
	return t.run(ctx)
}

// tester is the state of one run.
type tester struct {
	s       *settings
	out     io.Writer // the summary table
	metrics *metrics
	cluster *Cluster
	cases   []Case
	report  Report

	stress    *stresser.Composite // the load on the current bootstrap
	stressing bool                // Stress has been called on it
	seedBoot  int64               // bootstraps so far, to vary the load's seed

	compaction compaction // the last compaction of the current bootstrap
	casesOut   *casesFile // cases.jsonl
	// leases keeps the faults this run injects alive while it lives
	// (renewed from setup, once the agents answered, until Run returns,
	// through the healing after an interrupt); should it die, the agents
	// heal them within a lease.
	leases faultLeaseRenewer
}

// compaction is where the cluster was last compacted: the next case's
// watchers start one watch there, and when it was on a tombstone, what
// that wrote joins the next ground truth.
type compaction struct {
	revision  int64
	tombstone *stresser.Tombstone
}

func (t *tester) run(ctx context.Context) (err error) {
	s := t.s
	plog.Infof("seed %d (replay with -seed %d); recovery timeout %v; case delay %v", s.Seed, s.Seed, s.RecoveryTimeout, s.CaseDelay)
	t.report = Report{
		Seed:                   s.Seed,
		Started:                time.Now(),
		RecoveryTimeoutSeconds: s.RecoveryTimeout.Seconds(),
		Agents:                 s.AgentEndpoints,
		TesterVersion:          TesterVersion(),
		Config:                 runConfig(s.Config),
		Rounds:                 []RoundResult{},
		Skipped:                []Skip{},
	}

	cl, err := openCasesFile(s.ReportDir)
	if err != nil {
		return setupErr(err)
	}
	defer cl.Close()
	t.casesOut = cl

	if s.MetricsAddr != "" {
		stop, _, err := serve(s.MetricsAddr, t.metrics.handler(s.ReportDir))
		if err != nil {
			return setupErr(err)
		}
		defer stop()
	}

	agents := make([]client.Agent, 0, len(s.AgentEndpoints))
	defer func() {
		for _, a := range agents {
			a.Close()
		}
	}()
	for _, ep := range s.AgentEndpoints {
		a, err := s.dial(ep)
		if err != nil {
			return setupErr(fmt.Errorf("agent %s: %w", ep, err))
		}
		agents = append(agents, a)
	}
	c, err := newCluster(s, agents)
	if err != nil {
		return setupErr(err)
	}
	defer c.Close()
	t.cluster = c
	t.metrics.setCluster(c)
	defer t.leases.Stop()

	if err := t.setup(ctx); err != nil {
		t.report.Error = err.Error()
		t.report.Finished = time.Now()
		var unhealthy *UnhealthyError
		switch {
		case ctx.Err() != nil:
			// Interrupted while setting up: not bad input.
			err = fmt.Errorf("%w during setup: %v", ErrInterrupted, err)
			t.report.Interrupted = true
		case errors.Is(err, ErrFailed):
		case errors.As(err, &unhealthy):
			// Every agent started its member and the members never
			// agreed on a leader: etcd failed, the infrastructure
			// did not.
			err = fmt.Errorf("%w: the cluster never formed: %v", ErrFailed, err)
		default:
			err = setupErr(err)
		}
		if werr := t.report.write(s.ReportDir); werr != nil {
			plog.Errorf("%v", werr)
		}
		return err
	}
	return t.rounds(ctx)
}

// setup checks the agents, selects the cases and bootstraps the cluster.
func (t *tester) setup(ctx context.Context) error {
	s, c := t.s, t.cluster
	sts, err := c.AgentStatuses(ctx, agentProbeTimeout)
	if err != nil {
		return fmt.Errorf("agents must answer within %v before a run: %w", agentProbeTimeout, err)
	}
	t.leases.Start(context.WithoutCancel(ctx), c.agents(), max(s.CaseDelay, time.Second))
	t.report.EtcdVersions = map[string]string{}
	var versions []string
	for _, m := range c.members {
		t.report.EtcdVersions[m.Name] = m.EtcdVersion.String()
		versions = append(versions, m.Name+" "+m.EtcdVersion.String())
		for _, note := range EtcdFlagNotes(m.EtcdVersion, c.etcdSettings()) {
			plog.Noticef("%s: %s", m.Name, note)
		}
	}
	plog.Infof("etcd versions: %s", strings.Join(versions, ", "))
	var skipped []Skip
	t.cases, skipped, err = s.selectCases(sts)
	t.report.Skipped = append(t.report.Skipped, skipped...)
	if err != nil {
		return err
	}
	t.report.Schedule = CaseNames(t.cases)
	for i, cs := range t.cases {
		plog.Infof("case %d: %s", i, cs.Name())
	}
	for _, sk := range skipped {
		plog.Noticef("skipping %s: %s", sk.Case, sk.Reason)
	}
	if err := t.report.write(s.ReportDir); err != nil {
		return err
	}
	if s.RequireAllCases && len(skipped) > 0 {
		// Known before anything starts: no point running the others
		// for a verdict that cannot be PASS.
		why := make([]string, len(skipped))
		for i, sk := range skipped {
			why[i] = sk.Case + " (" + sk.Reason + ")"
		}
		return fmt.Errorf("%w: -require-all-cases, and %d cases cannot run here: %s", ErrFailed, len(skipped), strings.Join(why, "; "))
	}
	if err := c.ClearLeftovers(ctx, sts); err != nil {
		return fmt.Errorf("clearing what an earlier run left on the agents: %w", err)
	}
	if err := c.Bootstrap(ctx); err != nil {
		return err
	}
	return t.newStress()
}

// newStress sets up the load for the current bootstrap; the lease checker
// must not look for the leases of a cluster that is gone.
func (t *tester) newStress() error {
	if t.stress != nil {
		t.stress.Close()
	}
	t.seedBoot++
	cfg := t.s.Stresser
	cfg.Endpoints = t.cluster.ClientURLs()
	cfg.Seed = t.loadSeed()
	st, err := stresser.New(cfg)
	if err != nil {
		return fmt.Errorf("stresser: %w", err)
	}
	t.stress, t.stressing = st, false
	return nil
}

// loadSeed is the seed of the current bootstrap's load.
func (t *tester) loadSeed() int64 { return t.s.Seed + t.seedBoot }

func (t *tester) startStress(ctx context.Context) error {
	if t.stressing {
		t.stress.Resume()
		return nil
	}
	if err := t.stress.Stress(ctx); err != nil {
		return err
	}
	t.stressing = true
	return nil
}

// rounds plays the schedule Limit times and ends the run.
func (t *tester) rounds(ctx context.Context) error {
	s := t.s
	var runErr error
	failed := false
rounds:
	for n := 1; s.Limit < 0 || n <= s.Limit; n++ {
		round, steps := t.roundPlan(n)
		rr := t.report.startRound(round)
		for _, st := range steps {
			if st.pin != nil {
				t.cluster.pinTargets(st.pin)
			}
			res := t.runCase(ctx, round, st.index, st.cs)
			t.report.addCase(rr, res)
			if err := t.casesOut.append(round, res); err != nil {
				plog.Errorf("%v", err)
			}
			t.metrics.caseDone(res)
			t.save()
			if ctx.Err() != nil {
				runErr = ErrInterrupted
				break rounds
			}
			if res.Passed {
				continue
			}
			failed = true
			if s.ExitOnFailure {
				runErr = fmt.Errorf("%w: %s failed in round %d and -exit-on-failure is set", ErrFailed, res.Case, round)
				break rounds
			}
			if err := t.cluster.Gone(); err != nil {
				runErr = fmt.Errorf("%w: after %s failed in round %d, the run cannot go on: %v", ErrFailed, res.Case, round, err)
				break rounds
			}
			if err := t.rebootstrap(ctx); err != nil {
				runErr = fmt.Errorf("%w: after %s failed in round %d: %v", ErrFailed, res.Case, round, err)
				if ctx.Err() != nil {
					runErr = fmt.Errorf("%w: %v", ErrInterrupted, err)
				}
				break rounds
			}
		}
		if err := phaseErr(PhaseMaintain, t.maintain(ctx, rr)); err != nil {
			rr.Error = err.Error()
			plog.Errorf("[round#%d] %v", round, err)
			if ctx.Err() != nil {
				t.metrics.roundDone(false)
				runErr = ErrInterrupted
				break
			}
		}
		t.report.endRound(rr)
		t.metrics.roundDone(rr.Passed)
		failed = failed || !rr.Passed
		t.save()
		if !rr.Passed && s.ExitOnFailure {
			runErr = fmt.Errorf("%w: round %d failed and -exit-on-failure is set", ErrFailed, round)
			break
		}
	}
	return t.finish(ctx, runErr, failed)
}

// roundStep is one case of a round: its place and, in a replay, the
// members it must hit.
type roundStep struct {
	index int
	cs    Case
	pin   []int
}

// roundPlan is the n-th round to play: the schedule, or in a replay the
// n-th recorded round with its own number, so that each case redraws
// what it drew (caseRand is keyed by round and place).
func (t *tester) roundPlan(n int) (int, []roundStep) {
	if t.s.replay == nil {
		steps := make([]roundStep, len(t.cases))
		for k, cs := range t.cases {
			steps[k] = roundStep{index: k + 1, cs: cs}
		}
		return n, steps
	}
	byName := map[string]Case{}
	for _, cs := range t.cases {
		byName[cs.Name()] = cs
	}
	pr := t.s.replay[n-1]
	steps := make([]roundStep, len(pr.cases))
	for k, rc := range pr.cases {
		steps[k] = roundStep{index: rc.index, cs: byName[rc.name], pin: append([]int{}, rc.members...)}
	}
	return pr.round, steps
}
