package tester

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// waitHealthyAfterRecover plays a case's wait-healthy phase on c right
// after a recovery that ended now, with the figures' probe writes
// running as they would be.
func waitHealthyAfterRecover(t *testing.T, c *Cluster) (*caseRun, error) {
	t.Helper()
	r := &caseRun{t: &tester{s: c.cfg, cluster: c}, lg: caseLog("[test]")}
	ctx := context.Background()
	r.writes, r.stopWrites = c.startWriteFigures(ctx)
	r.res.InjectTime = time.Now()
	r.res.RecoverTime = time.Now()
	r.writes.setMark(r.res.RecoverTime)
	err := r.waitHealthy(ctx)
	r.endWrites()
	return r, err
}

// A member that becomes ready only once some client writes after it got
// stuck: the tester does not write to it until half the recovery timeout
// has passed without health, then does, and records a finding naming the
// member instead of reporting a plain recovery. A health probe that wrote
// (as the tester's did) would have healed the member unseen.
func TestWaitHealthyFindsMemberThatNeedsAWrite(t *testing.T) {
	c, _ := fakeCluster(t, 3)
	c.cfg.RecoveryTimeout = 3 * time.Second
	fe := startFakeEtcds(t, c)
	// etcd-2 gets stuck just after the first write after recovery, as a
	// member re-added from a snapshot does on etcd v3.6.16.
	stuck := time.Now().Add(300 * time.Millisecond)
	fe.set(func(fe *fakeEtcds) { fe.stuckUntilPutAfter[2] = stuck })

	r, err := waitHealthyAfterRecover(t, c)
	if err != nil {
		t.Fatalf("waitHealthy: %v", err)
	}
	if len(r.res.Findings) != 1 {
		t.Fatalf("findings %+v, want one", r.res.Findings)
	}
	f := r.res.Findings[0]
	t.Logf("finding: %+v; recovery %.3fs", f, r.res.RecoverySeconds)
	if f.What != FindingNeededWrite || len(f.Members) != 1 || f.Members[0] != "etcd-2" {
		t.Errorf("finding %+v, want etcd-2 %q", f, FindingNeededWrite)
	}
	// No write from the tester while it waited: the first put after the
	// member got stuck is the nudge, half the recovery timeout after
	// the first write.
	puts := fe.putsAfter(stuck)
	if len(puts) == 0 {
		t.Fatal("no nudge reached the members")
	}
	if quiet := puts[0].Sub(r.res.RecoverTime); quiet < nudgeAfter(c.cfg.RecoveryTimeout) {
		t.Errorf("the tester wrote %v after recovery, before the quiet time %v was up", quiet, nudgeAfter(c.cfg.RecoveryTimeout))
	}
	if !r.res.HealthyTime.After(f.Time) || r.res.RecoverySeconds < nudgeAfter(c.cfg.RecoveryTimeout).Seconds() {
		t.Errorf("healthy at %v (recovery %.3fs), want after the nudge at %v", r.res.HealthyTime, r.res.RecoverySeconds, f.Time)
	}
}

// A member that becomes ready on its own, with no write: no finding, and
// no write from the tester after the first one that succeeded.
func TestWaitHealthyWritesNothingToAMemberReadyOnItsOwn(t *testing.T) {
	c, _ := fakeCluster(t, 3)
	c.cfg.RecoveryTimeout = 3 * time.Second
	fe := startFakeEtcds(t, c)
	ready := time.Now().Add(700 * time.Millisecond)
	fe.set(func(fe *fakeEtcds) { fe.readyAt[1] = ready })

	r, err := waitHealthyAfterRecover(t, c)
	if err != nil {
		t.Fatalf("waitHealthy: %v", err)
	}
	if len(r.res.Findings) != 0 {
		t.Errorf("findings %+v, want none", r.res.Findings)
	}
	within(t, "recovery", r.res.HealthyTime, ready)
	// The probe writes end at the first that succeeded; the only puts
	// later are the other members' of that same round, in flight.
	first := r.res.RecoverTime.Add(time.Duration(r.res.FirstWriteSeconds * float64(time.Second)))
	if late := fe.putsAfter(first.Add(figureInterval + 50*time.Millisecond)); len(late) > 0 {
		t.Errorf("%d puts after the first write after recovery, the first %v after it", len(late), late[0].Sub(first))
	}
}

// Health may come before the first write after recovery succeeds (reads
// served while writes still time out): the phase waits for that write, it
// does not give up on it once the members are healthy.
func TestWaitHealthyWaitsForTheFirstWriteAfterHealth(t *testing.T) {
	c, _ := fakeCluster(t, 3)
	c.cfg.RecoveryTimeout = 3 * time.Second
	fe := startFakeEtcds(t, c)
	writable := time.Now().Add(600 * time.Millisecond)
	fe.set(func(fe *fakeEtcds) {
		fe.putErr = func(int) error {
			if time.Now().Before(writable) {
				return status.Error(codes.Unavailable, "fake etcd: no leader for writes yet")
			}
			return nil
		}
	})
	r, err := waitHealthyAfterRecover(t, c)
	if err != nil {
		t.Fatalf("waitHealthy: %v", err)
	}
	first := r.res.RecoverTime.Add(time.Duration(r.res.FirstWriteSeconds * float64(time.Second)))
	if !r.res.HealthyTime.Before(writable) {
		t.Errorf("healthy at %v, not before writes worked at %v: the test proves nothing", r.res.HealthyTime, writable)
	}
	within(t, "first write", first, writable)
}

// A member that no write heals: the phase fails on the recovery timeout,
// and its error says the tester wrote to the cluster, so that nobody
// reads it as a cluster left idle.
func TestWaitHealthyNeverHealthyAfterNudgesSaysSo(t *testing.T) {
	c, _ := fakeCluster(t, 3)
	c.cfg.RecoveryTimeout = 3 * time.Second
	fe := startFakeEtcds(t, c)
	fe.set(func(fe *fakeEtcds) { fe.readyAt[0] = time.Now().Add(time.Hour) })
	r, err := waitHealthyAfterRecover(t, c)
	if err == nil || !strings.Contains(err.Error(), "etcd-0") || !strings.Contains(err.Error(), "the tester wrote to it") {
		t.Fatalf("waitHealthy: %v; want a failure naming etcd-0 and the writes", err)
	}
	if len(r.res.Findings) != 0 {
		t.Errorf("findings %+v of a case that never recovered", r.res.Findings)
	}
}
