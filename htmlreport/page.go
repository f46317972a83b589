package htmlreport

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"math"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

//go:embed page.html.tmpl
var pageSource string

var pageTemplate = template.Must(template.New("page").Parse(pageSource))

// page is what the template shows: every figure already formatted.
type page struct {
	Title, Status, Replay string
	Seed                  int64
	Ran, Passed, Failed   int
	Skipped               []skip
	Findings              []findingView
	FindingsDropped       int
	Error                 string
	Unhealed              []string
	Meta                  [][2]string
	Config                [][2]string
	Recovery              template.HTML
	RecoveryErr           string
	Rows                  []*row
	Failures              []*row
	RoundErrors           []string
	HasUnavail, HasChecks bool
	Generated             string
}

type row struct {
	ID                          string
	Round, Index                int
	Case                        string
	Passed                      bool
	Error                       string
	Unavail, Recovery, FirstWrt cell
	QPS, Errors                 cell
	ErrorClasses                string
	Checks                      []checkView
	Targets                     string
	Span                        string
	Timeline                    template.HTML
	TimelineNote                string
	Dropped                     int // seconds cut from the series' start
	Archives                    []link
	Files                       []link
}

// cell is a table figure and the key it sorts by.
type cell struct {
	Text string
	Key  float64
}

// rowID is the anchor of a case's row.
func rowID(round, index int) string { return fmt.Sprintf("r%dc%d", round, index) }

type findingView struct {
	finding
	ID, Members, At string
}

type checkView struct {
	Name, Verdict, Error string
	Figures              []string
	Files                []link
}

type link struct {
	Label string
	Href  template.URL
}

// render writes the page of r; dir is where the page goes, against which
// relative links (archives, check files) are made.
func render(w io.Writer, dir string, r *results) error {
	p := &page{Status: r.status(), Seed: r.Seed, Error: r.Error, Unhealed: r.Unhealed, Skipped: r.Skipped,
		Replay: r.replayArgs(), Config: keyValues(r.Config), Generated: time.Now().UTC().Format(time.RFC3339)}
	p.Title = fmt.Sprintf("etcd functional test %s, seed %d", p.Status, r.Seed)
	p.FindingsDropped = r.FindingsDropped
	for _, f := range r.Findings {
		p.Findings = append(p.Findings, findingView{finding: f, ID: rowID(f.Round, f.Index),
			Members: strings.Join(f.Members, ", "), At: f.Time.UTC().Format("15:04:05.000")})
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("htmlreport: %w", err)
	}

	if v := versions(r.EtcdVersions); v != "" {
		p.Meta = append(p.Meta, [2]string{"etcd", v})
	}
	if r.TesterVersion != "" {
		p.Meta = append(p.Meta, [2]string{"tester", r.TesterVersion})
	}
	if !r.Started.IsZero() {
		p.Meta = append(p.Meta, [2]string{"started", r.Started.UTC().Format("2006-01-02 15:04:05 MST")})
		end, label := r.Finished, "duration"
		if end.IsZero() {
			// Running, or killed before it could write its end: the
			// clock now would be wrong for the latter.
			end, label = r.lastActivity(), "so far (to the last case)"
		}
		if !end.IsZero() {
			p.Meta = append(p.Meta, [2]string{label, end.Sub(r.Started).Round(time.Second).String()})
		}
	}
	p.Meta = append(p.Meta,
		[2]string{"rounds", fmt.Sprint(len(r.Rounds))},
		[2]string{"cases per round", fmt.Sprintf("%d", len(r.Schedule))},
		[2]string{"recovery timeout", fmt.Sprintf("%gs", r.RecoveryTimeoutSeconds)},
		[2]string{"agents", strings.Join(r.Agents, ", ")})

	// Every failed case gets its timeline, then the latest passed ones.
	passedLeft := 0
	for _, rd := range r.Rounds {
		for _, c := range rd.Cases {
			if c.Passed && c.hasSeries() {
				passedLeft++
			}
		}
	}
	for _, rd := range r.Rounds {
		if rd.Error != "" {
			p.RoundErrors = append(p.RoundErrors, fmt.Sprintf("round %d: %s", rd.Round, rd.Error))
		}
		for i := range rd.Cases {
			c := &rd.Cases[i]
			drawn := !c.Passed || passedLeft <= maxTimelines
			if c.Passed && c.hasSeries() {
				passedLeft--
			}
			rw, err := newRow(absDir, rd.Round, c, drawn)
			if err != nil {
				return err
			}
			p.Ran++
			if c.Passed {
				p.Passed++
			} else {
				p.Failed++
				p.Failures = append(p.Failures, rw)
			}
			p.HasUnavail = p.HasUnavail || c.UnavailabilitySeconds != nil
			p.HasChecks = p.HasChecks || len(c.Checks) > 0
			p.Rows = append(p.Rows, rw)
		}
	}
	svg, err := recoveryPlot(r)
	if err != nil {
		// One bad plot is a note on the page, not a missing page.
		p.RecoveryErr = err.Error()
	}
	p.Recovery = template.HTML(svg) // our own SVG; gonum escapes its text
	if err := pageTemplate.Execute(w, p); err != nil {
		return fmt.Errorf("htmlreport: %w", err)
	}
	return nil
}

// maxTimelines bounds the timelines of passed cases on one page: a run
// with -limit -1 goes on for thousands of cases, and its page is rewritten
// after each. About 20 kB each, 300 keep the page near 6 MB at most.
const maxTimelines = 300

