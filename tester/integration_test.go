package tester_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/agenttest"
	"github.com/etcd-functional/functional/internal/etcdtest"
	"github.com/etcd-functional/functional/tester"
)

// These tests run tester.Run in-process against real etcd-agents (served
// on loopback by this process) running real etcd members. Every agent
// shares the host, so the BLACKHOLE cases are out of reach here.

// testAgents are real agents served by this process; internal/agenttest
// holds them, shared with cmd/etcd-tester's tests.
type testAgents struct{ *agenttest.Set }

func startAgents(t *testing.T, n int) *testAgents {
	t.Helper()
	return &testAgents{agenttest.Start(t, n)}
}

func (ta *testAgents) config(t *testing.T) tester.Config {
	cfg := tester.DefaultConfig()
	cfg.AgentEndpoints = ta.Endpoints
	cfg.ClientPorts = ta.ClientPorts
	cfg.PeerPorts = ta.PeerPorts
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.ReportDir = filepath.Join(t.TempDir(), "report")
	cfg.CaseDelay = time.Second
	cfg.Stresser.QPS = 300
	cfg.Stresser.Clients = 20
	cfg.Seed = 7
	return cfg
}

type results struct {
	Passed      bool                 `json:"passed"`
	Interrupted bool                 `json:"interrupted"`
	Seed        int64                `json:"seed"`
	Error       string               `json:"error"`
	Timeout     float64              `json:"recovery_timeout_seconds"`
	Rounds      []tester.RoundResult `json:"rounds"`
	Skipped     []tester.Skip        `json:"skipped"`
	Unhealed    []string             `json:"unhealed"`
}

// runPassing runs cfg within timeout, logs every case, fails the test if
// the run did not pass and returns its results.
func runPassing(t *testing.T, cfg tester.Config, timeout time.Duration) results {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := tester.Run(ctx, cfg)
	r := readResults(t, cfg.ReportDir)
	for _, rd := range r.Rounds {
		for _, c := range rd.Cases {
			t.Logf("round %d %-65s passed=%v recovery=%.2fs first-write=%.2fs targets=%v checks=%v err=%s",
				rd.Round, c.Case, c.Passed, c.RecoverySeconds, c.FirstWriteSeconds, c.Targets, c.Checks, c.Error)
		}
	}
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return r
}

