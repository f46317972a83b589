package tester

import (
	"context"
	"strings"
	"testing"
	"time"
)

var liveness = noFail{stress: false}

// A quiet cluster that stays healthy under one leader passes the hold.
func TestNoFailHoldSteady(t *testing.T) {
	c, _ := fakeCluster(t, 3)
	startFakeEtcds(t, c)
	if err := liveness.Hold(context.Background(), c, 500*time.Millisecond); err != nil {
		t.Fatalf("Hold: %v", err)
	}
}

// One unhealthy poll fails the hold: with no fault there is nothing to
// forgive (it took two in a row before).
func TestNoFailHoldOneUnhealthyPollFails(t *testing.T) {
	c, _ := fakeCluster(t, 3)
	fe := startFakeEtcds(t, c)
	fe.set(func(fe *fakeEtcds) {
		fe.onStatus = func(i, calls int) {
			// etcd-1 fails its third status, then is fine again.
			fe.down[1] = i == 1 && calls == 2
		}
	})
	err := liveness.Hold(context.Background(), c, time.Second)
	if err == nil || !strings.Contains(err.Error(), "unhealthy with no fault injected") || !strings.Contains(err.Error(), "etcd-1") {
		t.Fatalf("Hold: %v, want a failure naming etcd-1", err)
	}
}

// A leader that changes, or loses and wins again (a new term), fails the
// hold even when every poll finds the cluster healthy.
func TestNoFailHoldLeaderChangeFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		leader uint64
		want   string
	}{
		{"other leader", fakeID(2), "leader etcd-0 at term 5, then etcd-2 at term 6"},
		{"same leader, new term", fakeID(0), "leader etcd-0 at term 5, then etcd-0 at term 6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := fakeCluster(t, 3)
			fe := startFakeEtcds(t, c)
			fe.set(func(fe *fakeEtcds) {
				// From its fourth poll on, each member sees the
				// new leader: the change lands between two polls.
				fe.onStatus = func(i, calls int) {
					if calls == 3 {
						fe.view[i] = [2]uint64{tc.leader, 6}
					}
				}
			})
			err := liveness.Hold(context.Background(), c, time.Second)
			if err == nil || !strings.Contains(err.Error(), "leadership changed with no fault injected") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Hold: %v, want a leadership change saying %q", err, tc.want)
			}
		})
	}
}
