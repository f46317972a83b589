package tester

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// A run of any length keeps a report of bounded size. Every case goes, as
// it ends, onto one line of cases.jsonl, which is only ever appended to;
// results.json is a summary rewritten after every case whose size does
// not grow with the run: totals and a recovery distribution per case,
// every failure in full (up to reportKeepFailures), and the most recent
// rounds (at least reportKeepCases cases) in full. The HTML page, drawn
// from results.json after every case, is bounded with it. The per-second load
// series of a passed case stays in results.json while its round does, for
// the report page's timelines; cases.jsonl keeps it for failed cases only.

// CasesFile is the report directory's log of every case, one JSON object
// a line.
const CasesFile = "cases.jsonl"

// Bounds of results.json.
const (
	reportKeepCases    = 120
	reportKeepFailures = 1000
)

// CaseLine is one line of cases.jsonl.
type CaseLine struct {
	Round int `json:"round"`
	CaseResult
}

// CaseTotals sums up every run of one case.
type CaseTotals struct {
	Runs   int `json:"runs"`
	Passed int `json:"passed"`
	Failed int `json:"failed"`
	// Findings counts the runs with a finding.
	Findings int `json:"findings,omitempty"`
	// Recovery is the distribution of recovery_seconds of the runs that
	// recovered.
	Recovery Distribution `json:"recovery_seconds"`
}

// Distribution summarises a series of seconds in constant space.
type Distribution struct {
	Count int     `json:"count"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
	// Buckets[i] counts the values ≤ DistributionBounds[i] (and above
	// the bound before); the last counts the values above every bound.
	Buckets []int `json:"buckets"`
}

// DistributionBounds are the upper bounds, in seconds, of a
// Distribution's buckets.
var DistributionBounds = []float64{0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 60}

func (d *Distribution) add(v float64) {
	if d.Buckets == nil {
		d.Buckets = make([]int, len(DistributionBounds)+1)
	}
	if d.Count == 0 || v < d.Min {
		d.Min = v
	}
	d.Max = max(d.Max, v)
	d.Mean += (v - d.Mean) / float64(d.Count+1)
	d.Count++
	i := 0
	for i < len(DistributionBounds) && v > DistributionBounds[i] {
		i++
	}
	d.Buckets[i]++
}

// RunFinding is a finding with the case it was found in.
type RunFinding struct {
	Round int    `json:"round"`
	Index int    `json:"index"`
	Case  string `json:"case"`
	Finding
}

// FailedCase is a failed case with its round, kept in full.
type FailedCase = CaseLine

// casesFile appends cases to cases.jsonl.
type casesFile struct{ f *os.File }

func openCasesFile(dir string) (*casesFile, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, CasesFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	return &casesFile{f}, nil
}

func (l *casesFile) append(round int, res CaseResult) error {
	if res.Passed && res.Stress != nil {
		// A passed case's series is left out: a line of about the same
		// size for every case, however long the run.
		st := *res.Stress
		st.Series, st.SeriesDropped = nil, 0
		res.Stress = &st
	}
	b, err := json.Marshal(CaseLine{round, res})
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if _, err := l.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("report: %s: %w", CasesFile, err)
	}
	return nil
}

func (l *casesFile) Close() error { return l.f.Close() }

// addCase accounts for a case that ended in round rr (the last of
// r.Rounds): totals, failures, and the bound on the rounds kept in full.
func (r *Report) addCase(rr *RoundResult, res CaseResult) {
	if r.Totals == nil {
		r.Totals = map[string]*CaseTotals{}
	}
	tot := r.Totals[res.Case]
	if tot == nil {
		tot = &CaseTotals{}
		r.Totals[res.Case] = tot
	}
	tot.Runs++
	if res.Passed {
		tot.Passed++
	} else {
		tot.Failed++
		if len(r.Failures) < reportKeepFailures {
			r.Failures = append(r.Failures, FailedCase{rr.Round, res})
		} else {
			r.FailuresDropped++
		}
	}
	if !res.HealthyTime.IsZero() {
		tot.Recovery.add(res.RecoverySeconds)
	}
	if len(res.Findings) > 0 {
		tot.Findings++
	}
	for _, f := range res.Findings {
		if len(r.Findings) < reportKeepFailures {
			r.Findings = append(r.Findings, RunFinding{rr.Round, res.Index, res.Case, f})
		} else {
			r.FindingsDropped++
		}
	}
	rr.Cases = append(rr.Cases, res)
}

// startRound begins round n, in progress and not passed until endRound.
func (r *Report) startRound(n int) *RoundResult {
	r.trimRounds()
	r.Rounds = append(r.Rounds, RoundResult{Round: n, InProgress: true, Cases: []CaseResult{}})
	return &r.Rounds[len(r.Rounds)-1]
}

// endRound ends rr, which passed if every case and its own steps did.
func (r *Report) endRound(rr *RoundResult) {
	rr.InProgress = false
	rr.Passed = rr.Error == "" && !slices.ContainsFunc(rr.Cases, func(c CaseResult) bool { return !c.Passed })
}

// cutRound ends a round the run left before its end (interrupted, or a
// failure that ended the run): it is no longer in progress, and it did
// not pass, whatever its cases did, for it did not run in full.
func (r *Report) cutRound() {
	if n := len(r.Rounds); n > 0 && r.Rounds[n-1].InProgress {
		r.Rounds[n-1].InProgress, r.Rounds[n-1].Passed = false, false
	}
}

// trimRounds drops the oldest rounds, all but the last, while more than
// reportKeepCases cases are kept: their cases are in cases.jsonl, their
// failures in Failures and their figures in Totals.
func (r *Report) trimRounds() {
	kept := 0
	for _, rd := range r.Rounds {
		kept += len(rd.Cases)
	}
	for len(r.Rounds) > 1 && kept-len(r.Rounds[0].Cases) >= reportKeepCases {
		kept -= len(r.Rounds[0].Cases)
		r.Rounds = r.Rounds[1:]
		r.RoundsDropped++
	}
}