func readResults(t *testing.T, dir string) results {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, tester.ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	var r results
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRunRealCluster(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{
		"SIGTERM_LEADER", "SIGKILL_ONE_FOLLOWER", "SIGSTOP_QUORUM", "SIGKILL_ALL",
		"SIGQUIT_AND_REMOVE_ONE_FOLLOWER", "SIGTERM_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT",
		"DELAY_PEER_PORT_TX_RX_LEADER", "RANDOM_DELAY_PEER_PORT_TX_RX_QUORUM",
		"NO_FAIL_WITH_STRESS", "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS",
	}
	cfg.DefragInterval = 1
	r := runPassing(t, cfg, 8*time.Minute)
	if !r.Passed || r.Interrupted || r.Seed != 7 || len(r.Rounds) != 1 || len(r.Rounds[0].Cases) != len(cfg.Cases) {
		t.Fatalf("results: %+v", r)
	}
	if !r.Rounds[0].Defragmented {
		t.Error("round 1 of -defrag-interval 1 not defragmented")
	}
	for _, c := range r.Rounds[0].Cases {
		faulty := c.Case[:2] != "NO"
		if faulty && (len(c.Targets) == 0 || c.InjectTime.IsZero() || c.RecoverTime.Before(c.InjectTime) || c.HealthyTime.Before(c.RecoverTime) || c.RecoverySeconds <= 0) {
			t.Errorf("%s: targets %v, times %v %v %v", c.Case, c.Targets, c.InjectTime, c.RecoverTime, c.HealthyTime)
		}
	}
	// The run terminated its cluster.
	for i, c := range ta.Clients {
		st, err := c.Status(context.Background())
		if err != nil || st.State != wire.StateTerminated {
			t.Errorf("agent %d after the run: %v %v", i, st.State, err)
		}
	}
}

// Interrupting a run while a fault is held heals it and leaves the cluster
// up, with an interrupted report.
func TestRunInterruptedHeals(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{"SIGSTOP_QUORUM"}
	cfg.CaseDelay = time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- tester.Run(ctx, cfg) }()

	// Wait for the fault, then interrupt.
	deadline := time.Now().Add(2 * time.Minute)
	for paused := 0; paused < 2; {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no quorum paused; Run: %v", <-errc)
		}
		time.Sleep(100 * time.Millisecond)
		paused = 0
		for _, c := range ta.Clients {
			if st, err := c.Status(ctx); err == nil && st.State == wire.StatePaused {
				paused++
			}
		}
	}
	cancel()
	var err error
	select {
	case err = <-errc:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return within a minute of the interrupt")
	}
	if !errors.Is(err, tester.ErrInterrupted) || tester.ExitCode(err) != 1 {
		t.Fatalf("Run: %v (exit %d), want interrupted", err, tester.ExitCode(err))
	}
	for i, c := range ta.Clients {
		st, err := c.Status(context.Background())
		if err != nil || st.State != wire.StateStarted {
			t.Errorf("agent %d after the interrupt: %v %v; want etcd running (resumed)", i, st.State, err)
		}
	}
	r := readResults(t, cfg.ReportDir)
	if !r.Interrupted || r.Passed || len(r.Unhealed) != 0 || len(r.Rounds) != 1 || r.Rounds[0].Cases[0].Passed {
		t.Errorf("report: %+v", r)
	}
	fmt.Fprintln(os.Stderr, "interrupted report:", r.Error)
}

// restartFails is a real agent whose Restart fails the first time, as an
// agent that cannot be reached would.
type restartFails struct {
	client.Agent
	failed *atomic.Bool
}

func (r restartFails) Restart(ctx context.Context) (int, error) {
	if r.failed.CompareAndSwap(false, true) {
		return 0, fmt.Errorf("agent %s: Restart: unreachable for 30s: dial: connection refused", r.Endpoint())
	}
	return r.Agent.Restart(ctx)
}

// A case that fails (its recovery cannot reach an agent) is recovered all
// the same as soon as the agent answers, every member is archived under
// the case's label, and the run goes on with a new cluster.
func TestRunFailedCaseArchivesAndGoesOn(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{"SIGKILL_ONE_FOLLOWER", "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS"}
	var failed atomic.Bool
	cfg.DialAgent = func(ep string) (client.Agent, error) {
		a, err := client.New(ep, client.Config{})
		return restartFails{a, &failed}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	err := tester.Run(ctx, cfg)
	if !errors.Is(err, tester.ErrFailed) || tester.ExitCode(err) != 1 {
		t.Fatalf("Run: %v (exit %d), want a failed run", err, tester.ExitCode(err))
	}
	r := readResults(t, cfg.ReportDir)
	if r.Passed || r.Interrupted || len(r.Rounds) != 1 || len(r.Rounds[0].Cases) != 2 || len(r.Unhealed) != 0 {
		t.Fatalf("results: %+v", r)
	}
	bad, next := r.Rounds[0].Cases[0], r.Rounds[0].Cases[1]
	if bad.Passed || !strings.Contains(bad.Error, "recover: heal stopped of "+bad.Targets[0]) || !strings.Contains(bad.Error, "unreachable") {
		t.Errorf("failed case: passed %v, error %q, targets %v", bad.Passed, bad.Error, bad.Targets)
	}
	if len(bad.Archives) != 3 {
		t.Fatalf("archives %v, want one per member", bad.Archives)
	}
	for name, dir := range bad.Archives {
		if !strings.Contains(dir, "round1_case1_SIGKILL_ONE_FOLLOWER") {
			t.Errorf("%s archived in %s, want the case's label in the name", name, dir)
		}
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s archive: %v", name, err)
		}
	}
	if !next.Passed {
		t.Errorf("the case after the failure, on a new cluster: %q", next.Error)
	}
}

