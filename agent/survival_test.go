package agent_test

// Survival tests: the real etcd-agent binary, killed or shut down in the
// middle of a fault, must leave no fault behind it. Each test runs the
// agent inside a network namespace of its own (package localnet), so that
// the iptables rules it adds and removes are the namespace's and the host's
// are never touched, and talks to it from the root namespace through the
// bridge, as the tester would.
//
// When the agent is SIGKILLed, its etcd (in a session of its own) survives
// and is reparented. The test process makes itself a child subreaper so that
// the orphan comes to it rather than to a PID 1 that may not reap it, and
// reaps it at cleanup: no etcd, not even a zombie, outlives the tests. The
// agent runs in a session of its own too, as a daemon does, so that the test
// process stands outside it as init does in production; then a paused etcd
// in the agent's session would be an orphaned stopped process group when the
// agent dies, and the kernel's SIGHUP would kill it (SIGKILL_paused catches
// that).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/etcdtest"
	"github.com/etcd-functional/functional/internal/localnet"
	"github.com/etcd-functional/functional/internal/logtail"
)

// Ports inside the agent's namespace. etcd listens for peers on
// svListenPeerPort and advertises svPeerPort, so the agent runs its peer
// proxy on svPeerPort and latency can be injected.
const (
	svAgentPort      = 9027
	svClientPort     = 2379
	svPeerPort       = 2380
	svListenPeerPort = 2381

	// The agent's stop ladder in these tests, and the slack on top of it
	// for everything else a shutdown does (iptables, closing the proxy).
	svSigtermWait = 3 * time.Second
	svSigintWait  = 2 * time.Second
	svStopSlack   = 10 * time.Second

	// svLatency is the injected peer latency: long enough that a round
	// trip through the proxy with it cannot be mistaken for one without.
	svLatency = time.Second

	// svChainPrefix starts the agent's own iptables chain (ETCD-AGENT-9027).
	svChainPrefix = "ETCD-AGENT"

	// prctl(2) option; the syscall package does not name it.
	svPRSetChildSubreaper = 36
)

// TestSurvival kills the agent (SIGKILL) at each kind of fault and checks
// that the next agent process heals it and reports the truth; shuts it down
// (SIGTERM, SIGINT) mid-fault and checks that it healed everything and
// stopped etcd; and checks that a record naming a process that is not the
// recorded etcd is never acted on.
func TestSurvival(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("survival tests need root: they build network namespaces and run iptables in them")
	}
	if err := localnet.Available(); err != nil {
		t.Skipf("survival tests need root, iptables and `ip netns`: %v", err)
	}
	etcdBin, err := etcdtest.Binary()
	if err != nil {
		t.Skipf("survival tests need the real etcd: %v", err)
	}
	if etcdBin, err = filepath.Abs(etcdBin); err != nil {
		t.Fatal(err)
	}
	agentBin := svBuildAgent(t)
	svBecomeSubreaper(t)

	t.Run("SIGKILL_dropped_port", func(t *testing.T) { svKilledWithDroppedPort(t, agentBin, etcdBin) })
	t.Run("SIGKILL_latency", func(t *testing.T) { svKilledWithLatency(t, agentBin, etcdBin) })
	t.Run("SIGKILL_paused", func(t *testing.T) { svKilledWithPausedEtcd(t, agentBin, etcdBin) })
	t.Run("SIGTERM_dropped_port_and_latency", func(t *testing.T) { svShutdownMidFault(t, agentBin, etcdBin, syscall.SIGTERM, false) })
	t.Run("SIGINT_paused", func(t *testing.T) { svShutdownMidFault(t, agentBin, etcdBin, syscall.SIGINT, true) })
	t.Run("foreign_record", func(t *testing.T) { svForeignRecord(t, agentBin, etcdBin) })
}

