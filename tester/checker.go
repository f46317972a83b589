package tester

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/etcd-functional/functional/stresser"
)

// Checker verifies, after a fault has healed and the load is paused, that
// the cluster is still right. The error names what is wrong; an error
// wrapping ErrCheckUnknown says the checker could not decide: the report
// says unknown, and the case fails all the same (a check that could not
// decide has not passed) unless Config.AllowUnknown says otherwise.
type Checker interface {
	Check(ctx context.Context) error
}

// ErrCheckUnknown is wrapped by a checker's error when it could not reach
// a verdict (a history too long to search in time, say).
var ErrCheckUnknown = errors.New("verdict unknown")

// NewChecker builds the checker of one case from what the case did. It
// returns nil when it has nothing to check in this case (no load, turned
// off by the configuration).
type NewChecker func(cc *CheckContext) Checker

// CheckContext is what a checker gets of one case. Each checker gets its
// own, and records its figures and files on it for the report.
type CheckContext struct {
	Cluster *Cluster
	Config  Config
	Case    Case
	// Result is the case so far: targets, inject, recover and healthy
	// times, and the load's Stats. Read it; the tester writes it.
	Result *CaseResult
	// Stresser is the load of the case, paused; nil if the case ran
	// without load.
	Stresser *stresser.Composite
	// Watchers are the watches the case recorded, still running; nil
	// if it recorded none (no load, or -watch-check=false).
	Watchers *stresser.Watchers
	// Dir is the case's own directory under the report directory, for
	// files a checker writes; it is created by MkDir.
	Dir string

	tombstone *stresser.Tombstone // the last compaction, if on a tombstone

	figures map[string]float64
	files   []string
}

// MkDir creates cc.Dir and returns it.
func (cc *CheckContext) MkDir() (string, error) {
	return cc.Dir, os.MkdirAll(cc.Dir, 0o755)
}

// Figure records a named number of the check for the report ("ops": 1234).
func (cc *CheckContext) Figure(name string, v float64) {
	if cc.figures == nil {
		cc.figures = map[string]float64{}
	}
	cc.figures[name] = v
}

// File records a file the check wrote, for the report.
func (cc *CheckContext) File(path string) { cc.files = append(cc.files, path) }

// Verdicts of a CheckResult.
const (
	VerdictPass    = "pass"
	VerdictFail    = "fail"
	VerdictUnknown = "unknown"
)

// The registry: the checkers every case runs, in order. Built-ins are
// listed here; a checker outside the package adds itself with
// RegisterChecker from an init function.
var (
	checkersMu sync.Mutex
	registry   = []registered{
		{"hash", newHashCheck},
		{"stresser", newStresserCheck},
		{"stress budget", newStressBudgetCheck},
		{"linearizability", newLinearizabilityCheck},
		{"watch", newWatchCheck},
		{"logs", newLogCheck},
		{"external", newExternalCheck},
	}
)

type registered struct {
	name string
	new  NewChecker
}

// RegisterChecker adds a checker that every case runs after the
// built-in ones, under name (as the report and errors show it). It panics
// if name is taken: two checkers under one name are a programming error.
func RegisterChecker(name string, f NewChecker) {
	checkersMu.Lock()
	defer checkersMu.Unlock()
	if slices.ContainsFunc(registry, func(r registered) bool { return r.name == name }) {
		panic(fmt.Sprintf("tester: checker %q registered twice", name))
	}
	registry = append(registry, registered{name, f})
}

// Checkers names the registered checkers, in the order they run.
func Checkers() []string {
	checkersMu.Lock()
	defer checkersMu.Unlock()
	names := make([]string, len(registry))
	for i, r := range registry {
		names[i] = r.name
	}
	return names
}

// namedChecker is a checker built for one case.
type namedChecker struct {
	name string
	Checker
	cc *CheckContext
}

// buildCheckers builds every registered checker for one case from cc.
func buildCheckers(cc CheckContext) []namedChecker {
	checkersMu.Lock()
	reg := slices.Clone(registry)
	checkersMu.Unlock()
	var out []namedChecker
	for _, r := range reg {
		own := cc // each checker records its own figures
		if ck := r.new(&own); ck != nil {
			out = append(out, namedChecker{r.name, ck, &own})
		}
	}
	return out
}

// runCheckers runs every checker, also after one has failed, and returns
// each one's result and the failures joined, each prefixed with its
// checker's name. An unknown verdict fails too, unless allowUnknown.
func runCheckers(ctx context.Context, cks []namedChecker, allowUnknown bool) ([]CheckResult, error) {
	var errs []error
	results := make([]CheckResult, 0, len(cks))
	for _, c := range cks {
		r := CheckResult{Name: c.name, Verdict: VerdictPass}
		err := c.Checker.Check(ctx)
		switch {
		case errors.Is(err, ErrCheckUnknown):
			r.Verdict, r.Error = VerdictUnknown, err.Error()
			if !allowUnknown {
				errs = append(errs, fmt.Errorf("%s check could not decide (-allow-unknown to pass such cases): %w", c.name, err))
			}
		case err != nil:
			r.Verdict, r.Error = VerdictFail, err.Error()
			errs = append(errs, fmt.Errorf("%s check: %w", c.name, err))
		}
		if c.cc != nil {
			r.Figures, r.Files = c.cc.figures, c.cc.files
		}
		results = append(results, r)
	}
	return results, errors.Join(errs...)
}

// caseDir is the directory of one case's files under the report
// directory, named as its archives are.
func caseDir(reportDir string, round, index int, name string) string {
	return filepath.Join(reportDir, caseLabel(round, index, name))
}

func caseLabel(round, index int, name string) string {
	return fmt.Sprintf("round%d_case%d_%s", round, index, name)
}
