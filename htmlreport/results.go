package htmlreport

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The types below are this package's view of results.json. They mirror
// tester.Report, tester.RoundResult, tester.CaseResult and stresser.Stats
// field by field (by JSON name) but are declared here, because the tester
// calls this package after every case and must not be imported by it.
// results.json is therefore the contract: a field the tester adds is
// ignored until it is added here, and a field the tester drops decodes as
// its zero value, which every renderer below treats as "not recorded".

// ResultsFile is the file Write and Handler read in the report directory.
const ResultsFile = "results.json"

type results struct {
	Seed                   int64     `json:"seed"`
	Passed                 bool      `json:"passed"`
	Interrupted            bool      `json:"interrupted"`
	Error                  string    `json:"error"`
	Started                time.Time `json:"started"`
	Finished               time.Time `json:"finished"`
	RecoveryTimeoutSeconds float64   `json:"recovery_timeout_seconds"`
	Agents                 []string  `json:"agents"`
	Schedule               []string  `json:"schedule"`
	Rounds                 []round   `json:"rounds"`
	Skipped                []skip    `json:"skipped"`
	Findings               []finding `json:"findings"`
	FindingsDropped        int       `json:"findings_dropped"`
	Unhealed               []string  `json:"unhealed"`
	// Announced additions; each may be absent. Their shape is not fixed
	// yet, so they are kept raw and shown as they come.
	Config        json.RawMessage `json:"config"`
	EtcdVersions  json.RawMessage `json:"etcd_versions"`
	TesterVersion string          `json:"tester_version"`
}

// finding is tester.RunFinding: something etcd did that no case failed
// for (members ready only after a client write).
type finding struct {
	Round   int       `json:"round"`
	Index   int       `json:"index"`
	Case    string    `json:"case"`
	What    string    `json:"what"`
	Members []string  `json:"members"`
	Time    time.Time `json:"time"`
	Detail  string    `json:"detail"`
}

type skip struct {
	Case   string `json:"case"`
	Reason string `json:"reason"`
}

type round struct {
	Round           int          `json:"round"`
	Passed          bool         `json:"passed"`
	Cases           []caseResult `json:"cases"`
	CompactRevision int64        `json:"compact_revision"`
	Defragmented    bool         `json:"defragmented"`
	Error           string       `json:"error"`
}

type caseResult struct {
	Case              string            `json:"case"`
	Index             int               `json:"index"`
	Passed            bool              `json:"passed"`
	Error             string            `json:"error"`
	Targets           []string          `json:"targets"`
	InjectTime        time.Time         `json:"inject_time"`
	RecoverTime       time.Time         `json:"recover_time"`
	HealthyTime       time.Time         `json:"healthy_time"`
	RecoverySeconds   float64           `json:"recovery_seconds"`
	FirstWriteSeconds float64           `json:"first_write_seconds"`
	Stress            *stats            `json:"stress"`
	Archives          map[string]string `json:"archives"`
	// Announced additions.
	Checks                []check  `json:"checks"`
	UnavailabilitySeconds *float64 `json:"unavailability_seconds"`
}

type check struct {
	Name    string             `json:"name"`
	Verdict string             `json:"verdict"` // pass, fail or unknown
	Error   string             `json:"error"`
	Figures map[string]float64 `json:"figures"`
	Files   []string           `json:"files"`
}

type stats struct {
	Start         time.Time        `json:"start"`
	DurationNS    int64            `json:"duration_ns"`
	Success       int64            `json:"success"`
	Failure       int64            `json:"failure"`
	Canceled      int64            `json:"canceled"`
	Unexpected    int64            `json:"unexpected"`
	QPS           float64          `json:"qps"`
	Errors        map[string]int64 `json:"errors"`
	Latency       latency          `json:"latency"`
	Series        []second         `json:"series"`
	SeriesDropped int              `json:"series_dropped"`
}

