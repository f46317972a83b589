package tester

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/client"
)

// readReport reads results.json from dir.
func readReport(t *testing.T, dir string) Report {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// With -require-all-cases, a case this environment cannot run (the
// BLACKHOLE cases with agents that only proxy) fails the run with exit 1
// before anything starts, naming each skipped case and why; results.json
// records the configuration that was asked for and the tester's build.
func TestRequireAllCasesFailsOnSkip(t *testing.T) {
	cfg := testConfig(3)
	cfg.RequireAllCases = true
	cfg.ConsistencyCheck = false
	cfg.Stresser.Names = []string{"nop"}
	cfg.ReportDir = filepath.Join(t.TempDir(), "r")
	fakes := map[string]*fakeAgent{}
	for _, ep := range cfg.AgentEndpoints {
		fakes[ep] = newFakeAgent(ep, "proxy")
	}
	cfg.DialAgent = func(ep string) (client.Agent, error) { return fakes[ep], nil }
	err := Run(context.Background(), cfg)
	if !errors.Is(err, ErrFailed) || ExitCode(err) != ExitFail {
		t.Fatalf("Run: %v (exit %d), want a failed run, exit %d", err, ExitCode(err), ExitFail)
	}
	for _, want := range []string{"-require-all-cases", "BLACKHOLE_PEER_PORT_TX_RX_ONE_FOLLOWER (agents share host", "FAILPOINTS ("} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	for ep, f := range fakes {
		if slices.Contains(f.Calls(), "Start") {
			t.Errorf("agent %s started etcd; the run must fail before bootstrapping", ep)
		}
	}
	r := readReport(t, cfg.ReportDir)
	if r.Passed || len(r.Skipped) == 0 || !strings.Contains(r.Error, "-require-all-cases") {
		t.Errorf("report: passed %v, skipped %v, error %q", r.Passed, r.Skipped, r.Error)
	}
	if r.TesterVersion == "" {
		t.Error("no tester_version in results.json")
	}
	c := r.Config
	if c == nil || c.ConsistencyCheck || !c.WatchCheck || c.Load || !slices.Equal(c.Stressers, []string{"nop"}) || !c.RequireAllCases ||
		c.Seed != cfg.Seed || c.CaseDelaySeconds != cfg.CaseDelay.Seconds() || c.RecoveryTimeoutSeconds != cfg.RecoveryTimeout.Seconds() ||
		c.LinearizabilityTimeoutSeconds != 60 || c.Limit != 1 || c.Cases == nil || !c.PastReads {
		t.Errorf("config in results.json: %+v", c)
	}
	var sum bytes.Buffer
	r.summary(&sum)
	for _, want := range []string{"checked: consistency OFF, watch on", "NO LOAD", "result: FAIL", "tester: "} {
		if !strings.Contains(sum.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, sum.String())
		}
	}
}

// A cluster whose members all started but never agree on a leader is
// etcd's failure: exit 1 (ErrFailed), not a setup error. Here nothing
// listens on the members' client ports, as when etcd starts and hangs.
func TestClusterNeverFormedIsAVerdictFailure(t *testing.T) {
	s, _ := fakeSettings(t, 3, func(c *Config) {
		c.ReportDir = filepath.Join(t.TempDir(), "r")
		c.RecoveryTimeout = 300 * time.Millisecond
		c.Stresser.Names = []string{"nop"}
	})
	s.minBootstrap = 300 * time.Millisecond
	tr := &tester{s: s, out: &bytes.Buffer{}, metrics: newMetrics()}
	err := tr.run(context.Background())
	var se *SetupError
	if !errors.Is(err, ErrFailed) || errors.As(err, &se) || ExitCode(err) != ExitFail {
		t.Fatalf("Run: %v (exit %d), want a verdict failure, exit %d", err, ExitCode(err), ExitFail)
	}
	if !strings.Contains(err.Error(), "never formed") || !strings.Contains(err.Error(), "not healthy") {
		t.Errorf("error %q does not say the cluster never formed and why", err)
	}

	// An agent that does not answer stays a setup error.
	s2, fakes := fakeSettings(t, 3, func(c *Config) { c.ReportDir = filepath.Join(t.TempDir(), "r") })
	fakes[1].setFail("Status", client.ErrUnreachable)
	tr = &tester{s: s2, out: &bytes.Buffer{}, metrics: newMetrics()}
	if err := tr.run(context.Background()); ExitCode(err) != ExitSetup {
		t.Errorf("unreachable agent: %v (exit %d), want exit %d", err, ExitCode(err), ExitSetup)
	}
}

// A round in progress has not passed: results.json, rewritten after every
// case, must not say passed: true before the round has ended.
func TestRoundPassedOnlyAtItsEnd(t *testing.T) {
	var r Report
	rr := r.startRound(1)
	r.addCase(rr, CaseResult{Case: "A", Index: 1, Passed: true})
	b, _ := json.Marshal(r.Rounds[0])
	if r.Rounds[0].Passed || !strings.Contains(string(b), `"passed":false`) || !strings.Contains(string(b), `"in_progress":true`) {
		t.Errorf("round in progress after a passed case: %s", b)
	}
	r.endRound(rr)
	if !r.Rounds[0].Passed || r.Rounds[0].InProgress {
		t.Errorf("ended round of passed cases: %+v", r.Rounds[0])
	}
	rr = r.startRound(2)
	r.addCase(rr, CaseResult{Case: "A", Index: 1, Passed: true})
	r.cutRound() // interrupted before its end
	if r.Rounds[1].Passed || r.Rounds[1].InProgress {
		t.Errorf("round cut short: %+v; want not passed, not in progress", r.Rounds[1])
	}
	rr = r.startRound(3)
	rr.Error = "defragment: boom"
	r.addCase(rr, CaseResult{Case: "A", Index: 1, Passed: true})
	r.endRound(rr)
	if r.Rounds[2].Passed {
		t.Error("a round whose own step failed passed")
	}
}
