package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/stresser"
	"github.com/etcd-functional/functional/tester"
)

// TestReportFromRendersAnOldRun runs `etcd-tester -report-from
// results.json -report-dir DIR` on a results.json made from the tester's
// own types, so that the page's reading of results.json stays the
// tester's writing of it; nothing else runs (no agents are dialled).
func TestReportFromRendersAnOldRun(t *testing.T) {
	start := time.Date(2026, 11, 30, 14, 0, 0, 0, time.UTC)
	var series []stresser.SecondStat
	for i := 0; i < 8; i++ {
		series = append(series, stresser.SecondStat{Unix: start.Unix() + int64(i), Success: 900, Failure: int64(i % 3),
			P50: 2 * time.Millisecond, P99: 40 * time.Millisecond, Errors: map[string]int64{stresser.ClassDeadline: int64(i % 3)}})
	}
	inject := start.Add(time.Second)
	rep := tester.Report{Seed: 77, Started: start, Finished: start.Add(time.Minute), RecoveryTimeoutSeconds: 30,
		Agents: []string{"127.0.0.1:19027"}, Schedule: []string{"SIGKILL_LEADER", "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS"},
		Rounds: []tester.RoundResult{{Round: 1, Cases: []tester.CaseResult{
			{Case: "SIGKILL_LEADER", Index: 1, Targets: []string{"s2"}, InjectTime: inject, RecoverTime: inject.Add(3 * time.Second),
				HealthyTime: inject.Add(5 * time.Second), RecoverySeconds: 2, FirstWriteSeconds: 1.5, Error: "after recovery: boom",
				Stress:   &stresser.Stats{Start: start, Duration: 8 * time.Second, Success: 7200, QPS: 900, Series: series},
				Archives: map[string]string{"s2": "/tmp/archive/s2"}},
			{Case: "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS", Index: 2, Passed: true, Targets: []string{}},
		}}},
		Skipped: []tester.Skip{{Case: "SIGQUIT_AND_REMOVE_LEADER", Reason: "needs -peer-proxy"}}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "results.json")
	if err := os.WriteFile(src, b, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "page")
	out, err := exec.Command(testerBinary(t), "-report-from", src, "-report-dir", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("etcd-tester -report-from: %v\n%s", err, out)
	}
	page, err := os.ReadFile(filepath.Join(dir, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{">FAIL<", "SIGKILL_LEADER", "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS", "after recovery: boom",
		"file:///tmp/archive/s2", "-seed 77", "needs -peer-proxy", `<svg class="plot"`, "deadline_exceeded"} {
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("page lacks %q", want)
		}
	}

	// A missing results.json is a setup error (exit 2) that names the file.
	cmd := exec.Command(testerBinary(t), "-report-from", filepath.Join(dir, "nope.json"), "-report-dir", dir)
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != tester.ExitSetup || !strings.Contains(string(out), "nope.json") {
		t.Errorf("missing results.json: %v\n%s", err, out)
	}
	_, opts, err := parseFlags([]string{"-report-from", src}, &bytes.Buffer{})
	if err != nil || opts.fromJSON != src {
		t.Errorf("-report-from parsed as %q, %v", opts.fromJSON, err)
	}
}