type latency struct {
	Count int64 `json:"count"`
	P50   int64 `json:"p50_ns"`
	P90   int64 `json:"p90_ns"`
	P99   int64 `json:"p99_ns"`
	Max   int64 `json:"max_ns"`
}

type second struct {
	Unix    int64            `json:"unix"`
	Success int64            `json:"success"`
	Failure int64            `json:"failure"`
	P50     int64            `json:"p50_ns"`
	P99     int64            `json:"p99_ns"`
	Errors  map[string]int64 `json:"errors"`
}

func readResults(dir string) (*results, error) {
	return readResultsFile(filepath.Join(dir, ResultsFile))
}

func readResultsFile(path string) (*results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("htmlreport: %w", err)
	}
	var r results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("htmlreport: %s: %w", path, err)
	}
	return &r, nil
}

// status is the run's verdict in one word.
func (r *results) status() string {
	switch {
	case r.Interrupted:
		return "INTERRUPTED"
	case r.Finished.IsZero():
		return "RUNNING"
	case r.Passed:
		return "PASS"
	}
	return "FAIL"
}

// lastActivity is the latest time a case recorded, zero if none did.
func (r *results) lastActivity() time.Time {
	var last time.Time
	for _, rd := range r.Rounds {
		for _, c := range rd.Cases {
			for _, t := range []time.Time{c.InjectTime, c.RecoverTime, c.HealthyTime} {
				if t.After(last) {
					last = t
				}
			}
			if s := c.Stress; s != nil {
				if end := s.Start.Add(time.Duration(s.DurationNS)); s.DurationNS > 0 && end.After(last) {
					last = end
				}
			}
		}
	}
	return last
}

// replayArgs are the flags that replay the run's seed and schedule; the
// other settings are the run's configuration, shown beside it.
func (r *results) replayArgs() string {
	args := []string{fmt.Sprintf("-seed %d", r.Seed)}
	var names []string
	index := map[string]int{}
	var order []string
	repeated := false
	for _, n := range r.Schedule {
		if i, ok := index[n]; ok {
			order = append(order, fmt.Sprint(i))
			repeated = true
			continue
		}
		index[n] = len(names)
		order = append(order, fmt.Sprint(len(names)))
		names = append(names, n)
	}
	if len(names) > 0 {
		args = append(args, "-cases "+strings.Join(names, ","))
	}
	if repeated {
		args = append(args, "-schedule-cases "+strings.Join(order, ","))
	}
	if n := len(r.Rounds); n > 0 && !r.Interrupted && !r.Finished.IsZero() {
		args = append(args, fmt.Sprintf("-limit %d", n))
	}
	return strings.Join(args, " ")
}

// keyValues flattens a JSON object into sorted "a.b = v" lines, so that a
// configuration of any shape can be shown; anything else is shown as is.
func keyValues(raw json.RawMessage) [][2]string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return [][2]string{{"", string(raw)}}
	}
	var out [][2]string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if m, ok := v.(map[string]any); ok && len(m) > 0 {
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				walk(p, m[k])
			}
			return
		}
		out = append(out, [2]string{prefix, scalar(v)})
	}
	walk("", v)
	return out
}

// scalar formats one JSON value on a line: strings bare, lists
// comma-separated, the rest as JSON.
func scalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = scalar(e)
		}
		return strings.Join(parts, ", ")
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// versions shows etcd_versions whatever its shape: a string, a list, or a
// map from member to version.
func versions(raw json.RawMessage) string {
	kv := keyValues(raw)
	if len(kv) == 1 && kv[0][0] == "" {
		return kv[0][1]
	}
	same := len(kv) > 1
	for _, p := range kv {
		same = same && p[1] == kv[0][1]
	}
	if same {
		return kv[0][1] + " (every member)"
	}
	var parts []string
	for _, p := range kv {
		parts = append(parts, p[0]+": "+p[1])
	}
	return strings.Join(parts, ", ")
}
