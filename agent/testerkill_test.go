package agent_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// A fake tester is the test binary run with fakeTesterEnv set: it injects
// faults through real etcd-agents as the tester does, then renews their
// lease until it is killed. TestMain runs it.
const (
	fakeTesterEnv = "AGENT_TEST_FAKE_TESTER" // comma list of agent endpoints
	fakeTesterArg = "AGENT_TEST_FAKE_TESTER_ARGS"
)

// Lease and renewal interval of TestSIGKILLedTesterFaultsHealedByAgents.
const (
	tkLease = 2 * time.Second
	tkEvery = tkLease / 4
)

// runFakeTester kills the first agent's etcd and pauses, isolates and
// slows the second's, says "injected", then renews both agents' lease
// every tkEvery, saying "renewed N" after each round, until it is killed,
// its parent dies or a minute has passed.
func runFakeTester() int {
	eps := strings.Split(os.Getenv(fakeTesterEnv), ",")
	port, err := strconv.Atoi(os.Getenv(fakeTesterArg))
	if len(eps) != 2 || err != nil {
		fmt.Fprintf(os.Stderr, "fake tester: want 2 endpoints in $%s and a port in $%s\n", fakeTesterEnv, fakeTesterArg)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cs []client.Agent
	for _, ep := range eps {
		c, err := client.New(ep, client.Config{RetryFor: 5 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake tester:", err)
			return 1
		}
		defer c.Close()
		cs = append(cs, c)
	}
	for _, f := range []func() error{
		func() error { return cs[0].Kill(ctx) },
		func() error { return cs[1].Pause(ctx) },
		func() error { return cs[1].DropPort(ctx, port) },
		func() error { return cs[1].SetLatency(ctx, 300*time.Millisecond, 0) },
	} {
		if err := f(); err != nil {
			fmt.Fprintln(os.Stderr, "fake tester: inject:", err)
			return 1
		}
	}
	fmt.Println("injected")
	ppid := os.Getppid()
	tick := time.NewTicker(tkEvery)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return 1
		case <-tick.C:
		}
		if os.Getppid() != ppid {
			return 1 // the test died: do not linger
		}
		for _, c := range cs {
			if _, err := c.(client.FaultKeeper).KeepFaults(ctx, tkLease); err != nil {
				fmt.Fprintln(os.Stderr, "fake tester: renew:", err)
			}
		}
		fmt.Printf("renewed %d\n", n)
	}
}

// tkAgent is a real etcd-agent process serving on loopback.
type tkAgent struct {
	cmd  *exec.Cmd
	done chan struct{}
	c    client.Agent
	log  string
	m    member
}

