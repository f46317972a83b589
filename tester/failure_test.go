package tester_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/tester"
)

// A recovery deadline far shorter than an election fails the case (issue
// 4): SIGKILL_LEADER recovered at once (the restarted leader rejoins as a
// follower, and the survivors grant no vote before their election timeout
// of 1 s has run out) against a 100 ms deadline. The run fails with exit
// status 1, the case's error names the unhealthy members and says the
// deadline ran out, and every member was archived under the case's label.
func TestRecoveryDeadlineShorterThanElectionFailsCase(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{"SIGKILL_LEADER"}
	cfg.ElectionTimeout = time.Second
	cfg.RecoveryTimeout = 100 * time.Millisecond
	cfg.CaseDelay = 0
	cfg.StressWarmup = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := tester.Run(ctx, cfg)
	if code := tester.ExitCode(err); code != tester.ExitFail || !errors.Is(err, tester.ErrFailed) {
		t.Fatalf("Run: %v (exit %d), want a failed run (exit %d)", err, code, tester.ExitFail)
	}

	r := readResults(t, cfg.ReportDir)
	if r.Passed || r.Interrupted || len(r.Rounds) != 1 || len(r.Rounds[0].Cases) != 1 || r.Timeout != 0.1 {
		t.Fatalf("results: %+v", r)
	}
	c := r.Rounds[0].Cases[0]
	t.Logf("case error: %s", c.Error)
	if c.Passed || !c.HealthyTime.IsZero() || len(c.Targets) != 1 {
		t.Fatalf("case: passed %v, healthy at %v, targets %v; want failed, never healthy, one target", c.Passed, c.HealthyTime, c.Targets)
	}
	// "after recovery (timeout 100ms): cluster not healthy after 100ms:
	// etcd-1: no leader; ...": the deadline is the recovery's, and each
	// unhealthy member is named with its reason; the killed leader is
	// one of them.
	for _, want := range []string{"after recovery (timeout 100ms)", "cluster not healthy after", c.Targets[0] + ": "} {
		if !strings.Contains(c.Error, want) {
			t.Errorf("case error %q does not say %q", c.Error, want)
		}
	}

	if len(c.Archives) != 3 {
		t.Fatalf("archives %v, want every member's", c.Archives)
	}
	for i, base := range ta.BaseDirs {
		name := "etcd-" + string(rune('0'+i))
		dir, ok := c.Archives[name]
		if !ok {
			t.Errorf("%s not archived: %v", name, c.Archives)
			continue
		}
		if !strings.HasPrefix(dir, base+string(filepath.Separator)) || !strings.Contains(filepath.Base(dir), "round1_case1_SIGKILL_LEADER") {
			t.Errorf("%s archived in %s; want under its agent's base dir %s, named after the case", name, dir, base)
		}
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			t.Errorf("%s archive %s: %v", name, dir, err)
		}
	}
}
