package main

import (
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/internal/agenttest"
	"github.com/etcd-functional/functional/tester"
)

// Issue 4 through the command: a recovery deadline far shorter than an
// election (100 ms against an election timeout of 1 s) fails SIGKILL_LEADER,
// and etcd-tester exits 1 with one clear error line on stderr.
func TestRecoveryDeadlineShorterThanElectionExits1(t *testing.T) {
	ta := agenttest.Start(t, 3)
	p := startTester(t, ta, "-recovery-timeout", "100ms", "-cases", "SIGKILL_LEADER", "-metrics-addr", "",
		"-election-timeout", "1s", "-case-delay", "0s", "-stress-warmup", "500ms")
	code, _ := p.wait(t, 3*time.Minute)
	if code != tester.ExitFail {
		t.Fatalf("exit status %d, want %d", code, tester.ExitFail)
	}
	lines := p.errorLines()
	if len(lines) != 1 {
		t.Fatalf("stderr has %d lines of etcd-tester's own, want one: %q", len(lines), lines)
	}
	if l := lines[0]; !strings.HasPrefix(l, "etcd-tester: tester: the run failed: ") || !strings.Contains(l, "1 of 1 cases failed") || !strings.HasSuffix(l, "(exit status 1)") {
		t.Errorf("error line %q, want the run failed, 1 of 1 cases, exit status 1", l)
	}
	r := p.results(t)
	if r.Passed || r.Interrupted || len(r.Rounds) != 1 || len(r.Rounds[0].Cases) != 1 {
		t.Fatalf("results: %+v", r)
	}
	if c := r.Rounds[0].Cases[0]; c.Passed || !strings.Contains(c.Error, "after recovery (timeout 100ms): cluster not healthy after") || len(c.Archives) != 3 {
		t.Errorf("case: passed %v, error %q, archives %v", c.Passed, c.Error, c.Archives)
	}
}

// -require-all-cases on loopback, where the BLACKHOLE cases cannot run:
// etcd-tester exits 1 before it starts a member, with one line naming the
// skipped cases and why.
func TestRequireAllCasesSkipExits1(t *testing.T) {
	ta := agenttest.Start(t, 3)
	p := startTester(t, ta, "-require-all-cases", "-metrics-addr", "")
	code, _ := p.wait(t, time.Minute)
	if code != tester.ExitFail {
		t.Fatalf("exit status %d, want %d", code, tester.ExitFail)
	}
	lines := p.errorLines()
	if len(lines) != 1 {
		t.Fatalf("stderr has %d lines of etcd-tester's own, want one: %q", len(lines), lines)
	}
	if l := lines[0]; !strings.Contains(l, "-require-all-cases") || !strings.Contains(l, "BLACKHOLE_PEER_PORT_TX_RX_LEADER (agents share host") || !strings.HasSuffix(l, "(exit status 1)") {
		t.Errorf("error line %q, want the skipped cases named with their reasons, exit status 1", l)
	}
	r := p.results(t)
	if r.Passed || len(r.Skipped) == 0 || r.Config == nil || !r.Config.RequireAllCases || r.TesterVersion == "" {
		t.Errorf("results: passed %v, skipped %v, config %+v, tester %q", r.Passed, r.Skipped, r.Config, r.TesterVersion)
	}
}
