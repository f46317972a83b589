package tester

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

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
	cs = append(cs, restoreCase{markers: 100})
	snap(removed{}, oneFollower{})
	add(removed{}, leader{})
	snap(removed{}, leader{})
	add(blackhole{}, oneFollower{})
	snap(blackhole{}, oneFollower{})
	add(blackhole{}, leader{})
	snap(blackhole{}, leader{})
	add(blackhole{}, quorum{}, all{})
	for _, d := range []delay{fixedDelay(cfg.ElectionTimeout), randomDelay(cfg.ElectionTimeout)} {
		add(d, oneFollower{})
		snap(d, oneFollower{})
		add(d, leader{})
		snap(d, leader{})
		add(d, quorum{}, all{})
	}
	cs = append(cs, &failpointCase{}, &failpointCase{diskLatency: 200 * time.Millisecond})
	cs = append(cs, &externalCase{path: cfg.ExternalExecPath})
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
		var err error
		if selected, err = selectNamed(cat, names, env); err != nil {
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

// selectNamed picks the named cases, in the order named; every name that is
// unknown, repeated or cannot run in env is an error.
func selectNamed(cat []Case, names []string, env Env) ([]Case, error) {
	var selected []Case
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
	return selected, errors.Join(errs...)
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
