package tester

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/etcd-functional/functional/stresser"
)

// Case is one fault scenario. Inject puts the fault on the cluster and
// Recover takes it off; between the two the round holds the fault for
// Config.CaseDelay. Recover must undo whatever Inject did, also when Inject
// failed half-way.
type Case interface {
	Name() string
	Describe() string
	Inject(ctx context.Context, c *Cluster) error
	Recover(ctx context.Context, c *Cluster) error
}

// Env is what the tester knows of where it runs; cases that cannot run in
// it say why through Requires.
type Env struct {
	Members int      // one per agent
	Hosts   []string // member host per agent
	// PeerPorts holds each member's peer port.
	PeerPorts []int
	// Backends holds each agent's Status.NetworkBackend; nil until the
	// agents have answered.
	Backends []string
	// NoFailpoints says why an agent's etcd cannot take failpoints;
	// empty if every one can, or before the agents have answered.
	NoFailpoints string
	PeerProxy    bool // -peer-proxy
	StressWrites bool // the load writes keys
}

// requirer is implemented by cases that cannot run everywhere. The error
// is the reason, shown to the user.
type requirer interface{ Requires(env Env) error }

// stressChooser is implemented by cases that run without load.
type stressChooser interface{ Stress() bool }

// holder is implemented by cases that watch the cluster while the fault is
// held, instead of only waiting.
type holder interface {
	Hold(ctx context.Context, c *Cluster, d time.Duration) error
}

// statsChecker is implemented by cases that judge the load of their round.
type statsChecker interface {
	StressChecker(stats stresser.Stats) Checker
}

// Skip is a case left out of the run, and why.
type Skip struct {
	Case   string `json:"case"`
	Reason string `json:"reason"`
}

// What a case does when it implements none of the optional interfaces:
// run under load, hold by waiting, judge no load, run everywhere. The
// round and every wrapper ask through these, so a wrapper forwards all of
// them by implementing all of them.

func caseRequires(cs Case, env Env) error {
	if r, ok := cs.(requirer); ok {
		return r.Requires(env)
	}
	return nil
}

func caseStress(cs Case) bool {
	if s, ok := cs.(stressChooser); ok {
		return s.Stress()
	}
	return true
}

func caseHold(ctx context.Context, cs Case, c *Cluster, d time.Duration) error {
	if h, ok := cs.(holder); ok {
		return h.Hold(ctx, c, d)
	}
	return sleep(ctx, d)
}

func caseStressChecker(cs Case, stats stresser.Stats) Checker {
	if sc, ok := cs.(statsChecker); ok {
		if ck := sc.StressChecker(stats); ck != nil {
			return ck
		}
	}
	return nil
}

// wrapper is a case made of another; unwrap finds the innermost.
type wrapper interface{ Unwrap() Case }

func unwrap(cs Case) Case {
	for range 10 { // wrappers do not nest deeper
		w, ok := cs.(wrapper)
		if !ok {
			break
		}
		cs = w.Unwrap()
	}
	return cs
}

// untilSnapshot keeps the fault of a case on until the rest of the cluster
// has committed enough entries to snapshot and compact its log past the
// targets, so they must catch up from a snapshot. It does not embed the
// case: embedding would hide the inner case's optional interfaces.
type untilSnapshot struct {
	inner   Case
	entries int64 // snapshot count + catch-up entries
}

var (
	_ requirer      = untilSnapshot{}
	_ stressChooser = untilSnapshot{}
	_ holder        = untilSnapshot{}
	_ statsChecker  = untilSnapshot{}
	_ wrapper       = untilSnapshot{}
)

