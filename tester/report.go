package tester

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/etcd-functional/functional/htmlreport"
	"github.com/etcd-functional/functional/stresser"
)

// Report is results.json: what a run did, written after every case so that
// an interrupted or crashed run keeps what it had.
type Report struct {
	Seed        int64 `json:"seed"`
	Passed      bool  `json:"passed"`
	Interrupted bool  `json:"interrupted"`
	// Error is what ended the run early, if anything did (a cluster that
	// could not be re-bootstrapped, -exit-on-failure, an interrupt).
	Error                  string    `json:"error,omitempty"`
	Started                time.Time `json:"started"`
	Finished               time.Time `json:"finished,omitzero"`
	RecoveryTimeoutSeconds float64   `json:"recovery_timeout_seconds"`
	Agents                 []string  `json:"agents"`
	// EtcdVersions maps each member to its etcd binary's release.
	EtcdVersions map[string]string `json:"etcd_versions,omitempty"`
	// TesterVersion is the build of the tester that wrote the report,
	// and Config what it was asked to check and how: a PASS means what
	// these say was checked, nothing more.
	TesterVersion string     `json:"tester_version,omitempty"`
	Config        *RunConfig `json:"config,omitempty"`
	Schedule      []string   `json:"schedule"` // the cases of one round, in order
	// Rounds are the most recent rounds, in full; the RoundsDropped
	// before them are in cases.jsonl (see results.go).
	Rounds        []RoundResult `json:"rounds"`
	RoundsDropped int           `json:"rounds_dropped,omitempty"`
	// Totals sums up every run of each case, Failures holds every failed
	// case in full (the first reportKeepFailures; FailuresDropped counts
	// the others), whether or not its round is still in Rounds.
	Totals          map[string]*CaseTotals `json:"totals,omitempty"`
	Failures        []FailedCase           `json:"failures,omitempty"`
	FailuresDropped int                    `json:"failures_dropped,omitempty"`
	Skipped         []Skip                 `json:"skipped"`
	// Findings are every case's findings (the first reportKeepFailures;
	// FindingsDropped counts the others), whether or not its round is
	// still in Rounds: what etcd did that no case failed for.
	Findings        []RunFinding `json:"findings,omitempty"`
	FindingsDropped int          `json:"findings_dropped,omitempty"`
	// Unhealed lists the faults that could not be undone at the end.
	Unhealed []string `json:"unhealed,omitempty"`
}

// RoundResult is one round of the schedule.
type RoundResult struct {
	Round int `json:"round"`
	// Passed is set when the round has ended, every case and its own
	// steps passed: a round still running (InProgress), or cut short by
	// an interrupt or a failure that ended the run, has not passed.
	Passed     bool         `json:"passed"`
	InProgress bool         `json:"in_progress,omitempty"`
	Cases      []CaseResult `json:"cases"`
	// CompactRevision is where the cluster was compacted after the round.
	CompactRevision int64 `json:"compact_revision,omitempty"`
	Defragmented    bool  `json:"defragmented,omitempty"`
	// Error is a failure of the round's own steps (compaction,
	// defragmentation), not of a case.
	Error string `json:"error,omitempty"`
}

