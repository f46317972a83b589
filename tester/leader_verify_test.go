package tester

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// killLeader is SIGKILL_LEADER as the catalogue builds it.
var killLeader = faultCase{sigkill, leader{}}

// The leader moves (etcd-0 → etcd-2, term 5 → 6) after the lookup and
// before the kill: the target's own status just before the fault shows it,
// and the case looks the leader up again and kills etcd-2, not etcd-0.
func TestLeaderCaseRetargetsWhenLeadershipMovesFirst(t *testing.T) {
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	fe := startFakeEtcds(t, c)
	for i, f := range fakes {
		f.onKill = func() { fe.set(func(fe *fakeEtcds) { fe.down[i] = true }) }
	}
	fe.set(func(fe *fakeEtcds) {
		fe.onStatus = func(i, calls int) {
			// etcd-0's second Status is the check just before the
			// fault: by then etcd-2 has won an election.
			if i == 0 && calls == 1 {
				fe.leader, fe.term = fakeID(2), 6
			}
		}
	})
	ctx := context.Background()
	if err := killLeader.Inject(ctx, c); err != nil {
		t.Fatalf("Inject: %v", err)
	}
	if got := c.Targets(); !slices.Equal(got, []string{"etcd-2"}) {
		t.Errorf("targets %v, want the new leader etcd-2", got)
	}
	if slices.Contains(fakes[0].Calls(), "Kill") {
		t.Error("etcd-0, no longer leader, was killed")
	}
	if err := killLeader.Recover(ctx, c); err != nil {
		t.Fatal(err)
	}
}

// Leadership moves twice in a row: the case injects nothing and says so.
func TestLeaderCaseFailsWhenLeadershipKeepsMoving(t *testing.T) {
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	fe := startFakeEtcds(t, c)
	total := 0
	fe.set(func(fe *fakeEtcds) {
		fe.onStatus = func(i, calls int) {
			// A lookup asks the three members, then the confirmation
			// asks the one looked up: every fourth Status is a
			// confirmation, and finds the leader gone.
			if total++; total%4 == 0 {
				fe.leader, fe.term = fakeID(int(fe.leader)%3), fe.term+1
			}
		}
	})
	err := killLeader.Inject(context.Background(), c)
	if err == nil || !strings.Contains(err.Error(), "leadership moved between the lookup and the injection twice") {
		t.Fatalf("Inject: %v, want it to refuse, saying leadership kept moving", err)
	}
	for i, f := range fakes {
		if slices.Contains(f.Calls(), "Kill") {
			t.Errorf("etcd-%d killed", i)
		}
	}
}

// An election completes between the confirmation and the kill: right
// after the kill the survivors report a later term, sooner than any
// election the kill could cause. The case fails, saying it hit a follower.
func TestLeaderCaseFailsWhenItHitAFollower(t *testing.T) {
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	fe := startFakeEtcds(t, c)
	fakes[0].onKill = func() {
		fe.set(func(fe *fakeEtcds) { fe.leader, fe.term, fe.down[0] = fakeID(1), 6, true })
	}
	ctx := context.Background()
	err := killLeader.Inject(ctx, c)
	if err == nil || !strings.Contains(err.Error(), "the case hit etcd-0 as a follower") || !strings.Contains(err.Error(), "saw leader etcd-1 at term 6") {
		t.Fatalf("Inject: %v, want the case failed for hitting a follower", err)
	}
	c.Heal(ctx)
}

// The same kill with no election before it passes.
func TestLeaderCaseHitsTheLeader(t *testing.T) {
	ctx := context.Background()
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	fe := startFakeEtcds(t, c)
	fakes[0].onKill = func() { fe.set(func(fe *fakeEtcds) { fe.down[0] = true }) }
	if err := killLeader.Inject(ctx, c); err != nil {
		t.Fatalf("kill of the leader with no election before it: %v", err)
	}
	if got := c.Targets(); !slices.Equal(got, []string{"etcd-0"}) {
		t.Errorf("targets %v", got)
	}
	c.Heal(ctx)
}