// svKilledWithDroppedPort: SIGKILL while etcd's client port is dropped.
func svKilledWithDroppedPort(t *testing.T, agentBin, etcdBin string) {
	r := newSvRig(t, agentBin, etcdBin)
	ag := r.startAgent()
	pid := r.startEtcd(ag)
	ctx := svCtx(t)
	if err := ag.c.DropPort(ctx, svClientPort); err != nil {
		t.Fatalf("DropPort(%d): %v", svClientPort, err)
	}
	if _, err := svGet(r.url(svClientPort, "/health"), 500*time.Millisecond); err == nil {
		t.Fatalf("port %d still answers after DropPort", svClientPort)
	}

	ag.kill(syscall.SIGKILL)
	rules := r.nsRules()
	if want := fmt.Sprintf("--dport %d -j DROP", svClientPort); !strings.Contains(rules, want) {
		t.Fatalf("the killed agent's rule is not in the namespace (want %q), so the test proves nothing:\n%s", want, rules)
	}
	if _, err := svGet(r.url(svClientPort, "/health"), 500*time.Millisecond); err == nil {
		t.Fatalf("port %d answers after the agent was killed, though its rule is still there", svClientPort)
	}
	r.mustRun(pid)

	ag2 := r.startAgent()
	if rules := r.nsRules(); strings.Contains(rules, svChainPrefix) {
		t.Errorf("the new agent left its predecessor's rules in place:\n%s", rules)
	}
	if _, err := svGet(r.url(svClientPort, "/health"), 2*time.Second); err != nil {
		t.Errorf("port %d still unreachable after the new agent started: %v", svClientPort, err)
	}
	st := ag2.status()
	r.checkAdopted(st, pid)
	if len(st.DroppedPorts) != 0 {
		t.Errorf("Status.DroppedPorts = %v, want none", st.DroppedPorts)
	}
	if st.NetworkBackend != wire.BackendIPTables {
		t.Errorf("Status.NetworkBackend = %q, want %q", st.NetworkBackend, wire.BackendIPTables)
	}
	r.shutdown(ag2, syscall.SIGTERM, pid)
}

// svKilledWithLatency: SIGKILL while the peer proxy delays traffic.
func svKilledWithLatency(t *testing.T, agentBin, etcdBin string) {
	r := newSvRig(t, agentBin, etcdBin)
	ag := r.startAgent()
	pid := r.startEtcd(ag)
	ctx := svCtx(t)
	peerVersion := r.url(svPeerPort, "/version")
	if _, err := svGet(peerVersion, 2*time.Second); err != nil {
		t.Fatalf("GET %s through the peer proxy before any fault: %v", peerVersion, err)
	}
	if err := ag.c.SetLatency(ctx, svLatency, 0); err != nil {
		t.Fatalf("SetLatency(%v): %v", svLatency, err)
	}
	took, err := svGet(peerVersion, 10*time.Second)
	if err != nil {
		t.Fatalf("GET %s with latency: %v", peerVersion, err)
	}
	if took < svLatency {
		t.Fatalf("GET %s took %v with %v latency injected: the latency is not in effect", peerVersion, took, svLatency)
	}

	ag.kill(syscall.SIGKILL)
	if _, err := svGet(peerVersion, time.Second); err == nil {
		t.Errorf("GET %s succeeded after the agent was killed: who serves the peer proxy port?", peerVersion)
	}
	r.mustRun(pid)

	ag2 := r.startAgent()
	st := ag2.status()
	r.checkAdopted(st, pid)
	if st.Latency != 0 || st.LatencyJitter != 0 {
		t.Errorf("Status latency = %v ± %v, want none", st.Latency, st.LatencyJitter)
	}
	if !st.PeerProxy {
		t.Errorf("Status.PeerProxy = false, want the proxy recreated from the recorded args")
	}
	took, err = svGet(peerVersion, 5*time.Second)
	if err != nil {
		t.Errorf("GET %s through the new agent's proxy: %v", peerVersion, err)
	} else if took >= svLatency/2 {
		t.Errorf("GET %s through the new agent's proxy took %v: latency %v survived the agent", peerVersion, took, svLatency)
	}
	r.shutdown(ag2, syscall.SIGTERM, pid)
}

// svKilledWithPausedEtcd: SIGKILL while etcd is SIGSTOPped.
func svKilledWithPausedEtcd(t *testing.T, agentBin, etcdBin string) {
	r := newSvRig(t, agentBin, etcdBin)
	ag := r.startAgent()
	pid := r.startEtcd(ag)
	if err := ag.c.Pause(svCtx(t)); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	svWaitProcState(t, pid, "T")

	ag.kill(syscall.SIGKILL)
	// Give the kernel's reparenting (and any SIGHUP/SIGCONT it sends to an
	// orphaned stopped process group) time to happen before looking.
	time.Sleep(200 * time.Millisecond)
	r.mustRun(pid)
	if s := svProcState(pid); s != "T" {
		t.Fatalf("etcd pid %d is in state %q after the agent was killed, want T (still paused): the test proves nothing", pid, s)
	}

	ag2 := r.startAgent()
	if s := svProcState(pid); s == "T" || s == "t" {
		t.Errorf("etcd pid %d still stopped (state %s) after the new agent started", pid, s)
	}
	if _, err := svGet(r.url(svClientPort, "/health"), 5*time.Second); err != nil {
		t.Errorf("etcd not healthy after the new agent resumed it: %v", err)
	}
	r.checkAdopted(ag2.status(), pid)
	r.shutdown(ag2, syscall.SIGTERM, pid)
}

