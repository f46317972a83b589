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

	"github.com/etcd-functional/functional/agent/wire"
)

func startAll(t *testing.T, fakes []*fakeAgent) {
	t.Helper()
	for _, f := range fakes {
		if _, err := f.Start(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		f.st.PeerProxy = true
		f.calls = nil
		f.mu.Unlock()
	}
}

func TestFaultsRecordedAndHealedExactly(t *testing.T) {
	ctx := context.Background()
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)

	if err := c.Inject(ctx, 0, sigterm); err != nil {
		t.Fatal(err)
	}
	if err := c.Inject(ctx, 1, paused{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Inject(ctx, 2, blackhole{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Inject(ctx, 2, delayed{time.Second, 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	want := []string{"etcd-0: stopped", "etcd-1: paused", "etcd-2: peer port dropped", "etcd-2: peer traffic delayed"}
	if got := c.Faults(); !slices.Equal(got, want) {
		t.Fatalf("faults %v, want %v", got, want)
	}
	if got := c.Targets(); !slices.Equal(got, []string{"etcd-0", "etcd-1", "etcd-2"}) {
		t.Errorf("targets %v", got)
	}
	if got := c.healthyMembers(); len(got) != 0 {
		t.Errorf("members without a fault: %v", got)
	}

	if err := c.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	if f := c.Faults(); len(f) != 0 {
		t.Errorf("after Heal: %v", f)
	}
	for i, wantCalls := range [][]string{
		{"Stop", "Status", "Restart"},
		{"Pause", "Resume"},
		// Newest first: the delay comes off before the port opens.
		{"DropPort", "Status", "SetLatency", "RemoveLatency", "RecoverPort"},
	} {
		if got := fakes[i].Calls(); !slices.Equal(got, wantCalls) {
			t.Errorf("etcd-%d calls %v, want %v", i, got, wantCalls)
		}
		st, _ := fakes[i].Status(ctx)
		if st.State != wire.StateStarted || len(st.DroppedPorts) > 0 || st.Latency != 0 {
			t.Errorf("etcd-%d after Heal: %+v", i, st)
		}
	}
	if got := fakes[2].st.DroppedPorts; len(got) != 0 {
		t.Errorf("ports still dropped: %v", got)
	}
}

func TestFaultRecordedWhenReplyLost(t *testing.T) {
	ctx := context.Background()
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)

	// The kill happened but its reply was lost: it must still be healed.
	fakes[0].lost["Kill"] = true
	if err := c.Inject(ctx, 0, sigkill); err == nil || !strings.Contains(err.Error(), "etcd-0") {
		t.Fatalf("kill with a lost reply: %v", err)
	}
	// The pause was refused: nothing to heal.
	fakes[1].setFail("Pause", errors.New("refused"))
	if err := c.Inject(ctx, 1, paused{}); err == nil {
		t.Fatal("refused pause succeeded")
	}
	if got := c.Faults(); !slices.Equal(got, []string{"etcd-0: stopped"}) {
		t.Fatalf("faults %v, want only etcd-0 stopped", got)
	}

	// An undo that fails keeps its record and names the member...
	fakes[0].setFail("Restart", errors.New("agent busy"))
	err := c.Heal(ctx)
	if err == nil || !strings.Contains(err.Error(), "heal stopped of etcd-0") || !strings.Contains(err.Error(), "agent busy") {
		t.Fatalf("failed heal: %v", err)
	}
	if len(c.Faults()) != 1 {
		t.Fatalf("record lost after a failed heal: %v", c.Faults())
	}
	// ...and an undo whose reply is lost but that worked is done.
	fakes[0].setFail("Restart", nil)
	fakes[0].lost["Restart"] = true
	if err := c.Heal(ctx); err != nil {
		t.Fatalf("heal whose reply was lost: %v", err)
	}
	if len(c.Faults()) != 0 {
		t.Errorf("faults left: %v", c.Faults())
	}
}

func TestDelayNeedsAgentProxy(t *testing.T) {
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	fakes[1].st.PeerProxy = false
	err := c.Inject(context.Background(), 1, delayed{time.Second, 0})
	if err == nil || !strings.Contains(err.Error(), "does not proxy") || len(c.Faults()) != 0 {
		t.Errorf("delay without the agent's proxy: %v, faults %v", err, c.Faults())
	}
}

func TestArchiveForgetsProcessFaults(t *testing.T) {
	ctx := context.Background()
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	c.Inject(ctx, 0, sigkill)
	c.Inject(ctx, 1, blackhole{})
	dirs, err := c.Archive(ctx, "round1_case2_SIGKILL_LEADER")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != 3 || !strings.HasSuffix(dirs["etcd-2"], "/round1_case2_SIGKILL_LEADER") {
		t.Errorf("archives %v", dirs)
	}
	// The killed process is gone with the archive; the dropped port is
	// the agent's and stays until healed.
	if got := c.Faults(); !slices.Equal(got, []string{"etcd-1: peer port dropped"}) {
		t.Errorf("faults after archive: %v", got)
	}
}

// On interrupt the run heals what it injected with a fresh context, leaves
// the cluster up, stops and writes an interrupted report.
func TestInterruptHealsAndReports(t *testing.T) {
	c, fakes := fakeCluster(t, 3)
	s := c.cfg
	s.ReportDir = filepath.Join(t.TempDir(), "r")
	startAll(t, fakes)
	var out bytes.Buffer
	tr := &tester{s: s, out: &out, metrics: newMetrics(), cluster: c}
	tr.report = Report{Seed: s.Seed, Rounds: []RoundResult{{Round: 1, Cases: []CaseResult{{Case: "SIGSTOP_QUORUM", Index: 1, Error: "interrupted"}}}}, Skipped: []Skip{}}

	ctx, cancel := context.WithCancel(context.Background())
	c.Inject(ctx, 0, paused{})
	c.Inject(ctx, 2, paused{})
	c.Inject(ctx, 1, blackhole{})
	cancel()

	err := tr.finish(ctx, ErrInterrupted, false)
	if !errors.Is(err, ErrInterrupted) || ExitCode(err) != ExitFail {
		t.Fatalf("finish: %v (exit %d)", err, ExitCode(err))
	}
	for i, f := range fakes {
		st, _ := f.Status(context.Background())
		if st.State != wire.StateStarted || len(st.DroppedPorts) > 0 {
			t.Errorf("etcd-%d not healed: %+v", i, st)
		}
		if slices.Contains(f.Calls(), "Terminate") {
			t.Errorf("etcd-%d terminated on interrupt; the cluster must stay up", i)
		}
	}
	b, err := os.ReadFile(filepath.Join(s.ReportDir, ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	var rep map[string]any
	json.Unmarshal(b, &rep)
	if rep["interrupted"] != true || rep["passed"] != false || rep["unhealed"] != nil {
		t.Errorf("report: interrupted %v passed %v unhealed %v", rep["interrupted"], rep["passed"], rep["unhealed"])
	}
	if !strings.Contains(out.String(), "result: INTERRUPTED") {
		t.Errorf("summary:\n%s", out.String())
	}
}

// A fault that cannot be healed on interrupt is reported as such.
func TestInterruptReportsUnhealed(t *testing.T) {
	c, fakes := fakeCluster(t, 3)
	s := c.cfg
	s.ReportDir = t.TempDir()
	startAll(t, fakes)
	tr := &tester{s: s, out: &bytes.Buffer{}, metrics: newMetrics(), cluster: c, report: Report{Rounds: []RoundResult{}}}
	ctx, cancel := context.WithCancel(context.Background())
	c.Inject(ctx, 1, blackhole{})
	fakes[1].setFail("RecoverPort", errors.New("iptables: resource busy"))
	cancel()
	tr.finish(ctx, ErrInterrupted, false)
	if !slices.Equal(tr.report.Unhealed, []string{"etcd-1: peer port dropped"}) {
		t.Errorf("unhealed %v", tr.report.Unhealed)
	}
}

// A member whose agent cannot be reached stays on record as faulty after
// Terminate and Archive: the report must not call it healed.
func TestUnreachableMemberStaysOnRecord(t *testing.T) {
	ctx := context.Background()
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	if err := c.Inject(ctx, 0, sigterm); err != nil {
		t.Fatal(err)
	}
	if err := c.Inject(ctx, 1, paused{}); err != nil {
		t.Fatal(err)
	}
	unreachable := errors.New("agent unreachable")
	fakes[0].setFail("Terminate", unreachable)
	fakes[0].setFail("Archive", unreachable)

	if _, err := c.Archive(ctx, "label"); !errors.Is(err, unreachable) {
		t.Fatalf("Archive: %v, want the unreachable agent's error", err)
	}
	if got, want := c.Faults(), []string{"etcd-0: stopped"}; !slices.Equal(got, want) {
		t.Fatalf("after Archive faults %v, want %v (etcd-1 archived, etcd-0 not)", got, want)
	}
	if err := c.Terminate(ctx); !errors.Is(err, unreachable) {
		t.Fatalf("Terminate: %v, want the unreachable agent's error", err)
	}
	if got, want := c.Faults(), []string{"etcd-0: stopped"}; !slices.Equal(got, want) {
		t.Fatalf("after Terminate faults %v, want %v", got, want)
	}
	fakes[0].setFail("Terminate", nil)
	if err := c.Terminate(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.Faults(); len(got) != 0 {
		t.Fatalf("after a successful Terminate faults %v, want none", got)
	}
}

// TestSIGTERMNeedingMoreFails: an etcd that does not stop on SIGTERM (the
// agent's ladder had to send SIGKILL) fails the graceful stop, naming the
// signal, and the stopped member stays on record to be restarted.
func TestSIGTERMNeedingMoreFails(t *testing.T) {
	ctx := context.Background()
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	fakes[1].stopSignal = "SIGKILL"
	err := c.Inject(ctx, 1, sigterm)
	if err == nil || !strings.Contains(err.Error(), "did not stop on SIGTERM: it took SIGKILL") {
		t.Fatalf("SIGTERM of an etcd that needed SIGKILL: %v; want the graceful stop failed, naming SIGKILL", err)
	}
	if got := c.Faults(); !slices.Equal(got, []string{"etcd-1: stopped"}) {
		t.Errorf("faults %v: the stopped member must stay on record", got)
	}
	if err := c.Inject(ctx, 0, sigterm); err != nil {
		t.Errorf("SIGTERM of an etcd that stops on it: %v", err)
	}
	if err := c.Heal(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestBlackholeNeedsOnePeerPort: dropping a member's peer port cuts its
// own connections to the others only if they listen on the same port
// number; otherwise the partition would be one-way, and the case is
// skipped with that reason.
func TestBlackholeNeedsOnePeerPort(t *testing.T) {
	env := Env{Members: 3, Hosts: []string{"a", "b", "c"}, PeerPorts: []int{2380, 2380, 2390},
		Backends: []string{wire.BackendIPTables, wire.BackendIPTables, wire.BackendIPTables}}
	err := blackhole{}.requires(env)
	if err == nil || !strings.Contains(err.Error(), "one-way") || !strings.Contains(err.Error(), "2390") {
		t.Errorf("peer ports 2380, 2380, 2390: %v; want a one-way skip naming the odd port", err)
	}
	env.PeerPorts = []int{2380, 2380, 2380}
	if err := (blackhole{}).requires(env); err != nil {
		t.Errorf("one peer port, a host each, iptables: %v", err)
	}
}

// TestFailpointThatNeverFiredFails: a failpoint armed on targets where it
// never fired proved nothing, and the case fails saying so; one that fired
// on some of its targets (a failpoint of one role) passes the hold.
func TestFailpointThatNeverFiredFails(t *testing.T) {
	ctx := context.Background()
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	for _, f := range fakes {
		f.fired = map[string]int{}
	}
	fc := &failpointCase{fp: failpoint{"raftBeforeSave", "panic"}, targets: []int{0, 2}}
	err := fc.Hold(ctx, c, time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "never fired") || !strings.Contains(err.Error(), "etcd-0, etcd-2") {
		t.Fatalf("hold of a failpoint that fired nowhere: %v; want the case failed, naming the targets", err)
	}
	fakes[2].fired["raftBeforeSave"] = 1
	if err := fc.Hold(ctx, c, time.Millisecond); err != nil {
		t.Errorf("hold of a failpoint that fired on one of two targets: %v", err)
	}
}
