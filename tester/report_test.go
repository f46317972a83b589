package tester

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/stresser"
)

func sampleReport() Report {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	return Report{
		Seed: 42, RecoveryTimeoutSeconds: 30, Started: t0,
		Agents:   []string{"127.0.0.1:19027"},
		Schedule: []string{"SIGKILL_LEADER", "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS"},
		Rounds: []RoundResult{{Round: 1, Cases: []CaseResult{
			{Case: "SIGKILL_LEADER", Index: 1, Passed: true, Targets: []string{"etcd-1"},
				InjectTime: t0, RecoverTime: t0.Add(3 * time.Second), HealthyTime: t0.Add(4230 * time.Millisecond),
				RecoverySeconds: 1.23, FirstWriteSeconds: 1.1, UnavailabilitySeconds: ptr(2.5),
				Stress: &stresser.Stats{QPS: 998, Success: 4000, Failure: 12}},
			{Case: "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS", Index: 2, Passed: false, Error: "cluster not healthy", Targets: []string{},
				Archives: map[string]string{"etcd-0": "/a/round1_case2_NO_FAIL"}},
		}}},
		Skipped: []Skip{{"BLACKHOLE_PEER_PORT_TX_RX_ALL", "agents share host 127.0.0.1"}},
	}
}

func TestReportJSONShape(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "report")
	r := sampleReport()
	if err := r.write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Seed            *int64   `json:"seed"`
		Passed          *bool    `json:"passed"`
		Interrupted     *bool    `json:"interrupted"`
		RecoveryTimeout *float64 `json:"recovery_timeout_seconds"`
		Rounds          []struct {
			Round int `json:"round"`
			Cases []struct {
				Case              string            `json:"case"`
				Passed            bool              `json:"passed"`
				Error             string            `json:"error"`
				Targets           []string          `json:"targets"`
				InjectTime        string            `json:"inject_time"`
				RecoverTime       string            `json:"recover_time"`
				HealthyTime       string            `json:"healthy_time"`
				RecoverySeconds   float64           `json:"recovery_seconds"`
				FirstWriteSeconds float64           `json:"first_write_seconds"`
				Unavailability    *float64          `json:"unavailability_seconds"`
				Stress            map[string]any    `json:"stress"`
				Archives          map[string]string `json:"archives"`
			} `json:"cases"`
		} `json:"rounds"`
		Skipped []map[string]string `json:"skipped"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Seed == nil || *got.Seed != 42 || got.Passed == nil || got.Interrupted == nil || got.RecoveryTimeout == nil || *got.RecoveryTimeout != 30 {
		t.Fatalf("top level: %s", b)
	}
	c := got.Rounds[0].Cases[0]
	if got.Rounds[0].Round != 1 || c.Case != "SIGKILL_LEADER" || !c.Passed || c.Targets[0] != "etcd-1" || c.RecoverySeconds != 1.23 || c.FirstWriteSeconds != 1.1 || c.Unavailability == nil || *c.Unavailability != 2.5 {
		t.Errorf("case: %+v", c)
	}
	for _, ts := range []string{c.InjectTime, c.RecoverTime, c.HealthyTime} {
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
			t.Errorf("time %q: %v", ts, err)
		}
	}
	if c.Stress["qps"] != 998.0 || c.Stress["success"] != 4000.0 || c.Stress["failure"] != 12.0 {
		t.Errorf("stress: %v", c.Stress)
	}
	f := got.Rounds[0].Cases[1]
	if f.Passed || f.Error == "" || f.Archives["etcd-0"] != "/a/round1_case2_NO_FAIL" || f.Stress != nil || f.InjectTime != "" || f.Unavailability != nil {
		t.Errorf("failed case: %+v", f)
	}
	if got.Skipped[0]["case"] != "BLACKHOLE_PEER_PORT_TX_RX_ALL" || got.Skipped[0]["reason"] == "" {
		t.Errorf("skipped: %v", got.Skipped)
	}
	// Written atomically: nothing but the files, no temporary left.
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"index.html", "results.json", "summary.txt"}; !slices.Equal(names, want) {
		t.Errorf("report dir holds %v, want %v", names, want)
	}
}

func TestSummaryTable(t *testing.T) {
	r := sampleReport()
	var b strings.Builder
	r.summary(&b)
	out := b.String()
	lines := strings.Split(out, "\n")
	for _, w := range []string{"ROUND", "CASE", "RESULT", "UNAVAILABLE", "RECOVERY", "STRESS QPS", "STRESS ERRORS"} {
		if !strings.Contains(lines[0], w) {
			t.Errorf("header %q lacks %s", lines[0], w)
		}
	}
	if f := strings.Fields(lines[1]); len(f) < 9 || f[1] != "SIGKILL_LEADER" || f[2] != "PASS" || f[3] != "2.50s" || f[4] != "1.23s" || f[6] != "998" || f[7] != "12" || f[8] != "etcd-1" {
		t.Errorf("pass line %q", lines[1])
	}
	if f := strings.Fields(lines[2]); f[2] != "FAIL" || f[3] != "-" || f[4] != "-" || f[6] != "-" {
		t.Errorf("fail line %q", lines[2])
	}
	for _, w := range []string{"skipped BLACKHOLE_PEER_PORT_TX_RX_ALL: agents share host", "failed round 1 case 2 NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS: cluster not healthy", "result: FAIL"} {
		if !strings.Contains(out, w) {
			t.Errorf("summary lacks %q:\n%s", w, out)
		}
	}
	r.Interrupted = true
	b.Reset()
	r.summary(&b)
	if !strings.Contains(b.String(), "result: INTERRUPTED") {
		t.Errorf("interrupted summary:\n%s", b.String())
	}
}

// Checks are additive: a case's checks carry name, verdict, error, figures
// and files; a case without checks has no "checks" key at all.
func TestReportChecksField(t *testing.T) {
	b, err := json.Marshal(CaseResult{Case: "X", Checks: []CheckResult{{Name: "history", Verdict: VerdictUnknown, Error: "cut short", Figures: map[string]float64{"ops": 3}, Files: []string{"h.json"}}}})
	if err != nil {
		t.Fatal(err)
	}
	want := `"checks":[{"name":"history","verdict":"unknown","error":"cut short","figures":{"ops":3},"files":["h.json"]}]`
	if !strings.Contains(string(b), want) {
		t.Errorf("case JSON %s\nwant it to hold %s", b, want)
	}
	if b, _ := json.Marshal(CaseResult{Case: "X"}); strings.Contains(string(b), "checks") {
		t.Errorf("a case without checks: %s", b)
	}
}

func ptr[T any](v T) *T { return &v }