// svShutdownMidFault: SIGTERM or SIGINT to the agent mid-fault heals every
// fault and stops etcd, and the agent exits 0 within its stop ladder.
func svShutdownMidFault(t *testing.T, agentBin, etcdBin string, sig syscall.Signal, paused bool) {
	r := newSvRig(t, agentBin, etcdBin)
	ag := r.startAgent()
	pid := r.startEtcd(ag)
	ctx := svCtx(t)
	if err := ag.c.DropPort(ctx, svClientPort); err != nil {
		t.Fatalf("DropPort(%d): %v", svClientPort, err)
	}
	if err := ag.c.SetLatency(ctx, svLatency, 0); err != nil {
		t.Fatalf("SetLatency(%v): %v", svLatency, err)
	}
	if paused {
		if err := ag.c.Pause(ctx); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		svWaitProcState(t, pid, "T")
	}
	if rules := r.nsRules(); !strings.Contains(rules, svChainPrefix) {
		t.Fatalf("no rule of the agent in the namespace after DropPort:\n%s", rules)
	}
	r.shutdown(ag, sig, pid)
	if rules := r.nsRules(); strings.Contains(rules, svChainPrefix) {
		t.Errorf("the agent's rules survived its shutdown:\n%s", rules)
	}
	if _, err := svGet(r.url(svPeerPort, "/version"), time.Second); err == nil {
		t.Errorf("the peer proxy port %d still answers after the agent shut down", svPeerPort)
	}
	rec := r.readRecord(t)
	if rec.Pid != 0 || rec.State != wire.StateStopped {
		t.Errorf("record after shutdown: pid %d, state %q; want pid 0, state %q", rec.Pid, rec.State, wire.StateStopped)
	}
}

// svForeignRecord: a record whose pid no longer names the recorded etcd is
// never acted on: the process is neither adopted nor signalled.
func svForeignRecord(t *testing.T, agentBin, etcdBin string) {
	r := newSvRig(t, agentBin, etcdBin)
	args := r.etcdArgs()

	type foreign struct {
		pid       int
		startTime uint64
		check     func(t *testing.T) // the process is untouched
		cleanup   func()
	}
	// stoppedChild starts cmd and SIGSTOPs it: an agent that adopted it
	// would resume it (the record says paused) or stop it at shutdown.
	stoppedChild := func(t *testing.T, cmd *exec.Cmd, what string) foreign {
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", what, err)
		}
		pid := cmd.Process.Pid
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		f := foreign{pid: pid, cleanup: func() {
			cmd.Process.Kill()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
			}
		}}
		st, err := svStartTime(pid)
		if err != nil {
			f.cleanup()
			t.Fatalf("%s pid %d: %v", what, pid, err)
		}
		f.startTime = st
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			f.cleanup()
			t.Fatal(err)
		}
		svWaitProcState(t, pid, "T")
		f.check = func(t *testing.T) {
			select {
			case <-done:
				t.Errorf("%s pid %d exited: the agent acted on a process it does not own", what, pid)
				return
			default:
			}
			if s := svProcState(pid); s != "T" {
				t.Errorf("%s pid %d in state %q, want T: the agent signalled a process it does not own", what, pid, s)
			}
		}
		return f
	}

	cases := []struct {
		name string
		// setup returns the process the record names and what the record
		// should say about its start time.
		setup       func(t *testing.T) foreign
		recordStart func(f foreign) uint64
	}{
		{
			// The pid and start time match, but the pid runs another
			// program: only the executable tells it apart.
			name: "other_program",
			setup: func(t *testing.T) foreign {
				return stoppedChild(t, exec.Command("sleep", "60"), "sleep")
			},
			recordStart: func(f foreign) uint64 { return f.startTime },
		},
		{
			// The pid runs the etcd binary, but was started after the
			// record: the pid was reused, and only the start time tells.
			name: "reused_pid_same_binary",
			setup: func(t *testing.T) foreign {
				return stoppedChild(t, r.n.Command(0, etcdBin, args...), "etcd started by the test")
			},
			recordStart: func(f foreign) uint64 { return f.startTime - 1 },
		},
		{
			name: "dead_pid",
			setup: func(t *testing.T) foreign {
				cmd := exec.Command("true")
				if err := cmd.Run(); err != nil {
					t.Fatal(err)
				}
				pid := cmd.Process.Pid
				return foreign{pid: pid, startTime: 1, check: func(*testing.T) {}, cleanup: func() {}}
			},
			recordStart: func(f foreign) uint64 { return f.startTime },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.setup(t)
			defer f.cleanup()
			r.writeRecord(t, svRecord{Pid: f.pid, StartTime: tc.recordStart(f), Args: args, State: wire.StatePaused})

			ag := r.startAgentT(t)
			st := ag.status()
			if st.State != wire.StateStopped || st.Pid != 0 || st.Adopted {
				t.Errorf("Status = state %q, pid %d, adopted %v; want state %q, pid 0, not adopted", st.State, st.Pid, st.Adopted, wire.StateStopped)
			}
			f.check(t)
			if rec := r.readRecord(t); rec.Pid != 0 || rec.State != wire.StateStopped {
				t.Errorf("record after start: pid %d, state %q; want pid 0, state %q", rec.Pid, rec.State, wire.StateStopped)
			}
			r.shutdown(ag, syscall.SIGTERM, 0)
			f.check(t)
		})
	}
}

