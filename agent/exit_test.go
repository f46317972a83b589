package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// TestStopReportsExitStatus stops the signal-recording helper, as "etcd",
// in ways a graceful stop can go wrong, and checks that Status says which
// signal ended it and how it exited, so that a tester can fail a SIGTERM
// case that needed more than SIGTERM or ended badly.
func TestStopReportsExitStatus(t *testing.T) {
	t.Parallel()
	const wait = 300 * time.Millisecond
	ctx := context.Background()
	for _, tc := range []struct {
		name, mode string
		termWait   time.Duration // SigtermWait: short to climb the ladder, long to give SIGTERM its chance
		stop       func(client.Agent, context.Context) error
		wantStop   string // LastStopSignal
		wantExit   string // LastExit
		wantCode   int
		wantSignal string
	}{
		{"IgnoringTermAndIntIsKilled", modeIgnoreTermInt, wait, client.Agent.Stop, "SIGKILL", "killed by SIGKILL", -1, "SIGKILL"},
		{"IgnoringTermExitsOnInt", modeIgnoreTerm, wait, client.Agent.Stop, "SIGINT", "exit code 0", 0, ""},
		{"ExitingNonZeroOnTerm", modeExit3OnTerm, 20 * time.Second, client.Agent.Stop, "SIGTERM", "exit code 3", 3, ""},
		{"Kill", modeIgnoreTerm, wait, client.Agent.Kill, "SIGKILL", "killed by SIGKILL", -1, "SIGKILL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := serve(t, agent.Config{EtcdPath: testBinary(t), SigtermWait: tc.termWait, SigintWait: wait})
			c := s.client(t, client.Config{})
			if _, err := c.Start(ctx, []string{tc.mode}); err != nil {
				t.Fatal(err)
			}
			waitHelperReady(t, s.base)
			if st := expectServing(t, c); st.LastExit != "" {
				t.Errorf("before any stop: LastExit %q, want empty", st.LastExit)
			}
			if err := tc.stop(c, ctx); err != nil {
				t.Fatal(err)
			}
			st := expectServing(t, c)
			if st.LastStopSignal != tc.wantStop || st.LastExit != tc.wantExit || st.LastExitCode != tc.wantCode || st.LastExitSignal != tc.wantSignal {
				t.Errorf("stop %s: LastStopSignal %q, LastExit %q, LastExitCode %d, LastExitSignal %q; want %q, %q, %d, %q",
					tc.mode, st.LastStopSignal, st.LastExit, st.LastExitCode, st.LastExitSignal,
					tc.wantStop, tc.wantExit, tc.wantCode, tc.wantSignal)
			}
			// None of these stops is graceful; the tester fails a SIGTERM
			// case on this error.
			if err := st.GracefulStopError(); err == nil {
				t.Errorf("GracefulStopError() = nil for %+v", st)
			} else {
				t.Logf("GracefulStopError: %v", err)
			}
		})
	}

	t.Run("ExitOfItsOwnIsReported", func(t *testing.T) {
		t.Parallel()
		s := serve(t, agent.Config{EtcdPath: testBinary(t)})
		c := s.client(t, client.Config{})
		// An unknown mode makes the helper exit 2 as soon as it runs, as
		// etcd with a bad flag would. Start may or may not see it (the
		// race-enabled binary can take longer than Start watches).
		c.Start(ctx, []string{"no-such-mode"})
		var st wire.Status
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if st = expectServing(t, c); st.State == wire.StateStopped {
				break
			}
		}
		if st.State != wire.StateStopped || st.LastExit != "exit code 2" || st.LastExitCode != 2 || st.LastExitSignal != "" || st.LastStopSignal != "" {
			t.Errorf("after an exit of its own: %+v, want stopped, exit code 2 and no stop signal", st)
		}
	})
}

// TestRealEtcdSIGTERMStatus stops the real etcd and checks what a clean
// graceful stop looks like in Status: ended by SIGTERM, and killed by
// SIGTERM, since etcd raises the signal again once it has shut down (it
// exits 0 only as pid 1). It also checks that a member behind the loopback
// proxy says its latency reaches inbound connections only.
func TestRealEtcdSIGTERMStatus(t *testing.T) {
	t.Parallel()
	s := serve(t, agent.Config{EtcdPath: etcdBinary(t)})
	c := s.client(t, client.Config{})
	ctx := context.Background()
	if st := expectServing(t, c); st.DelayDirections != "" {
		t.Errorf("before start: DelayDirections %q, want empty (no peer proxy)", st.DelayDirections)
	}
	m := newMember(t, "exitstatus", true)
	if _, err := c.Start(ctx, m.args); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	if st := expectServing(t, c); st.DelayDirections != wire.DelayInbound || st.NetworkBackend != wire.BackendProxy || !strings.Contains(st.DelayInboundWhy, "peer proxy") {
		t.Errorf("behind the loopback proxy: DelayDirections %q (backend %s, why %q), want %q and why", st.DelayDirections, st.NetworkBackend, st.DelayInboundWhy, wire.DelayInbound)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	st := expectServing(t, c)
	if st.LastStopSignal != "SIGTERM" || st.LastExitSignal != "SIGTERM" || st.LastExit != "killed by SIGTERM" || st.LastExitCode != -1 {
		t.Errorf("real etcd after Stop: LastStopSignal %q, LastExit %q, LastExitCode %d, LastExitSignal %q; want a clean stop: SIGTERM, killed by SIGTERM",
			st.LastStopSignal, st.LastExit, st.LastExitCode, st.LastExitSignal)
	}
	if err := st.GracefulStopError(); err != nil {
		t.Errorf("GracefulStopError() for real etcd stopped by SIGTERM: %v, want nil", err)
	}
}
