package tester

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
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
	// Backends holds each agent's Status.NetworkBackend; nil until the
	// agents have answered.
	Backends     []string
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
	budget float64 // failures allowed, as a fraction of qps × seconds
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
		return fmt.Sprintf("no fault, load only; the cluster must stay healthy throughout, with no unexpected stress error and failures under %.0f%% of the requests asked", n.budget*100)
	}
	return "no fault, no load; the cluster must stay healthy throughout (polled every 500ms)"
}
func (n noFail) Stress() bool { return n.stress }

// Hold watches the cluster while nothing is injected: it must stay
// healthy. Two unhealthy polls in a row fail the case; one may be a slow
// disk under the poll's short timeout.
func (n noFail) Hold(ctx context.Context, c *Cluster, d time.Duration) error {
	deadline := time.Now().Add(d)
	bad := 0
	for time.Now().Before(deadline) {
		if reasons := c.healthOnce(ctx); len(reasons) > 0 && ctx.Err() == nil {
			if bad++; bad >= 2 {
				return fmt.Errorf("unhealthy with no fault injected: %v", &UnhealthyError{d - time.Until(deadline), reasons})
			}
		} else {
			bad = 0
		}
		if err := sleep(ctx, min(livenessPollInterval, max(time.Until(deadline), 0))); err != nil {
			return err
		}
	}
	return nil
}

// livenessPollInterval is how often the no-fault cases look at the cluster.
const livenessPollInterval = 500 * time.Millisecond

func (n noFail) Inject(context.Context, *Cluster) error        { return nil }
func (n noFail) Recover(ctx context.Context, c *Cluster) error { return c.Heal(ctx) }
func (n noFail) StressChecker(s stresser.Stats) Checker {
	if !n.stress {
		return nil
	}
	return stressBudget{stats: s, qps: n.qps, fraction: n.budget}
}

// stressFailureBudget is upstream's: NO_FAIL_WITH_STRESS fails when errors
// exceed 30% of the requests the rate asked for.
const stressFailureBudget = 0.3

// Catalogue returns every case, in the default order of a round.
func Catalogue(cfg Config) []Case {
	entries := int64(cfg.SnapshotCount + cfg.SnapshotCatchupEntries)
	var cs []Case
	add := func(f family, ts ...target) {
		for _, t := range ts {
			cs = append(cs, faultCase{f, t})
		}
	}
	snap := func(f family, t target) { cs = append(cs, untilSnapshot{faultCase{f, t}, entries}) }

	add(sigterm, oneFollower{})
	snap(sigterm, oneFollower{})
	add(sigterm, leader{})
	snap(sigterm, leader{})
	add(sigterm, quorum{}, all{})
	add(sigkill, oneFollower{}, leader{}, quorum{}, all{})
	add(paused{}, oneFollower{}, leader{}, quorum{})
	add(removed{}, oneFollower{})
	add(blackhole{}, oneFollower{})
	snap(blackhole{}, oneFollower{})
	add(blackhole{}, leader{}, quorum{}, all{})
	add(fixedDelay(cfg.ElectionTimeout), oneFollower{}, leader{}, quorum{}, all{})
	add(randomDelay(cfg.ElectionTimeout), oneFollower{}, leader{}, quorum{}, all{})
	cs = append(cs,
		noFail{stress: true, budget: stressFailureBudget, qps: cfg.Stresser.QPS},
		noFail{stress: false})
	return cs
}

// CaseNames returns the names of cs in order.
func CaseNames(cs []Case) []string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.Name()
	}
	return names
}

// selectCases picks the cases of a run from the catalogue. With no names,
// every case runs whose requirements env meets; the others are skipped.
// A named case that cannot run is an error: the user asked for it. The
// schedule, if any, orders the selected cases by index.
func selectCases(cat []Case, names []string, schedule []int, env Env) ([]Case, []Skip, error) {
	var selected []Case
	var skipped []Skip
	if len(names) == 0 {
		for _, c := range cat {
			if err := caseRequires(c, env); err != nil {
				skipped = append(skipped, Skip{c.Name(), err.Error()})
				continue
			}
			selected = append(selected, c)
		}
	} else {
		byName := map[string]Case{}
		for _, c := range cat {
			byName[c.Name()] = c
		}
		var errs []error
		seen := map[string]bool{}
		for _, n := range names {
			c, ok := byName[n]
			switch {
			case !ok:
				errs = append(errs, fmt.Errorf("-cases: unknown case %q; valid cases: %s", n, strings.Join(CaseNames(cat), ", ")))
				continue
			case seen[n]:
				errs = append(errs, fmt.Errorf("-cases: %s given twice; use -schedule-cases to repeat a case", n))
				continue
			}
			seen[n] = true
			if err := caseRequires(c, env); err != nil {
				errs = append(errs, fmt.Errorf("-cases: %s cannot run here: %w", n, err))
				continue
			}
			selected = append(selected, c)
		}
		if err := errors.Join(errs...); err != nil {
			return nil, nil, err
		}
	}
	if len(selected) == 0 {
		return nil, skipped, errors.New("-cases: no case can run in this environment; see the skipped cases")
	}
	if len(schedule) == 0 {
		return selected, skipped, nil
	}
	var scheduled []Case
	var errs []error
	for _, i := range schedule {
		if i < 0 || i >= len(selected) {
			errs = append(errs, fmt.Errorf("-schedule-cases: index %d out of range 0..%d (the %d selected cases: %s)", i, len(selected)-1, len(selected), strings.Join(CaseNames(selected), ", ")))
			continue
		}
		scheduled = append(scheduled, selected[i])
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	return scheduled, skipped, nil
}

// ListCases writes the catalogue, one case a line with its description.
func ListCases(cfg Config) []string {
	cat := Catalogue(cfg)
	w := 0
	for _, c := range cat {
		w = max(w, len(c.Name()))
	}
	lines := make([]string, len(cat))
	for i, c := range cat {
		lines[i] = fmt.Sprintf("%-*s  %s", w, c.Name(), c.Describe())
	}
	return lines
}

// caseRand is the random source of one case of one round: derived from the
// seed and the case's place only, so a replay with the same seed draws the
// same targets and delays even when an earlier case went differently.
func caseRand(seed int64, round, index int) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), uint64(round)<<32|uint64(index)))
}