// svRecord mirrors the agent's agent-state.json.
type svRecord struct {
	Pid       int        `json:"pid"`
	StartTime uint64     `json:"start_time"`
	Args      []string   `json:"args"`
	State     wire.State `json:"state"`
}

// svRig is one namespace with one base dir, and every agent and etcd
// process a test started there, for cleanup.
type svRig struct {
	t                 *testing.T
	n                 *localnet.Net
	addr              string
	dir               string
	logDir            string
	agentBin, etcdBin string

	mu     sync.Mutex
	agents []*svAgent
	etcds  map[int]uint64 // pid → start time of every etcd the agents ran
}

func newSvRig(t *testing.T, agentBin, etcdBin string) *svRig {
	t.Helper()
	r := &svRig{t: t, agentBin: agentBin, etcdBin: etcdBin, etcds: map[int]uint64{}}
	// Temp dirs first: cleanups run last-in first-out, so the processes
	// writing into them are gone before they are removed.
	r.dir = t.TempDir()
	r.logDir = t.TempDir()
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		// "sv" + 8 digits: 10 characters, localnet's limit.
		name := fmt.Sprintf("sv%08d", rand.IntN(100_000_000))
		r.n, err = localnet.Create(localnet.Config{Name: name, Hosts: 1})
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	r.addr = r.n.Hosts[0].Addr.String()
	t.Cleanup(r.cleanup)
	return r
}

func (r *svRig) url(port int, path string) string {
	return "http://" + net.JoinHostPort(r.addr, strconv.Itoa(port)) + path
}

func (r *svRig) etcdArgs() []string {
	u := func(port int) string { return r.url(port, "") }
	return []string{
		"--name", "s0",
		"--listen-client-urls", u(svClientPort),
		"--advertise-client-urls", u(svClientPort),
		"--listen-peer-urls", u(svListenPeerPort),
		"--initial-advertise-peer-urls", u(svPeerPort),
		"--initial-cluster", "s0=" + u(svPeerPort),
		"--initial-cluster-state", "new",
		"--log-level", "warn",
	}
}

// svAgent is one etcd-agent process and a client of it.
type svAgent struct {
	r       *svRig
	t       *testing.T
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error // cmd.Wait's result, once done is closed
	c       client.Agent
}

func (r *svRig) startAgent() *svAgent { return r.startAgentT(r.t) }