func startTKAgent(t *testing.T, agentBin, etcdBin, name string) *tkAgent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	ag := &tkAgent{log: filepath.Join(dir, "agent.log"), done: make(chan struct{}), m: newMember(t, name, true)}
	logf, err := os.Create(ag.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ag.cmd = exec.Command(agentBin, "-port", addr, "-base-dir", filepath.Join(dir, "base"), "-etcd-path", etcdBin,
		"-network-faults", "proxy", "-fault-lease", tkLease.String(), "-sigterm-wait", "3s", "-sigint-wait", "1s")
	ag.cmd.Stdout, ag.cmd.Stderr = logf, logf
	ag.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	ag.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	if err := ag.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { ag.cmd.Wait(); close(ag.done) }()
	t.Cleanup(func() {
		// SIGTERM: the agent heals, stops its etcd and exits.
		ag.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-ag.done:
		case <-time.After(20 * time.Second):
			t.Errorf("agent %s still running 20 s after SIGTERM; killing it", addr)
			ag.cmd.Process.Kill()
			<-ag.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(ag.log)
			t.Logf("agent %s log:\n%s", addr, b)
		}
	})
	if ag.c, err = client.New(addr, client.Config{RetryFor: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := ag.c.Status(ctx); err != nil {
		t.Fatalf("agent %s does not answer: %v", addr, err)
	}
	if _, err := ag.c.Start(ctx, ag.m.args); err != nil {
		t.Fatalf("start etcd through %s: %v", addr, err)
	}
	waitHealthy(t, ag.m.clientURL())
	return ag
}

func (ag *tkAgent) status(t *testing.T) wire.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := ag.c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestSIGKILLedTesterFaultsHealedByAgents: a tester (a fake one, this test
// binary) injects faults through two real etcd-agent processes and renews
// their lease for more than two leases' time, during which the faults stay;
// then it is SIGKILLed, and within one lease both agents heal every fault
// on their own, log it and report it.
func TestSIGKILLedTesterFaultsHealedByAgents(t *testing.T) {
	etcdBin, err := filepath.Abs(etcdBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	agentBin := svBuildAgent(t)
	killed := startTKAgent(t, agentBin, etcdBin, "tk-killed")
	paused := startTKAgent(t, agentBin, etcdBin, "tk-paused")
	killedPid := killed.status(t).Pid

	ft := exec.Command(testBinary(t), "-test.run=^$")
	ft.Env = append(os.Environ(),
		fakeTesterEnv+"="+killed.c.Endpoint()+","+paused.c.Endpoint(),
		fakeTesterArg+"="+strconv.Itoa(paused.m.advertisedPort))
	out, err := ft.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncWriter
	ft.Stderr = &stderr
	if err := ft.Start(); err != nil {
		t.Fatal(err)
	}
	ftDone := make(chan struct{})
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // nobody reads any more
			}
		}
	}()
	go func() { ft.Wait(); close(ftDone) }()
	t.Cleanup(func() {
		ft.Process.Kill()
		<-ftDone
		if t.Failed() {
			t.Logf("fake tester stderr:\n%s", stderr.String())
		}
	})
	// waitLine waits for the fake tester to print want.
	waitLine := func(want string, limit time.Duration) {
		t.Helper()
		deadline := time.After(limit)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("fake tester ended before saying %q", want)
				}
				if l == want {
					return
				}
			case <-deadline:
				t.Fatalf("fake tester did not say %q within %v", want, limit)
			}
		}
	}
	waitLine("injected", 30*time.Second)
	injected := time.Now()
	// Two leases and more: the renewals keep the faults.
	waitLine(fmt.Sprintf("renewed %d", int(2*tkLease/tkEvery)+2), 3*tkLease+10*time.Second)
	held := time.Since(injected)
	faulty := func(k, p wire.Status) bool {
		return k.State == wire.StateStopped && p.State == wire.StatePaused && len(p.DroppedPorts) == 1 && p.Latency > 0
	}
	if k, p := killed.status(t), paused.status(t); !faulty(k, p) || !k.FaultsExpiredAt.IsZero() || !p.FaultsExpiredAt.IsZero() {
		t.Fatalf("after %v of renewals: killed agent %+v, paused agent %+v; want the faults kept, none expired", held, k, p)
	}

	if err := ft.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	<-ftDone
	t.Logf("faults held %v under renewal; tester SIGKILLed", held.Round(time.Millisecond))

	deadline := killedAt.Add(tkLease + 10*time.Second)
	var k, p wire.Status
	for {
		k, p = killed.status(t), paused.status(t)
		if k.State == wire.StateStarted && k.Pid != 0 && p.State == wire.StateStarted && len(p.DroppedPorts) == 0 && p.Latency == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not healed %v after the tester died (lease %v): killed agent %+v, paused agent %+v",
				time.Since(killedAt), tkLease, k, p)
		}
		time.Sleep(20 * time.Millisecond)
	}
	healed := time.Since(killedAt)
	t.Logf("healed %v after the tester died (lease %v)", healed.Round(time.Millisecond), tkLease)
	for _, st := range []wire.Status{k, p} {
		if exp := st.FaultsExpiredAt.Sub(killedAt); exp < 0 || exp > tkLease+time.Second {
			t.Errorf("faults expired %v after the tester died, want within the lease (%v)", exp, tkLease)
		}
		for _, f := range st.FaultsExpired {
			if strings.Contains(f, "failed") {
				t.Errorf("FaultsExpired: %q", f)
			}
		}
	}
	if len(k.FaultsExpired) != 1 || !strings.Contains(k.FaultsExpired[0], "etcd stopped (by SIGKILL)") || k.Pid == killedPid {
		t.Errorf("killed agent: FaultsExpired %q, pid %d (was %d); want the killed etcd restarted", k.FaultsExpired, k.Pid, killedPid)
	}
	if got := strings.Join(p.FaultsExpired, "; "); !strings.Contains(got, "etcd paused") || !strings.Contains(got, "dropped") || !strings.Contains(got, "latency") {
		t.Errorf("paused agent: FaultsExpired %q; want the pause, the dropped port and the latency", got)
	}
	waitHealthy(t, killed.m.clientURL())
	waitHealthy(t, paused.m.clientURL())
	for _, ag := range []*tkAgent{killed, paused} {
		b, err := os.ReadFile(ag.log)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "fault lease expired") {
			t.Errorf("agent log %s does not say the fault lease expired", ag.log)
		}
	}
}

// syncWriter collects a child's output for a test to read while it runs.
type syncWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