func (u untilSnapshot) Unwrap() Case { return u.inner }
func (u untilSnapshot) Name() string { return u.inner.Name() + "_UNTIL_TRIGGER_SNAPSHOT" }
func (u untilSnapshot) Describe() string {
	return u.inner.Describe() + fmt.Sprintf("; the fault is held until the others have moved %d revisions (snapshot count + catch-up entries)", u.entries)
}
func (u untilSnapshot) Requires(env Env) error {
	if err := caseRequires(u.inner, env); err != nil {
		return err
	}
	if !env.StressWrites {
		return errors.New("needs a stresser that writes (keys or lease) to move the revision; -stresser is nop")
	}
	return nil
}
func (u untilSnapshot) Inject(ctx context.Context, c *Cluster) error {
	if err := u.inner.Inject(ctx, c); err != nil {
		return err
	}
	return c.waitRevisionAdvance(ctx, u.entries, snapshotPolls, snapshotPollInterval)
}
func (u untilSnapshot) Recover(ctx context.Context, c *Cluster) error { return u.inner.Recover(ctx, c) }
func (u untilSnapshot) Stress() bool                                  { return caseStress(u.inner) }
func (u untilSnapshot) Hold(ctx context.Context, c *Cluster, d time.Duration) error {
	return caseHold(ctx, u.inner, c, d)
}
func (u untilSnapshot) StressChecker(stats stresser.Stats) Checker {
	return caseStressChecker(u.inner, stats)
}

// The wait for a snapshot is bounded: a cluster that cannot commit that
// much in this time is too slow for the case to mean anything.
const (
	snapshotPolls        = 60
	snapshotPollInterval = 500 * time.Millisecond
)

// noFail injects nothing: it measures the cluster itself, with or without
// load.
type noFail struct {
	stress bool
	budget float64 // failures allowed, as a fraction of the requests sent
	qps    int
}

func (n noFail) Name() string {
	if n.stress {
		return "NO_FAIL_WITH_STRESS"
	}
	return "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS"
}
func (n noFail) Describe() string {
	if n.stress {
		return fmt.Sprintf("no fault, load only; the cluster must stay healthy throughout, with no unexpected stress error, and at least %.0f%% of the requests sent (and some) succeeding", (1-n.budget)*100)
	}
	return fmt.Sprintf("no fault, no load; every poll (every %v) must find the cluster healthy under the same leader at the same term", livenessPollInterval)
}
func (n noFail) Stress() bool { return n.stress }

// Hold watches the cluster while nothing is injected: with no fault, any
// unhealthy poll, any other leader or any new term (a leader that lost
// and won again) is a liveness failure. No poll is forgiven: a slow disk
// that makes a member miss a 2 s request is news too.
func (n noFail) Hold(ctx context.Context, c *Cluster, d time.Duration) error {
	start := time.Now()
	deadline := start.Add(d)
	var first healthPoll
	for polls := 0; ; polls++ {
		p := c.healthPoll(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		at := time.Since(start).Round(time.Millisecond)
		if len(p.reasons) > 0 {
			return fmt.Errorf("unhealthy with no fault injected, %v into the hold: %v", at, &UnhealthyError{at, p.reasons})
		}
		if polls == 0 {
			first = p
		} else if p.leader != first.leader || p.term != first.term {
			return fmt.Errorf("leadership changed with no fault injected, %v into the hold: leader %s at term %d, then %s at term %d",
				at, c.memberNameByID(first.leader), first.term, c.memberNameByID(p.leader), p.term)
		}
		if !time.Now().Before(deadline) {
			return nil
		}
		if err := sleep(ctx, min(livenessPollInterval, time.Until(deadline))); err != nil {
			return err
		}
	}
}

// livenessPollInterval is how often the no-fault cases look at the cluster.
const livenessPollInterval = 100 * time.Millisecond

func (n noFail) Inject(context.Context, *Cluster) error        { return nil }
func (n noFail) Recover(ctx context.Context, c *Cluster) error { return c.Heal(ctx) }
func (n noFail) StressChecker(s stresser.Stats) Checker {
	if !n.stress {
		return nil
	}
	return stressBudget{stats: s, qps: n.qps, fraction: n.budget}
}

// stressFailureBudget is upstream's figure: NO_FAIL_WITH_STRESS fails when
// errors exceed 30% of the requests sent (upstream: of those the rate asked
// for, which a load that could not send hid behind).
const stressFailureBudget = 0.3