// newRow formats case c of round; drawn says whether to plot its timeline.
func newRow(absDir string, round int, c *caseResult, drawn bool) (*row, error) {
	rw := &row{ID: rowID(round, c.Index), Round: round, Index: c.Index, Case: c.Case,
		Passed: c.Passed, Error: c.Error, Targets: strings.Join(c.Targets, ", ")}
	rw.Recovery = secondsCell(c.RecoverySeconds, !c.HealthyTime.IsZero())
	rw.FirstWrt = secondsCell(c.FirstWriteSeconds, c.FirstWriteSeconds > 0)
	if c.UnavailabilitySeconds != nil {
		rw.Unavail = secondsCell(*c.UnavailabilitySeconds, true)
	} else {
		rw.Unavail = secondsCell(0, false)
	}
	rw.QPS, rw.Errors = cell{"-", -1}, cell{"-", -1}
	if s := c.Stress; s != nil {
		rw.QPS = cell{fmt.Sprintf("%.0f", s.QPS), s.QPS}
		rw.Errors = cell{fmt.Sprintf("%d", s.Failure), float64(s.Failure)}
		if s.Unexpected > 0 {
			rw.Errors.Text += fmt.Sprintf(" (%d unexpected)", s.Unexpected)
		}
		rw.ErrorClasses = classList(s.Errors)
	}
	for _, ck := range c.Checks {
		cv := checkView{Name: ck.Name, Verdict: ck.Verdict, Error: ck.Error}
		if cv.Verdict == "" {
			cv.Verdict = "unknown"
		}
		keys := make([]string, 0, len(ck.Figures))
		for k := range ck.Figures {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			cv.Figures = append(cv.Figures, k+" "+figure(ck.Figures[k]))
		}
		for _, f := range ck.Files {
			l := fileLink(absDir, f)
			cv.Files = append(cv.Files, l)
			rw.Files = append(rw.Files, l)
		}
		rw.Checks = append(rw.Checks, cv)
	}
	members := make([]string, 0, len(c.Archives))
	for m := range c.Archives {
		members = append(members, m)
	}
	sort.Strings(members)
	for _, m := range members {
		d := c.Archives[m]
		l := fileLink(absDir, d)
		l.Label = m + ": " + d
		rw.Archives = append(rw.Archives, l)
		// The agent moves the member's log into its archive.
		lg := fileLink(absDir, filepath.Join(d, "etcd.log"))
		lg.Label = m + ": etcd.log"
		rw.Archives = append(rw.Archives, lg)
	}
	if !c.InjectTime.IsZero() {
		rw.Span = "injected " + c.InjectTime.UTC().Format("15:04:05 MST")
		if !c.RecoverTime.IsZero() {
			rw.Span += fmt.Sprintf(", recovered +%.1fs", c.RecoverTime.Sub(c.InjectTime).Seconds())
		}
		if !c.HealthyTime.IsZero() {
			rw.Span += fmt.Sprintf(", healthy +%.1fs", c.HealthyTime.Sub(c.RecoverTime).Seconds())
		} else if !c.RecoverTime.IsZero() {
			rw.Span += ", never healthy"
		}
	}
	if c.Stress != nil {
		rw.Dropped = c.Stress.SeriesDropped
	}
	if !drawn && c.hasSeries() {
		rw.TimelineNote = fmt.Sprintf("timeline left out: a page draws every failed case and the latest %d others, to stay small", maxTimelines)
		return rw, nil
	}
	svg, err := timeline(c)
	switch {
	case err != nil:
		rw.TimelineNote = err.Error()
	case svg == "" && c.Stress == nil:
		rw.TimelineNote = "no load ran during this case"
	case svg == "" && c.Passed:
		// The tester keeps the series of failed cases only, so far.
		rw.TimelineNote = "no per-second series recorded for this passed case"
	case svg == "":
		rw.TimelineNote = "no per-second series recorded for this case"
	}
	rw.Timeline = template.HTML(svg)
	return rw, nil
}

func (c *caseResult) hasSeries() bool { return c.Stress != nil && len(c.Stress.Series) > 0 }

// figure formats a checker's figure: counts whole, the rest to four
// significant digits, never in exponent form.
func figure(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(roundSig(v, 4), 'f', -1, 64)
}

func roundSig(v float64, n int) float64 {
	if v == 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return v
	}
	p := math.Pow(10, float64(n)-math.Ceil(math.Log10(math.Abs(v))))
	return math.Round(v*p) / p
}

func secondsCell(s float64, known bool) cell {
	if !known {
		return cell{"-", -1}
	}
	return cell{fmt.Sprintf("%.2fs", s), s}
}

func classList(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// fileLink links to path: relative to the page when it lies in the report
// directory (so a copied or served report keeps its links), as a file URL
// otherwise (an agent's archive on this machine).
func fileLink(absDir, path string) link {
	l := link{Label: path}
	p := path
	if !filepath.IsAbs(p) {
		p = filepath.Join(absDir, p)
	}
	if rel, err := filepath.Rel(absDir, p); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		u := url.URL{Path: filepath.ToSlash(rel)}
		l.Href = template.URL(u.String()) // String puts "./" before a colon in the first segment
		return l
	}
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(p)}
	l.Href = template.URL(u.String())
	return l
}
