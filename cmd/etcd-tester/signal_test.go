package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/agenttest"
	"github.com/etcd-functional/functional/tester"
)

// Issue 6: etcd-tester interrupted by real signals while a fault is held.

// pausedMembers asks the agents directly which members are paused.
func pausedMembers(ta *agenttest.Set) []int {
	var out []int
	for i, a := range ta.Agents {
		if a.Status().State == wire.StatePaused {
			out = append(out, i)
		}
	}
	return out
}

// SIGINT while SIGSTOP_QUORUM holds its fault (for 20 s): the tester
// resumes the paused members, stops the load, writes an interrupted
// report and exits 1, well before the hold would have ended.
func TestSIGINTHealsAndExits1(t *testing.T) {
	ta := agenttest.Start(t, 3)
	p := startTester(t, ta, "-cases", "SIGSTOP_QUORUM", "-case-delay", "20s", "-metrics-addr", "")
	p.waitLog(t, "injected on", 2*time.Minute)
	if paused := pausedMembers(ta); len(paused) != 2 {
		t.Fatalf("paused members %v after the injection, want a quorum (2)", paused)
	}
	sent := p.signal(t, os.Interrupt)
	code, exited := p.wait(t, 30*time.Second)
	took := exited.Sub(sent)
	t.Logf("exited %d, %v after SIGINT", code, took.Round(time.Millisecond))
	if code != tester.ExitFail {
		t.Fatalf("exit status %d after SIGINT, want %d", code, tester.ExitFail)
	}
	if took > 15*time.Second {
		t.Errorf("exited %v after SIGINT; the 20 s hold was not cut short", took)
	}
	// Healed: every member runs, no port is dropped, no latency is added.
	for i, a := range ta.Agents {
		st := a.Status()
		if st.State != wire.StateStarted || len(st.DroppedPorts) != 0 || st.Latency != 0 || st.LatencyJitter != 0 {
			t.Errorf("agent %d after the interrupt: state %s, dropped ports %v, latency %v±%v; want started and no network fault",
				i, st.State, st.DroppedPorts, st.Latency, st.LatencyJitter)
		}
	}
	r := p.results(t)
	if !r.Interrupted || r.Passed || len(r.Unhealed) != 0 || len(r.Rounds) != 1 || len(r.Rounds[0].Cases) != 1 {
		t.Fatalf("results: %+v", r)
	}
	// The load was stopped and accounted for when the interrupt came.
	if c := r.Rounds[0].Cases[0]; c.Passed || c.Stress == nil || c.Stress.Success == 0 {
		t.Errorf("interrupted case: passed %v, stress %+v; want failed, with the load it ran", c.Passed, c.Stress)
	}
	if !strings.Contains(p.stderr.String(), "etcd-tester: interrupt: healing injected faults") {
		t.Error("stderr does not say the interrupt is healing the faults")
	}
}

// A second SIGINT while the first one's healing waits for an agent that
// went away exits at once with 130.
func TestSecondSIGINTExits130AtOnce(t *testing.T) {
	ta := agenttest.Start(t, 3)
	p := startTester(t, ta, "-cases", "SIGSTOP_QUORUM", "-case-delay", "20s", "-metrics-addr", "")
	p.waitLog(t, "injected on", 2*time.Minute)
	paused := pausedMembers(ta)
	if len(paused) != 2 {
		t.Fatalf("paused members %v after the injection, want a quorum (2)", paused)
	}
	// The agent of a paused member goes away: resuming it will retry
	// for the client's RetryFor (30 s), so the healing lasts.
	ta.Down(paused[0])
	time.Sleep(200 * time.Millisecond) // the tester sees its connection closed
	p.signal(t, os.Interrupt)
	p.waitLog(t, "healing the faults still injected", 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	select {
	case <-p.done:
		t.Fatalf("etcd-tester exited (status %d) while healing an agent that is away", p.cmd.ProcessState.ExitCode())
	default:
	}
	sent := p.signal(t, os.Interrupt)
	code, exited := p.wait(t, 10*time.Second)
	took := exited.Sub(sent)
	t.Logf("exited %d, %v after the second SIGINT", code, took.Round(time.Millisecond))
	if code != tester.ExitInterrupted {
		t.Fatalf("exit status %d after the second SIGINT, want %d", code, tester.ExitInterrupted)
	}
	if took > 2*time.Second {
		t.Errorf("exited %v after the second SIGINT, want at once", took)
	}
	if !strings.Contains(p.stderr.String(), "etcd-tester: interrupt again: exiting now") {
		t.Error("stderr does not say the second interrupt exits at once")
	}
}

// Issue 16: SIGTERM, SIGHUP and SIGQUIT end a run as SIGINT does — the
// faults healed, an interrupted report, exit 1 — rather than leaving the
// faults in place (SIGHUP's and SIGQUIT's default is to die at once).
// The runs share one set of agents, one after the other: each tester
// clears what the one before it left.
func TestOtherSignalsHealLikeSIGINT(t *testing.T) {
	ta := agenttest.Start(t, 3)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT} {
		t.Run(sig.String(), func(t *testing.T) {
			p := startTester(t, ta, "-cases", "SIGSTOP_QUORUM", "-case-delay", "20s", "-metrics-addr", "")
			p.waitLog(t, "injected on", 2*time.Minute)
			if paused := pausedMembers(ta); len(paused) != 2 {
				t.Fatalf("paused members %v after the injection, want a quorum (2)", paused)
			}
			sent := p.signal(t, sig)
			code, exited := p.wait(t, 30*time.Second)
			took := exited.Sub(sent)
			t.Logf("exited %d, %v after %v", code, took.Round(time.Millisecond), sig)
			if code != tester.ExitFail {
				t.Fatalf("exit status %d after %v, want %d", code, sig, tester.ExitFail)
			}
			if took > 15*time.Second {
				t.Errorf("exited %v after %v; the 20 s hold was not cut short", took, sig)
			}
			for i, a := range ta.Agents {
				if st := a.Status(); st.State != wire.StateStarted || len(st.DroppedPorts) != 0 || st.Latency != 0 {
					t.Errorf("agent %d after %v: state %s, dropped ports %v, latency %v; want started and no network fault",
						i, sig, st.State, st.DroppedPorts, st.Latency)
				}
			}
			if r := p.results(t); !r.Interrupted || r.Passed || len(r.Unhealed) != 0 {
				t.Errorf("results after %v: interrupted %v, passed %v, unhealed %v; want interrupted, failed, nothing unhealed",
					sig, r.Interrupted, r.Passed, r.Unhealed)
			}
			if want := fmt.Sprintf("etcd-tester: %v: healing injected faults", sig); !strings.Contains(p.stderr.String(), want) {
				t.Errorf("stderr does not say %q", want)
			}
		})
	}
}