// CaseResult is one case of one round.
type CaseResult struct {
	Case    string   `json:"case"`
	Index   int      `json:"index"` // 1-based place in the round
	Passed  bool     `json:"passed"`
	Error   string   `json:"error,omitempty"`
	Targets []string `json:"targets"`
	// InjectTime is when injection began, RecoverTime when recovery
	// ended, HealthyTime when every member was healthy again.
	InjectTime  time.Time `json:"inject_time,omitzero"`
	RecoverTime time.Time `json:"recover_time,omitzero"`
	HealthyTime time.Time `json:"healthy_time,omitzero"`
	// RecoverySeconds is HealthyTime − RecoverTime; FirstWriteSeconds is
	// from RecoverTime to the first put that succeeded.
	RecoverySeconds   float64 `json:"recovery_seconds"`
	FirstWriteSeconds float64 `json:"first_write_seconds"`
	// UnavailabilitySeconds is from InjectTime to the first client write
	// that succeeded after the last one that failed (0 if none failed);
	// absent if it was not measured (no write succeeded after the last
	// failure). Each figure is exact to about 50 ms (see figures.go).
	UnavailabilitySeconds *float64 `json:"unavailability_seconds,omitempty"`
	// The schedule as it ran, for -replay: the faults as drawn (with
	// their drawn parameters), how long the fault was held (from the end
	// of injection to the start of recovery), and the load's seed.
	Faults      []string `json:"faults,omitempty"`
	HoldSeconds float64  `json:"hold_seconds,omitempty"`
	LoadSeed    int64    `json:"load_seed,omitempty"`
	// ReplayNotes say what a replay of this case found different from
	// the record (a member that no longer holds the case's role).
	ReplayNotes []string `json:"replay_notes,omitempty"`
	// CompactRevision is where the cluster stood compacted after the
	// case (each passed case compacts); 0 if it never was.
	CompactRevision int64 `json:"compact_revision,omitempty"`
	// Stress is the load of the case, from start (or resume) to the
	// pause after recovery; nil for cases run without load. Its
	// per-second series is kept for failed cases only.
	Stress *stresser.Stats `json:"stress,omitempty"`
	// Archives maps each member to the directory its agent archived its
	// data and log in after the case failed.
	Archives map[string]string `json:"archives,omitempty"`
	// Checks holds each checker's verdict, in the order they ran; absent
	// when no checker ran (the case failed before).
	Checks []CheckResult `json:"checks,omitempty"`
	// Findings are what etcd did that the case did not fail for but a
	// user should know (members that became ready only after a write).
	Findings []Finding `json:"findings,omitempty"`
}

// CheckResult is one checker's verdict on one case.
type CheckResult struct {
	Name    string             `json:"name"`
	Verdict string             `json:"verdict"` // VerdictPass, VerdictFail or VerdictUnknown
	Error   string             `json:"error,omitempty"`
	Figures map[string]float64 `json:"figures,omitempty"`
	Files   []string           `json:"files,omitempty"`
}

// Report file names inside Config.ReportDir.
const (
	ResultsFile = "results.json"
	SummaryFile = "summary.txt"
)

// write stores results.json and summary.txt in dir, each atomically (a
// temporary file renamed over the old one), so a reader never sees half a
// report.
func (r *Report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, ResultsFile), append(b, '\n')); err != nil {
		return err
	}
	var sum bytes.Buffer
	r.summary(&sum)
	if err := writeAtomic(filepath.Join(dir, SummaryFile), sum.Bytes()); err != nil {
		return err
	}
	// The page is a view of results.json; one that cannot be drawn is
	// logged, and the run goes on with its verdict intact.
	if err := htmlreport.Write(dir); err != nil {
		plog.Warningf("report page: %v", err)
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("report: write %s: %w", path, err)
	}
	return nil
}

