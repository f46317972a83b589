package agent_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// leaseTestLease is the agents' fault lease in these tests: short, so that
// the tests wait little, and long enough for a fault call to return and
// the test to look before it lapses.
const leaseTestLease = 1500 * time.Millisecond

// waitStatus polls the agent until cond holds, for at most limit, and
// returns the status that satisfied it.
func waitStatus(t *testing.T, a *agent.Agent, limit time.Duration, what string, cond func(wire.Status) bool) wire.Status {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		st := a.Status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("not %s within %v: status %+v", what, limit, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// expectExpiry checks that the lease lapsed no sooner than leaseTestLease
// after the fault was injected (at injected) and healed each of want.
func expectExpiry(t *testing.T, st wire.Status, injected time.Time, want ...string) {
	t.Helper()
	if st.FaultsExpiredAt.Before(injected.Add(leaseTestLease)) {
		t.Errorf("faults expired at %v, %v after the injection; the lease is %v",
			st.FaultsExpiredAt, st.FaultsExpiredAt.Sub(injected), leaseTestLease)
	}
	for _, w := range want {
		if !slices.ContainsFunc(st.FaultsExpired, func(s string) bool { return strings.Contains(s, w) && !strings.Contains(s, "failed") }) {
			t.Errorf("FaultsExpired = %q, want %q healed", st.FaultsExpired, w)
		}
	}
	if !st.FaultLeaseUntil.IsZero() {
		t.Errorf("FaultLeaseUntil = %v after the lease lapsed, want zero", st.FaultLeaseUntil)
	}
}

// TestFaultLeaseExpiryHealsEveryFault injects each kind of fault into a
// real etcd behind the peer proxy, renews nothing, and sees the agent heal
// it on its own once the lease lapses — and not touch a member the caller
// stopped for good (Terminate).
func TestFaultLeaseExpiryHealsEveryFault(t *testing.T) {
	bin := etcdBinary(t)
	s := serve(t, agent.Config{EtcdPath: bin, FaultLease: leaseTestLease})
	m := newMember(t, "lease", true)
	c := s.client(t, client.Config{})
	ctx := context.Background()
	pid, err := c.Start(ctx, m.args)
	if err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("PauseDropAndLatencyHealedTogether", func(t *testing.T) {
		injected := time.Now()
		if err := c.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.DropPort(ctx, m.advertisedPort); err != nil {
			t.Fatal(err)
		}
		if err := c.SetLatency(ctx, 200*time.Millisecond, 10*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		st := expectServing(t, c)
		if st.FaultLeaseUntil.IsZero() || st.FaultLeaseUntil.Before(injected.Add(leaseTestLease)) {
			t.Errorf("FaultLeaseUntil = %v after the faults, want the lease (%v) from the last fault call", st.FaultLeaseUntil, leaseTestLease)
		}
		st = waitStatus(t, s.Agent, leaseTestLease+5*time.Second, "healed", func(st wire.Status) bool {
			return st.State == wire.StateStarted && len(st.DroppedPorts) == 0 && st.Latency == 0
		})
		expectExpiry(t, st, injected, "etcd paused", "port ", "peer latency")
		if st.Pid != pid {
			t.Errorf("pid %d after the expiry, want the same etcd (%d) resumed", st.Pid, pid)
		}
		if got := procState(t, pid); got == "T" {
			t.Errorf("etcd pid %d still stopped (T) after the expiry", pid)
		}
		waitHealthy(t, m.clientURL())
	})

	for _, tc := range []struct {
		name, signal string
		fault        func(context.Context) error
	}{
		{"KillRestarted", "SIGKILL", c.Kill},
		{"StopRestarted", "SIGTERM", c.Stop},
	} {
		step(tc.name, func(t *testing.T) {
			put(t, m, "lease-key", tc.name)
			injected := time.Now()
			if err := tc.fault(ctx); err != nil {
				t.Fatal(err)
			}
			expectGone(t, pid)
			st := waitStatus(t, s.Agent, leaseTestLease+10*time.Second, "restarted", func(st wire.Status) bool {
				return st.State == wire.StateStarted && st.Pid != 0
			})
			expectExpiry(t, st, injected, "etcd stopped (by "+tc.signal+")")
			pid = st.Pid
			waitHealthy(t, m.clientURL())
			if got := get(t, m, "lease-key"); got != tc.name {
				t.Errorf("after the restart the key reads %q, want %q: the restart must keep the data", got, tc.name)
			}
		})
	}

	step("TerminatedStaysTerminated", func(t *testing.T) {
		before := s.Status().FaultsExpiredAt
		if err := c.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Terminate(ctx); err != nil {
			t.Fatal(err)
		}
		// The lease of the Stop lapses with nothing to heal.
		waitStatus(t, s.Agent, leaseTestLease+5*time.Second, "past the lease", func(st wire.Status) bool { return st.FaultLeaseUntil.IsZero() })
		if st := s.Status(); st.State != wire.StateTerminated || st.Pid != 0 || !st.FaultsExpiredAt.Equal(before) {
			t.Errorf("after the lease of a Stop followed by Terminate: %+v; want terminated, nothing healed", st)
		}
	})
}

// TestFaultLeaseRenewalKeepsFaults: while a caller renews the lease, the
// fault stays however long that is; once it stops, the fault is healed
// one lease after the last renewal. KeepFaults checks its argument.
func TestFaultLeaseRenewalKeepsFaults(t *testing.T) {
	bin := etcdBinary(t)
	s := serve(t, agent.Config{EtcdPath: bin, FaultLease: leaseTestLease})
	m := newMember(t, "renew", true)
	c := s.client(t, client.Config{})
	keeper := c.(client.FaultKeeper)
	ctx := context.Background()

	for _, bad := range []time.Duration{0, -time.Second, wire.MinFaultLease - 1, wire.MaxFaultLease + 1} {
		_, err := keeper.KeepFaults(ctx, bad)
		expectErr(t, "KeepFaults("+bad.String()+")", err, "fault lease", bad.String())
	}
	if _, err := c.Start(ctx, m.args); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	// Renew for three leases' time, one lease at a time.
	var last time.Time
	for end := time.Now().Add(3 * leaseTestLease); time.Now().Before(end); time.Sleep(leaseTestLease / 3) {
		// The agent starts the lease somewhere within the call: it ends
		// no sooner than a lease after the call began, which is the
		// bound expectExpiry checks (the time after the call is up to
		// a round trip late, and failed it by 35 µs once).
		asked := time.Now()
		until, err := keeper.KeepFaults(ctx, leaseTestLease)
		if err != nil {
			t.Fatal(err)
		}
		last = asked
		if d := until.Sub(asked); d < leaseTestLease || d > leaseTestLease+time.Second {
			t.Errorf("KeepFaults(%v) called at %v returned a lease ending %v later", leaseTestLease, asked, d)
		}
		if st := s.Status(); st.State != wire.StatePaused || !st.FaultsExpiredAt.IsZero() {
			t.Fatalf("while the lease is renewed: state %s, faults expired at %v; want paused, none expired", st.State, st.FaultsExpiredAt)
		}
	}
	st := waitStatus(t, s.Agent, leaseTestLease+5*time.Second, "resumed", func(st wire.Status) bool { return st.State == wire.StateStarted })
	expectExpiry(t, st, last, "etcd paused")
	waitHealthy(t, m.clientURL())

	// A renewal may shorten the lease: the caller's word is the last.
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	shortened := time.Now()
	if _, err := keeper.KeepFaults(ctx, wire.MinFaultLease); err != nil {
		t.Fatal(err)
	}
	st = waitStatus(t, s.Agent, 5*time.Second, "resumed", func(st wire.Status) bool { return st.State == wire.StateStarted })
	if took := st.FaultsExpiredAt.Sub(shortened); took > leaseTestLease {
		t.Errorf("a lease shortened to %v ran out %v later, want about %v", wire.MinFaultLease, took, wire.MinFaultLease)
	}
}

// TestFaultLeaseOutlivesTheAgent: an etcd killed as a fault stays a fault
// when the agent that killed it ends (a restart of the agent): the next
// agent on the base dir restarts it once its own lease runs out.
func TestFaultLeaseOutlivesTheAgent(t *testing.T) {
	bin := etcdBinary(t)
	base := t.TempDir()
	m := newMember(t, "outlive", true)
	first, err := agent.New(agent.Config{EtcdPath: bin, BaseDir: base, NetworkFaults: agent.FaultsProxy, FaultLease: wire.MaxFaultLease})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Start(m.args); err != nil {
		first.Close()
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	if err := first.Kill(); err != nil {
		first.Close()
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	s := serve(t, agent.Config{EtcdPath: bin, BaseDir: base, FaultLease: leaseTestLease})
	if st := s.Status(); st.State != wire.StateStopped || st.FaultLeaseUntil.IsZero() {
		t.Fatalf("new agent: %+v; want etcd stopped, under a fault lease", st)
	}
	st := waitStatus(t, s.Agent, leaseTestLease+10*time.Second, "restarted", func(st wire.Status) bool {
		return st.State == wire.StateStarted && st.Pid != 0
	})
	expectExpiry(t, st, restarted, "etcd stopped (by an earlier agent process)")
	waitHealthy(t, m.clientURL())
}