// startAgentT starts an agent process in the namespace, with the rig's base
// dir, and waits until it serves RPCs.
func (r *svRig) startAgentT(t *testing.T) *svAgent {
	t.Helper()
	args := []string{
		"-port", ":" + strconv.Itoa(svAgentPort),
		"-base-dir", r.dir,
		"-etcd-path", r.etcdBin,
		"-network-faults", "iptables",
		"-sigterm-wait", svSigtermWait.String(),
		"-sigint-wait", svSigintWait.String(),
	}
	logf, err := os.OpenFile(filepath.Join(r.logDir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s: agent %v\n", time.Now().Format(time.RFC3339Nano), args)
	cmd := r.n.Command(0, r.agentBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A session of its own, as a daemon has: the test process (where a
	// killed agent's orphans go) is then outside the agent's session, as
	// init is in production, and the kernel's orphaned-process-group rule
	// applies as it would there.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if os.Getenv("GORACE") == "" {
		// A race-enabled agent otherwise sleeps a second before exiting.
		cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	ag := &svAgent{r: r, t: t, cmd: cmd, done: make(chan struct{})}
	go func() { ag.waitErr = cmd.Wait(); close(ag.done) }()
	r.mu.Lock()
	r.agents = append(r.agents, ag)
	r.mu.Unlock()

	// The agent listens before it has recovered from its record, so a
	// connection that succeeds proves nothing: only an answered Status call
	// does (the RPCs are served after recovery).
	endpoint := net.JoinHostPort(r.addr, strconv.Itoa(svAgentPort))
	c, err := client.New(endpoint, client.Config{DialTimeout: time.Second, RetryFor: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ag.c = c
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.Status(ctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case <-ag.done:
			t.Fatalf("agent exited at start: %v (last Status error: %v)", ag.waitErr, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent at %s does not answer Status: %v", endpoint, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ag
}

func (ag *svAgent) status() wire.Status {
	ag.t.Helper()
	st, err := ag.c.Status(svCtx(ag.t))
	if err != nil {
		ag.t.Fatalf("Status: %v", err)
	}
	return st
}

// kill sends sig and waits for the agent to exit.
func (ag *svAgent) kill(sig syscall.Signal) {
	ag.t.Helper()
	if err := ag.cmd.Process.Signal(sig); err != nil {
		ag.t.Fatalf("signal agent: %v", err)
	}
	select {
	case <-ag.done:
	case <-time.After(10 * time.Second):
		ag.t.Fatalf("agent still running 10 s after %v", sig)
	}
	ag.c.Close()
}

// startEtcd starts etcd through ag and waits until it is healthy.
func (r *svRig) startEtcd(ag *svAgent) int {
	r.t.Helper()
	pid, err := ag.c.Start(svCtx(r.t), r.etcdArgs())
	if err != nil {
		r.t.Fatalf("Start etcd: %v", err)
	}
	st, err := svStartTime(pid)
	if err != nil {
		r.t.Fatalf("etcd pid %d: %v", pid, err)
	}
	r.mu.Lock()
	r.etcds[pid] = st
	r.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := svGet(r.url(svClientPort, "/health"), time.Second)
		if err == nil {
			return pid
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("etcd pid %d not healthy after 20 s: %v", pid, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkAdopted checks what a new agent reports about the etcd its killed
// predecessor started.
func (r *svRig) checkAdopted(st wire.Status, pid int) {
	r.t.Helper()
	if st.State != wire.StateStarted || st.Pid != pid || !st.Adopted {
		r.t.Errorf("Status = state %q, pid %d, adopted %v; want state %q, pid %d, adopted", st.State, st.Pid, st.Adopted, wire.StateStarted, pid)
	}
}

// shutdown sends sig (SIGTERM or SIGINT) to the agent and checks that it
// exits 0 within its stop ladder and that etcd pid (0: none) is gone.
func (r *svRig) shutdown(ag *svAgent, sig syscall.Signal, pid int) {
	t := ag.t
	t.Helper()
	bound := svSigtermWait + svSigintWait + svStopSlack
	start := time.Now()
	if err := ag.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal agent: %v", err)
	}
	select {
	case <-ag.done:
	case <-time.After(bound):
		t.Fatalf("agent still running %v after %v", bound, sig)
	}
	ag.c.Close()
	t.Logf("agent exited %v after %v", time.Since(start).Round(time.Millisecond), sig)
	if ag.waitErr != nil {
		t.Errorf("agent exit after %v: %v, want status 0", sig, ag.waitErr)
	}
	if pid == 0 {
		return
	}
	// An adopted etcd is the test's child (it was reparented here): the
	// agent saw it exit, but it stays a zombie until reaped.
	svReap(pid, time.Second)
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("etcd pid %d still exists (state %q) after the agent shut down", pid, svProcState(pid))
	}
}

// mustRun fails the test unless etcd pid is alive.
func (r *svRig) mustRun(pid int) {
	r.t.Helper()
	if s := svProcState(pid); s == "" || s == "Z" || s == "X" {
		r.t.Fatalf("etcd pid %d died with the agent (state %q); it should have survived it", pid, s)
	}
}

func svWaitProcState(t *testing.T, pid int, want string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for svProcState(pid) != want {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d in state %q, want %q", pid, svProcState(pid), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// nsRules is `iptables -S` in the agent's namespace.
func (r *svRig) nsRules() string {
	r.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", r.n.Hosts[0].Namespace, "iptables", "-w", "-S").Output()
	if err != nil {
		r.t.Fatalf("iptables -S in %s: %v", r.n.Hosts[0].Namespace, err)
	}
	return string(out)
}

func (r *svRig) recordPath() string { return filepath.Join(r.dir, "agent-state.json") }

func (r *svRig) readRecord(t *testing.T) svRecord {
	t.Helper()
	b, err := os.ReadFile(r.recordPath())
	if err != nil {
		t.Fatalf("read the agent's record: %v", err)
	}
	var rec svRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("agent record %s: %v", b, err)
	}
	return rec
}

func (r *svRig) writeRecord(t *testing.T, rec svRecord) {
	t.Helper()
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.recordPath(), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// cleanup kills every agent and etcd the rig started (by pid, and only if
// the pid still names that process), removes the namespace and reaps the
// orphans, and shows the logs if the test failed.
func (r *svRig) cleanup() {
	r.mu.Lock()
	agents, etcds := r.agents, r.etcds
	r.mu.Unlock()
	for _, ag := range agents {
		ag.cmd.Process.Kill()
		select {
		case <-ag.done:
		case <-time.After(5 * time.Second):
			r.t.Errorf("agent pid %d survived SIGKILL", ag.cmd.Process.Pid)
		}
		if ag.c != nil {
			ag.c.Close()
		}
	}
	if b, err := os.ReadFile(r.recordPath()); err == nil {
		var rec svRecord
		if json.Unmarshal(b, &rec) == nil && rec.Pid > 0 {
			if _, ok := etcds[rec.Pid]; !ok {
				etcds[rec.Pid] = rec.StartTime
			}
		}
	}
	for pid, st := range etcds {
		if got, err := svStartTime(pid); err == nil && got == st && svIsExe(pid, r.etcdBin) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if err := r.n.Close(); err != nil {
		r.t.Errorf("remove network %s: %v", r.n.Name, err)
	}
	for pid := range etcds {
		svReap(pid, 5*time.Second)
	}
	if r.t.Failed() {
		for _, f := range []string{filepath.Join(r.logDir, "agent.log"), filepath.Join(r.dir, "etcd.log")} {
			r.t.Logf("---- %s (tail) ----\n%s", f, logtail.File(f, 0, 60))
		}
	}
}

// svBuildAgent builds cmd/etcd-agent (with -race if this test binary has
// it, so that a race in the agent fails its exit status) into a temp dir.
func svBuildAgent(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(t.TempDir(), "etcd-agent")
	args := []string{"build", "-o", out}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args = append(args, "-race")
			}
		}
	}
	args = append(args, "github.com/etcd-functional/functional/cmd/etcd-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if b, err := exec.CommandContext(ctx, goBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return out
}

// svBecomeSubreaper makes this process the reaper of the orphans of its
// descendants for the duration of t.
func svBecomeSubreaper(t *testing.T) {
	t.Helper()
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, svPRSetChildSubreaper, 1, 0); e != 0 {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", e)
	}
	t.Cleanup(func() { syscall.RawSyscall(syscall.SYS_PRCTL, svPRSetChildSubreaper, 0, 0) })
}

// svReap reaps pid if it is a child of this process, waiting up to wait
// for it to exit. It is a no-op for a pid that is not our child: whoever
// is its parent reaps it.
func svReap(pid int, wait time.Duration) {
	deadline := time.Now().Add(wait)
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || got == pid || time.Now().After(deadline) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// svGet GETs url on a fresh connection and returns how long it took; a
// status other than 200 is an error.
func svGet(url string, timeout time.Duration) (time.Duration, error) {
	c := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	defer c.CloseIdleConnections()
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		return time.Since(start), err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	if resp.StatusCode != http.StatusOK {
		return took, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return took, nil
}

func svCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// svProcStat returns the fields of /proc/<pid>/stat after the command name.
func svProcStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// svProcState is the one-letter state of pid, "" if there is no such pid.
func svProcState(pid int) string {
	if f := svProcStat(pid); len(f) > 0 {
		return f[0]
	}
	return ""
}

func svStartTime(pid int) (uint64, error) {
	f := svProcStat(pid)
	if len(f) < 20 {
		return 0, fmt.Errorf("pid %d: no such process", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func svIsExe(pid int, bin string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	want, err := filepath.EvalSymlinks(bin)
	return err == nil && exe == want
}