// summary writes a table of every case run, then the skipped cases and
// the verdict.
func (r *Report) summary(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUND\tCASE\tRESULT\tUNAVAILABLE\tRECOVERY\tFIRST WRITE\tSTRESS QPS\tSTRESS ERRORS\tTARGETS")
	for _, rd := range r.Rounds {
		for _, c := range rd.Cases {
			result := "PASS"
			if !c.Passed {
				result = "FAIL"
			}
			qps, errs := "-", "-"
			if c.Stress != nil {
				qps = fmt.Sprintf("%.0f", c.Stress.QPS)
				errs = fmt.Sprintf("%d", c.Stress.Failure)
			}
			unavail := "-"
			if c.UnavailabilitySeconds != nil {
				unavail = seconds(*c.UnavailabilitySeconds, true)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", rd.Round, c.Case, result, unavail,
				seconds(c.RecoverySeconds, !c.HealthyTime.IsZero()), seconds(c.FirstWriteSeconds, c.FirstWriteSeconds > 0),
				qps, errs, strings.Join(c.Targets, ","))
		}
		if rd.Error != "" {
			fmt.Fprintf(tw, "%d\t(after the round)\tFAIL\t\t\t\t\t\t\n", rd.Round)
		}
	}
	tw.Flush()
	ran, passed, failed := 0, 0, 0
	for _, t := range r.Totals {
		ran, passed, failed = ran+t.Runs, passed+t.Passed, failed+t.Failed
	}
	fmt.Fprintf(w, "cases: %d ran, %d passed, %d failed, %d skipped\n", ran, passed, failed, len(r.Skipped))
	if r.RoundsDropped > 0 {
		fmt.Fprintf(w, "the %d rounds before these are in %s\n", r.RoundsDropped, CasesFile)
	}
	if len(r.EtcdVersions) > 0 {
		names := slices.Sorted(maps.Keys(r.EtcdVersions))
		parts := make([]string, len(names))
		for i, n := range names {
			parts[i] = n + " " + r.EtcdVersions[n]
		}
		fmt.Fprintf(w, "etcd: %s\n", strings.Join(parts, ", "))
	}
	if r.TesterVersion != "" {
		fmt.Fprintf(w, "tester: %s\n", r.TesterVersion)
	}
	if c := r.Config; c != nil {
		fmt.Fprintf(w, "checked: %s\n", c.summary())
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(w, "skipped %s: %s\n", s.Case, s.Reason)
	}
	var failures []string
	for _, rd := range r.Rounds {
		for _, c := range rd.Cases {
			if !c.Passed {
				failures = append(failures, fmt.Sprintf("round %d case %d %s: %s", rd.Round, c.Index, c.Case, c.Error))
			}
		}
		if rd.Error != "" {
			failures = append(failures, fmt.Sprintf("round %d: %s", rd.Round, rd.Error))
		}
	}
	for _, f := range failures {
		fmt.Fprintln(w, "failed", f)
	}
	for _, f := range r.Findings {
		fmt.Fprintf(w, "finding round %d case %d %s: %s %s: %s\n", f.Round, f.Index, f.Case, strings.Join(f.Members, ","), f.What, f.Detail)
	}
	if r.FindingsDropped > 0 {
		fmt.Fprintf(w, "%d more findings are in %s\n", r.FindingsDropped, CasesFile)
	}
	for _, rd := range r.Rounds {
		for _, c := range rd.Cases {
			for _, n := range c.ReplayNotes {
				fmt.Fprintf(w, "replay round %d case %d %s: %s\n", rd.Round, c.Index, c.Case, n)
			}
		}
	}
	switch {
	case r.Interrupted:
		fmt.Fprintln(w, "result: INTERRUPTED")
	case r.Passed:
		fmt.Fprintln(w, "result: PASS")
	default:
		fmt.Fprintln(w, "result: FAIL")
	}
	if r.Error != "" {
		fmt.Fprintln(w, "error:", r.Error)
	}
	for _, u := range r.Unhealed {
		fmt.Fprintln(w, "unhealed fault:", u)
	}
}

// failures counts the failed cases and rounds, for the run's error.
func (r *Report) failures() string {
	cases, failed, rounds := 0, 0, 0
	for _, t := range r.Totals {
		cases += t.Runs
		failed += t.Failed
	}
	for _, rd := range r.Rounds {
		if rd.Error != "" {
			rounds++
		}
	}
	s := fmt.Sprintf("%d of %d cases failed", failed, cases)
	if rounds > 0 {
		s += fmt.Sprintf(", %d rounds' compaction or defragmentation failed", rounds)
	}
	return s
}

func seconds(s float64, known bool) string {
	if !known {
		return "-"
	}
	return fmt.Sprintf("%.2fs", s)
}