// TestRunFailpoints runs the FAILPOINTS cases against real agents and an
// etcd built with failpoints (make build FAILPOINTS=1): the failpoint is
// armed, fires (a panic takes its members down, a sleep slows the leader's
// disk), is disarmed, the members it made panic are restarted, and the
// cluster recovers and checks out.
func TestRunFailpoints(t *testing.T) {
	bin, err := etcdtest.ReleaseBinary("v3.7.3-failpoints")
	if err != nil {
		t.Skipf("no failpoint build: %v", err)
	}
	t.Setenv(etcdtest.EnvBinary, bin)
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{"FAILPOINTS", "FAILPOINTS_WITH_DISK_IO_LATENCY"}
	cfg.Limit = 2
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	err = tester.Run(ctx, cfg)
	r := readResults(t, cfg.ReportDir)
	for _, rd := range r.Rounds {
		for _, c := range rd.Cases {
			t.Logf("round %d %-32s passed=%v recovery=%.2fs targets=%v err=%s", rd.Round, c.Case, c.Passed, c.RecoverySeconds, c.Targets, c.Error)
			if c.Passed && (len(c.Targets) == 0 || c.HealthyTime.IsZero()) {
				t.Errorf("%s: passed without targets or recovery: %+v", c.Case, c)
			}
		}
	}
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(r.Rounds) != 2 || len(r.Skipped) != 0 {
		t.Fatalf("rounds %d, skipped %v", len(r.Rounds), r.Skipped)
	}
}

// TestRunCatchesHistoricalBugs runs the suite on real etcd releases with
// bugs that shipped, and passes only if the suite fails them for the right
// reason: v3.6.16 and v3.5.15 diverge for good under the load's past-read
// txns once a compaction has happened (etcd #18667: the member serving the
// txn refuses it as compacted, the others apply it), which the hash check
// must name; v3.5.15 also loses the delete at the compaction revision from
// a watch that starts there (etcd #18089), which the compaction on a
// tombstone after the first case must name. The releases are built by
// `make etcd-releases` (bin/etcd-vX.Y.Z); a release not built is skipped.
func TestRunCatchesHistoricalBugs(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    []string // in the run's error, all of them
	}{
		{"v3.6.16", []string{"hash check", "differ"}},
		{"v3.5.15", []string{"etcd #18089", "resumable"}},
	} {
		t.Run(tc.release, func(t *testing.T) {
			bin, err := etcdtest.ReleaseBinary(tc.release)
			if err != nil {
				t.Skipf("%v", err)
			}
			t.Setenv(etcdtest.EnvBinary, bin)
			ta := startAgents(t, 3)
			cfg := ta.config(t)
			// The same quiet case three times: the first compacts on a
			// tombstone, the next ones read the compacted past.
			cfg.Cases = []string{"NO_FAIL_WITH_STRESS"}
			cfg.ScheduleCases = []int{0, 0, 0}
			cfg.Stresser.QPS = 600
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			err = tester.Run(ctx, cfg)
			r := readResults(t, cfg.ReportDir)
			var all []string
			for _, rd := range r.Rounds {
				for _, c := range rd.Cases {
					t.Logf("case %d %s passed=%v: %s", c.Index, c.Case, c.Passed, c.Error)
					all = append(all, c.Error)
				}
			}
			if err == nil || r.Passed {
				t.Fatalf("etcd %s passed the suite; want it failed (%s)", tc.release, strings.Join(tc.want, ", "))
			}
			got := strings.Join(all, "\n")
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("etcd %s failed, but no case's error says %q:\n%s", tc.release, w, got)
				}
			}
		})
	}
}

