package tester

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/stresser"
)

// A replayed case hits the recorded members, whoever holds which role now,
// and says when a member no longer holds the role the case is named for.
func TestReplayHitsRecordedMembers(t *testing.T) {
	ctx := context.Background()
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	startFakeEtcds(t, c) // etcd-0 leads at term 5
	for _, tc := range []struct {
		cs       faultCase
		pin      int
		wantNote string
	}{
		{faultCase{sigkill, oneFollower{}}, 2, ""},
		{faultCase{sigkill, oneFollower{}}, 0, "etcd-0 no longer holds the role ONE_FOLLOWER (the leader is etcd-0 at term 5)"},
		{faultCase{sigkill, leader{}}, 1, "etcd-1 no longer holds the role LEADER (the leader is etcd-0 at term 5)"},
	} {
		for _, f := range fakes {
			f.mu.Lock()
			f.calls = nil
			f.mu.Unlock()
		}
		c.pinTargets([]int{tc.pin})
		if err := tc.cs.Inject(ctx, c); err != nil {
			t.Fatalf("%s on etcd-%d: %v", tc.cs.Name(), tc.pin, err)
		}
		notes, untaken := c.replayNotes()
		if want := []string{memberName(tc.pin)}; !slices.Equal(c.Targets(), want) || untaken {
			t.Errorf("%s: targets %v (pin untaken %v), want %v", tc.cs.Name(), c.Targets(), untaken, want)
		}
		for i, f := range fakes {
			if killed := slices.Contains(f.Calls(), "Kill"); killed != (i == tc.pin) {
				t.Errorf("%s: etcd-%d killed %v", tc.cs.Name(), i, killed)
			}
		}
		if tc.wantNote == "" && len(notes) > 0 || tc.wantNote != "" && (len(notes) != 1 || !strings.Contains(notes[0], tc.wantNote)) {
			t.Errorf("%s on etcd-%d: notes %q, want %q", tc.cs.Name(), tc.pin, notes, tc.wantNote)
		}
		if err := c.Heal(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// The same seed, round and place redraw the same fault in a replay, where
// the targets come from the record and nothing is drawn for them.
func TestReplayRedrawsTheSameFault(t *testing.T) {
	ctx := context.Background()
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	cs := faultCase{randomDelay(time.Second), quorum{}}
	c.setRand(caseRand(42, 2, 17))
	if err := cs.Inject(ctx, c); err != nil {
		t.Fatal(err)
	}
	targets, drawn := c.Targets(), c.takeDrawn()
	if err := c.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	if len(drawn) != 1 || !strings.Contains(drawn[0], "±") {
		t.Fatalf("drawn %q, want the delay with its drawn parameters", drawn)
	}
	var pin []int
	for _, n := range targets {
		i, _ := memberIndex(n, 3)
		pin = append(pin, i)
	}
	c.setRand(caseRand(42, 2, 17))
	c.pinTargets(pin)
	if err := cs.Inject(ctx, c); err != nil {
		t.Fatal(err)
	}
	if got := c.takeDrawn(); !slices.Equal(got, drawn) || !slices.Equal(c.Targets(), targets) {
		t.Errorf("replay drew %q on %v; the run drew %q on %v", got, c.Targets(), drawn, targets)
	}
	c.Heal(ctx)
}

// -replay reads the recorded rounds: the seed, the cases in order and
// the members each hit; what cannot be replayed is bad input.
func TestReadReplay(t *testing.T) {
	dir := t.TempDir()
	r := Report{Seed: 99, Config: &RunConfig{CaseDelaySeconds: 2.5, Stressers: []string{"keys"}, StressQPS: 77, PastReads: false}, Rounds: []RoundResult{
		{Round: 1, Cases: []CaseResult{{Case: "SIGKILL_LEADER", Index: 1, Targets: []string{"etcd-2"}}, {Case: "NO_FAIL_WITH_STRESS", Index: 2, Targets: []string{}}}},
		{Round: 2, Cases: []CaseResult{{Case: "SIGKILL_QUORUM", Index: 1, Targets: []string{"etcd-0", "etcd-1"}}}},
	}}
	if err := r.write(dir); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(3)
	cfg.Replay = filepath.Join(dir, ResultsFile)
	s, err := cfg.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if s.Seed != 99 || s.Limit != 2 || !slices.Equal(s.Cases, []string{"SIGKILL_LEADER", "NO_FAIL_WITH_STRESS", "SIGKILL_QUORUM"}) ||
		s.CaseDelay != 2500*time.Millisecond || !slices.Equal(s.Stresser.Names, []string{"keys"}) || s.Stresser.QPS != 77 || !s.Stresser.SkipPastReads {
		t.Errorf("replay settings: seed %d, limit %d, cases %v, case delay %v, stresser %+v", s.Seed, s.Limit, s.Cases, s.CaseDelay, s.Stresser)
	}
	tr := &tester{s: s}
	tr.cases, _, _ = s.selectCases(nil)
	round, steps := tr.roundPlan(2)
	if round != 2 || len(steps) != 1 || steps[0].cs.Name() != "SIGKILL_QUORUM" || !slices.Equal(steps[0].pin, []int{0, 1}) || steps[0].index != 1 {
		t.Errorf("round 2 plan: %d %+v", round, steps)
	}

	r.Rounds[1].Cases[0].Targets = []string{"etcd-7"}
	r.write(dir)
	if _, err := cfg.normalize(); err == nil || !strings.Contains(err.Error(), `target "etcd-7" is not one of the 3 members`) {
		t.Errorf("a target beyond the agents: %v", err)
	}
	r.RoundsDropped = 4
	r.write(dir)
	if _, err := cfg.normalize(); err == nil || !strings.Contains(err.Error(), "must start from the first round") {
		t.Errorf("dropped rounds: %v", err)
	}
	os.Remove(cfg.Replay)
	if _, err := cfg.normalize(); err == nil || !strings.Contains(err.Error(), "-replay") {
		t.Errorf("no file: %v", err)
	}
}

// A replay takes the recorded load's shape: the history stresser's
// clients and rate and the request timeout, as well as stressers and rate.
func TestReplayTakesTheRecordedLoad(t *testing.T) {
	c := DefaultConfig()
	r := &Report{Seed: 9, Config: &RunConfig{Stressers: []string{"keys", "history"}, StressQPS: 300, PastReads: true,
		HistoryClients: 12, HistoryQPS: 600, StressRequestTimeoutSeconds: 1.5, CaseDelaySeconds: 2}}
	c.applyRecorded([]replayRound{{}}, r)
	if c.Seed != 9 || c.Stresser.QPS != 300 || c.Stresser.History.Clients != 12 || c.Stresser.History.QPS != 600 ||
		c.Stresser.RequestTimeout != 1500*time.Millisecond || c.CaseDelay != 2*time.Second {
		t.Errorf("replayed config %+v", c.Stresser)
	}
	// A report from before these were recorded keeps the defaults.
	c = DefaultConfig()
	c.applyRecorded([]replayRound{{}}, &Report{Config: &RunConfig{StressQPS: 300}})
	if c.Stresser.History != stresser.DefaultHistoryConfig() || c.Stresser.RequestTimeout != stresser.DefaultConfig().RequestTimeout {
		t.Errorf("old report: %+v", c.Stresser)
	}
}