// The leader cases on real etcd: each passes with its target verified as
// leader (SIGTERM hands leadership over, SIGKILL leaves an election to
// run), and the figures say what happened: killing the leader leaves the
// cluster without writes for about an election. (A killed follower stops
// no write either, but a probe write slower than 500 ms under -race on a
// loaded machine would count as an outage: not asserted.)
func TestRunLeaderCasesAndFigures(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{"SIGKILL_LEADER", "SIGTERM_LEADER", "SIGKILL_ONE_FOLLOWER", "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS"}
	cfg.StressWarmup = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := tester.Run(ctx, cfg); err != nil {
		t.Fatalf("Run: %v", err)
	}
	r := readResults(t, cfg.ReportDir)
	for _, c := range r.Rounds[0].Cases {
		if c.UnavailabilitySeconds == nil {
			t.Errorf("%s: no unavailability measured", c.Case)
			continue
		}
		u := *c.UnavailabilitySeconds
		t.Logf("%s: unavailable %.3fs, recovery %.3fs, first write %.3fs", c.Case, u, c.RecoverySeconds, c.FirstWriteSeconds)
		switch c.Case {
		case "SIGKILL_LEADER":
			// Followers wait at least an election timeout (1 s) less
			// a heartbeat before they elect a new leader.
			if u < 0.8 {
				t.Errorf("SIGKILL_LEADER unavailable %.3fs; want about an election (>= 0.8s)", u)
			}
		}
	}
}

// A replay on real etcd: the recorded run's cases hit the same members,
// with the same faults drawn, in the same order.
func TestRunReplayHitsSameMembers(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{"SIGKILL_ONE_FOLLOWER", "RANDOM_DELAY_PEER_PORT_TX_RX_QUORUM", "SIGSTOP_ONE_FOLLOWER"}
	cfg.StressWarmup = 500 * time.Millisecond
	cfg.Seed = 42
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := tester.Run(ctx, cfg); err != nil {
		t.Fatalf("Run: %v", err)
	}
	first := readResults(t, cfg.ReportDir)

	replay := ta.config(t)
	replay.Replay = filepath.Join(cfg.ReportDir, tester.ResultsFile)
	replay.Seed = 1 // the record's seed wins
	replay.StressWarmup = cfg.StressWarmup
	if err := tester.Run(ctx, replay); err != nil {
		t.Fatalf("replay: %v", err)
	}
	second := readResults(t, replay.ReportDir)
	if second.Seed != 42 || len(second.Rounds) != 1 || len(second.Rounds[0].Cases) != 3 {
		t.Fatalf("replay results: seed %d, rounds %+v", second.Seed, second.Rounds)
	}
	for k, c := range first.Rounds[0].Cases {
		r := second.Rounds[0].Cases[k]
		t.Logf("%s: run hit %v with %v; replay hit %v with %v (notes %q)", c.Case, c.Targets, c.Faults, r.Targets, r.Faults, r.ReplayNotes)
		if r.Case != c.Case || !slices.Equal(r.Targets, c.Targets) || !slices.Equal(r.Faults, c.Faults) || r.LoadSeed != c.LoadSeed {
			t.Errorf("case %d: replay %s on %v with %v (load seed %d), run %s on %v with %v (load seed %d)",
				k+1, r.Case, r.Targets, r.Faults, r.LoadSeed, c.Case, c.Targets, c.Faults, c.LoadSeed)
		}
	}
}

// The until-snapshot variants of the delay and removal faults, and the
// leader's removal, run on real members: each targeted member must catch
// up (from a snapshot where the fault held past one) and the checks pass.
func TestRunUntilSnapshotAndRemoveLeader(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{
		"DELAY_PEER_PORT_TX_RX_LEADER_UNTIL_TRIGGER_SNAPSHOT",
		"RANDOM_DELAY_PEER_PORT_TX_RX_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT",
		"SIGQUIT_AND_REMOVE_LEADER",
		"SIGQUIT_AND_REMOVE_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT",
		"SIGQUIT_AND_REMOVE_LEADER_UNTIL_TRIGGER_SNAPSHOT",
	}
	// The watch checker can find a watcher ahead of its ground truth
	// after a leader's long delay ("saw revision N, beyond the ground
	// truth") and answer unknown; that is the checker's, not these
	// faults', and is left to it.
	cfg.AllowUnknown = true
	r := runPassing(t, cfg, 8*time.Minute)
	if !r.Passed || len(r.Rounds) != 1 || len(r.Rounds[0].Cases) != len(cfg.Cases) {
		t.Fatalf("results: %+v", r)
	}
	for _, c := range r.Rounds[0].Cases {
		if len(c.Targets) == 0 || c.RecoverySeconds <= 0 {
			t.Errorf("%s: targets %v, recovery %v", c.Case, c.Targets, c.RecoverySeconds)
		}
	}
}

// EXTERNAL runs the user's program with the round, and the logs checker
// reads every member's real etcd log after every case — a SIGQUIT's stack
// dump and a SIGKILL included — without a false alarm.
func TestRunExternalAndLogCheck(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	cfg.ExternalExecPath = filepath.Join(dir, "fault.sh")
	if err := os.WriteFile(cfg.ExternalExecPath, []byte("#!/bin/sh\necho \"$@\" >> "+calls+"\necho \"fault $1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Cases = []string{"EXTERNAL", "SIGQUIT_AND_REMOVE_ONE_FOLLOWER", "SIGKILL_LEADER"}
	cfg.AllowUnknown = true // see TestRunUntilSnapshotAndRemoveLeader
	r := runPassing(t, cfg, 5*time.Minute)
	if b, _ := os.ReadFile(calls); string(b) != "enable 1\ndisable 1\n" {
		t.Errorf("program called with %q, want enable 1 then disable 1", b)
	}
	for _, c := range r.Rounds[0].Cases {
		var names []string
		for _, ck := range c.Checks {
			names = append(names, ck.Name)
			if ck.Name == "external" && (len(ck.Files) != 1 || ck.Figures["enable exit code"] != 0) {
				t.Errorf("%s: external check %+v", c.Case, ck)
			}
		}
		if !slices.Contains(names, "logs") || (c.Case == "EXTERNAL") != slices.Contains(names, "external") {
			t.Errorf("%s: checks %v", c.Case, names)
		}
	}
}

// The runner stressers keep their properties through real faults: a
// leader killed and a leader's peer traffic delayed break no lock, no
// election, no kept lease and no watch.
func TestRunRunnerStressers(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Stresser.Names = []string{"keys", "election-runner", "lock-racer-runner", "lease-runner", "watch-runner"}
	cfg.Cases = []string{"SIGKILL_LEADER", "DELAY_PEER_PORT_TX_RX_LEADER", "SIGQUIT_AND_REMOVE_ONE_FOLLOWER"}
	cfg.AllowUnknown = true // see TestRunUntilSnapshotAndRemoveLeader
	runPassing(t, cfg, 5*time.Minute)
}

// The restore from a snapshot loses nothing written before it: the case
// reads back every marker it wrote before the snapshot (it fails
// otherwise), and the restored cluster then takes a fault under load.
func TestRunRestoreFromSnapshot(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{"SIGQUIT_AND_REMOVE_QUORUM_AND_RESTORE_LEADER_SNAPSHOT_FROM_SCRATCH", "SIGKILL_ONE_FOLLOWER"}
	cfg.AllowUnknown = true // see TestRunUntilSnapshotAndRemoveLeader
	r := runPassing(t, cfg, 5*time.Minute)
	if !r.Passed || len(r.Rounds) != 1 || len(r.Rounds[0].Cases) != 2 {
		t.Fatalf("results: %+v", r)
	}
	if got := r.Rounds[0].Cases[0].Targets; len(got) != 3 {
		t.Errorf("restore case targets %v, want every member (all wiped)", got)
	}
}
