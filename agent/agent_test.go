package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/netnstest"
)

// TestLifecycleAgainstRealEtcd drives one agent through every lifecycle RPC
// against the real etcd, behind the peer proxy, and checks each effect on
// the process, the member and the disk. The steps depend on each other, so
// they run in order and the first failure ends the test.
func TestLifecycleAgainstRealEtcd(t *testing.T) {
	t.Parallel()
	bin := etcdBinary(t)
	s := serve(t, agent.Config{EtcdPath: bin})
	m := newMember(t, "life", true)
	c := s.client(t, client.Config{})
	ctx := context.Background()
	var pid int

	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("StartFromPlainNetRPCClientRunsHealthyEtcd", func(t *testing.T) {
		rc, err := rpc.DialHTTP("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if err := rc.Call("Agent.RPCStart", m.args, &pid); err != nil {
			t.Fatalf("Agent.RPCStart: %v", err)
		}
		if pid <= 0 {
			t.Fatalf("Agent.RPCStart returned pid %d", pid)
		}
		waitHealthy(t, m.clientURL())
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := filepath.EvalSymlinks(bin); exe != want {
			t.Errorf("/proc/%d/exe = %s, want the configured etcd %s", pid, exe, want)
		}
		var st wire.Status
		if err := rc.Call("Agent.RPCStatus", struct{}{}, &st); err != nil {
			t.Fatal(err)
		}
		if st.State != wire.StateStarted || st.Pid != pid || !st.PeerProxy || st.NetworkBackend != wire.BackendProxy {
			t.Errorf("Status = %+v, want started, pid %d, behind the peer proxy", st, pid)
		}
		wantDataDir := "--data-dir=" + filepath.Join(s.base, "etcd.data")
		if n := countPrefix(st.Args, "--data-dir"); n != 1 || !slices.Contains(st.Args, wantDataDir) {
			t.Errorf("Status.Args = %q, want exactly one data dir, %s", st.Args, wantDataDir)
		}
	})

	step("SecondStartIsRefusedAndKeepsTheRunningEtcd", func(t *testing.T) {
		_, err := c.Start(ctx, m.args)
		expectErr(t, "second Start", err, "already running")
		if st := expectServing(t, c); st.Pid != pid || st.State != wire.StateStarted {
			t.Errorf("after a refused Start: %+v, want pid %d still started", st, pid)
		}
		if err := health(m.clientURL(), 2*time.Second); err != nil {
			t.Errorf("etcd after a refused Start: %v", err)
		}
	})

	step("StopEndsEtcdBySIGTERM", func(t *testing.T) {
		put(t, m, "lifecycle-key", "kept across restarts")
		if err := c.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		expectGone(t, pid)
		st := expectServing(t, c)
		if st.State != wire.StateStopped || st.Pid != 0 || st.LastStopSignal != "SIGTERM" || st.LastStopDuration <= 0 {
			t.Errorf("after Stop: %+v, want stopped, no pid, ended by SIGTERM in a positive duration", st)
		}
		if err := health(m.clientURL(), time.Second); err == nil {
			t.Error("etcd still answers /health after Stop")
		}
		expectErr(t, "Stop when stopped", c.Stop(ctx), "not running")
	})

	step("RestartKeepsTheData", func(t *testing.T) {
		newPid, err := c.Restart(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if newPid == pid || newPid <= 0 {
			t.Fatalf("Restart returned pid %d (old %d)", newPid, pid)
		}
		pid = newPid
		waitHealthy(t, m.clientURL())
		if got := get(t, m, "lifecycle-key"); got != "kept across restarts" {
			t.Errorf("after Restart the key reads %q, want the value written before Stop", got)
		}
	})

	step("PauseStopsTheProcessAndSilencesEtcd", func(t *testing.T) {
		if err := c.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if got := procState(t, pid); got != "T" {
			t.Errorf("/proc/%d/stat state %q after Pause, want T (stopped)", pid, got)
		}
		err := health(m.clientURL(), 500*time.Millisecond)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("/health of a paused etcd: %v, want a timeout", err)
		}
		if st := expectServing(t, c); st.State != wire.StatePaused || st.Pid != pid {
			t.Errorf("after Pause: %+v, want paused, pid %d", st, pid)
		}
		expectErr(t, "Pause when paused", c.Pause(ctx), "paused")
	})

	step("ResumeMakesEtcdHealthyAgain", func(t *testing.T) {
		if err := c.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		waitHealthy(t, m.clientURL())
		if got := procState(t, pid); got == "T" {
			t.Errorf("/proc/%d/stat state T after Resume", pid)
		}
		if st := expectServing(t, c); st.State != wire.StateStarted {
			t.Errorf("after Resume: %+v, want started", st)
		}
		expectErr(t, "Resume when running", c.Resume(ctx), "started")
	})

	step("PauseReturnsOnlyOnceEveryThreadHasStopped", func(t *testing.T) {
		// SIGSTOP stops each thread when it next runs, which on a busy
		// machine can be well after kill(2) returned; a Pause that does
		// not wait for it is caught in the act now and then.
		for i := range 100 {
			if err := c.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			if running := runningThreads(t, pid); len(running) > 0 {
				t.Fatalf("cycle %d: Pause returned with threads %v of pid %d still running", i, running, pid)
			}
			if err := c.Resume(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})

	step("KillEndsEtcdBySIGKILL", func(t *testing.T) {
		if err := c.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		expectGone(t, pid)
		if st := expectServing(t, c); st.State != wire.StateStopped || st.LastStopSignal != "SIGKILL" || st.Pid != 0 {
			t.Errorf("after Kill: %+v, want stopped by SIGKILL", st)
		}
	})

	var archive string
	step("ArchiveMovesDataAndLogWithTheGoroutineDump", func(t *testing.T) {
		var err error
		if pid, err = c.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		waitHealthy(t, m.clientURL())
		if archive, err = c.Archive(ctx, "round1_SIGKILL"); err != nil {
			t.Fatal(err)
		}
		expectGone(t, pid)
		if filepath.Dir(archive) != filepath.Join(s.base, "failure_archive") || !strings.HasSuffix(archive, "_round1_SIGKILL") {
			t.Errorf("archive dir %s, want <base>/failure_archive/<time>_round1_SIGKILL", archive)
		}
		if fi, err := os.Stat(filepath.Join(archive, "etcd.data", "member")); err != nil || !fi.IsDir() {
			t.Errorf("archived data dir: %v, want etcd.data/member in the archive", err)
		}
		log, err := os.ReadFile(filepath.Join(archive, "etcd.log"))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"SIGQUIT", "goroutine "} {
			if !strings.Contains(string(log), want) {
				t.Errorf("archived etcd.log has no %q: SIGQUIT must make the Go runtime dump every goroutine", want)
			}
		}
		if _, err := os.Stat(filepath.Join(s.base, "etcd.data")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("data dir still in the base dir after Archive: %v", err)
		}
		if fresh, err := os.ReadFile(filepath.Join(s.base, "etcd.log")); err != nil || len(fresh) != 0 {
			t.Errorf("base dir's etcd.log after Archive: %d bytes, %v; want a fresh empty log", len(fresh), err)
		}
		st := expectServing(t, c)
		if st.LastArchive != archive || st.State != wire.StateTerminated || st.LastStopSignal != "SIGQUIT" || st.PeerProxy {
			t.Errorf("after Archive: %+v, want LastArchive %s, terminated, stopped by SIGQUIT, proxy closed", st, archive)
		}
		_, err = c.Restart(ctx)
		expectErr(t, "Restart after Archive", err, "start it afresh")
	})

	step("ArchivesInTheSameSecondGetDistinctDirs", func(t *testing.T) {
		// Three archives in a row span at most two seconds, so at least two
		// share the second their names are made of.
		dirs := []string{archive}
		if err := c.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, expectServing(t, c).LastArchive)
		for range 2 {
			d, err := c.Archive(ctx, "round1_SIGKILL")
			if err != nil {
				t.Fatal(err)
			}
			dirs = append(dirs, d)
		}
		seen := map[string]bool{}
		for _, d := range dirs {
			if seen[d] {
				t.Fatalf("archive dir %s handed out twice: %q", d, dirs)
			}
			seen[d] = true
			if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
				t.Errorf("archive dir %s: %v", d, err)
			}
		}
	})

	step("TerminateRemovesTheData", func(t *testing.T) {
		var err error
		if pid, err = c.Start(ctx, m.args); err != nil {
			t.Fatal(err)
		}
		waitHealthy(t, m.clientURL())
		if _, err := os.Stat(filepath.Join(s.base, "etcd.data", "member")); err != nil {
			t.Fatalf("fresh start has no data dir: %v", err)
		}
		if err := c.Terminate(ctx); err != nil {
			t.Fatal(err)
		}
		expectGone(t, pid)
		if _, err := os.Stat(filepath.Join(s.base, "etcd.data")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("data dir after Terminate: %v, want it removed", err)
		}
		if st := expectServing(t, c); st.State != wire.StateTerminated || st.LastStopSignal != "SIGTERM" || st.Pid != 0 {
			t.Errorf("after Terminate: %+v, want terminated, stopped by SIGTERM", st)
		}
		if err := c.Terminate(ctx); err != nil {
			t.Errorf("Terminate when nothing runs: %v, want success (it clears what is left)", err)
		}
	})
}

// runningThreads lists the threads of pid that are not stopped.
func runningThreads(t *testing.T, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var running []string
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
		if err != nil {
			continue // the thread exited
		}
		s := string(b)
		if state := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]; state != "T" {
			running = append(running, task.Name()+":"+state)
		}
	}
	return running
}

func countPrefix(args []string, prefix string) int {
	n := 0
	for _, a := range args {
		if strings.HasPrefix(a, prefix) {
			n++
		}
	}
	return n
}

func etcdClient(t *testing.T, m member) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.clientURL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

func put(t *testing.T, m member, key, value string) {
	t.Helper()
	cli := etcdClient(t, m)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func get(t *testing.T, m member, key string) string {
	t.Helper()
	cli := etcdClient(t, m)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// TestStopLadder runs the signal-recording helper as "etcd" and checks
// the order, spacing and outcome of the stop ladder's signals.
func TestStopLadder(t *testing.T) {
	t.Parallel()
	const wait = 300 * time.Millisecond
	newLadderAgent := func(t *testing.T) (*served, client.Agent) {
		s := serve(t, agent.Config{EtcdPath: testBinary(t), SigtermWait: wait, SigintWait: wait})
		return s, s.client(t, client.Config{})
	}
	ctx := context.Background()

	t.Run("IgnoringTermAndIntEndsInSIGKILLAfterBothWaits", func(t *testing.T) {
		t.Parallel()
		s, c := newLadderAgent(t)
		pid, err := c.Start(ctx, []string{modeIgnoreTermInt})
		if err != nil {
			t.Fatal(err)
		}
		waitHelperReady(t, s.base)
		if err := c.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		expectGone(t, pid)
		st := expectServing(t, c)
		if st.LastStopSignal != "SIGKILL" || st.LastStopDuration < 2*wait || st.State != wire.StateStopped {
			t.Errorf("Status %+v, want stopped by SIGKILL after at least %v", st, 2*wait)
		}
		recs := readSignals(t, s.base)
		if names := signalNames(recs); !slices.Equal(names, []string{"ready", "SIGTERM", "SIGINT"}) {
			t.Fatalf("helper received %q, want SIGTERM then SIGINT", names)
		}
		// A signal may reach the helper late, never early: the gap can only
		// shrink by the first one's delivery delay.
		if gap := recs[2].at.Sub(recs[1].at); gap < wait-50*time.Millisecond {
			t.Errorf("SIGINT came %v after SIGTERM, want about the SIGTERM wait %v", gap, wait)
		}
	})

	t.Run("ExitingOnSIGINTEndsTheLadderThere", func(t *testing.T) {
		t.Parallel()
		s, c := newLadderAgent(t)
		if _, err := c.Start(ctx, []string{modeIgnoreTerm}); err != nil {
			t.Fatal(err)
		}
		waitHelperReady(t, s.base)
		if err := c.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		st := expectServing(t, c)
		if st.LastStopSignal != "SIGINT" || st.LastStopDuration < wait {
			t.Errorf("Status %+v, want stopped by SIGINT after at least %v", st, wait)
		}
		if names := signalNames(readSignals(t, s.base)); !slices.Equal(names, []string{"ready", "SIGTERM", "SIGINT"}) {
			t.Errorf("helper received %q, want SIGTERM then SIGINT", names)
		}
	})

	// A graceful stop holds the agent's operation lock for its whole
	// ladder; the fault lease's renewal must not queue behind it, or the
	// tester's renewal times out and it warns that the faults may end.
	t.Run("RenewalAnswersDuringALongStop", func(t *testing.T) {
		t.Parallel()
		s := serve(t, agent.Config{EtcdPath: testBinary(t), SigtermWait: 3 * time.Second, SigintWait: wait})
		c := s.client(t, client.Config{})
		if _, err := c.Start(ctx, []string{modeIgnoreTerm}); err != nil {
			t.Fatal(err)
		}
		waitHelperReady(t, s.base)
		stopped := make(chan error, 1)
		go func() { stopped <- c.Stop(ctx) }()
		// Renew once the helper has its SIGTERM: the stop is under way.
		deadline := time.Now().Add(10 * time.Second)
		for !slices.Contains(signalNames(readSignals(t, s.base)), "SIGTERM") {
			if time.Now().After(deadline) {
				t.Fatal("the helper got no SIGTERM")
			}
			time.Sleep(10 * time.Millisecond)
		}
		start := time.Now()
		if _, err := c.(client.FaultKeeper).KeepFaults(ctx, wire.MinFaultLease); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("a renewal during a stop took %v: it waited for the stop", took)
		}
		select {
		case err := <-stopped:
			t.Fatalf("the stop ended (%v) before the renewal was timed: the test proves nothing", err)
		default:
		}
		if err := <-stopped; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("StopContinuesAPausedProcessSoItCanActOnSignals", func(t *testing.T) {
		t.Parallel()
		s, c := newLadderAgent(t)
		pid, err := c.Start(ctx, []string{modeIgnoreTerm})
		if err != nil {
			t.Fatal(err)
		}
		waitHelperReady(t, s.base)
		if err := c.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if got := procState(t, pid); got != "T" {
			t.Fatalf("state %q after Pause, want T", got)
		}
		if err := c.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		// Without a SIGCONT the handled SIGTERM and SIGINT would stay
		// pending and only SIGKILL would end it.
		if st := expectServing(t, c); st.LastStopSignal != "SIGINT" {
			t.Errorf("paused helper stopped by %s, want SIGINT: the ladder must continue a paused process", st.LastStopSignal)
		}
		if names := signalNames(readSignals(t, s.base)); !slices.Equal(names, []string{"ready", "SIGTERM", "SIGINT"}) {
			t.Errorf("paused helper received %q, want SIGTERM then SIGINT", names)
		}
	})
}

func signalNames(recs []signalRecord) []string {
	var names []string
	for _, r := range recs {
		names = append(names, r.name)
	}
	return names
}

// TestPeerProxyFaultsOnRealPeerTraffic measures the agent's latency and
// isolation on etcd's own peer listener (which serves /version), reached
// through the advertised port the agent proxies.
func TestPeerProxyFaultsOnRealPeerTraffic(t *testing.T) {
	t.Parallel()
	s := serve(t, agent.Config{EtcdPath: etcdBinary(t)})
	m := newMember(t, "lat", true)
	c := s.client(t, client.Config{})
	ctx := context.Background()
	if _, err := c.Start(ctx, m.args); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	peerVersion := fmt.Sprintf("http://127.0.0.1:%d/version", m.advertisedPort)
	hc := noKeepAlive(5 * time.Second)
	// fastest is the quickest of n GETs of /version through the proxy, each
	// on a new connection.
	fastest := func(t *testing.T, n int) time.Duration {
		t.Helper()
		best := time.Hour
		for range n {
			start := time.Now()
			resp, err := hc.Get(peerVersion)
			if err != nil {
				t.Fatalf("GET %s: %v", peerVersion, err)
			}
			body := make([]byte, 256)
			k, _ := resp.Body.Read(body)
			resp.Body.Close()
			if !strings.Contains(string(body[:k]), "etcdserver") {
				t.Fatalf("GET %s: %s %q, want etcd's version", peerVersion, resp.Status, body[:k])
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	const latency = 200 * time.Millisecond

	t.Run("NoLatencyIsFast", func(t *testing.T) {
		if d := fastest(t, 3); d >= latency {
			t.Errorf("GET through the proxy without latency took %v, want well under %v", d, latency)
		}
	})
	t.Run("LatencyDelaysRequestAndResponse", func(t *testing.T) {
		if err := c.SetLatency(ctx, latency, 0); err != nil {
			t.Fatal(err)
		}
		if st := expectServing(t, c); st.Latency != latency || st.LatencyJitter != 0 {
			t.Errorf("Status latency %v ± %v, want %v ± 0", st.Latency, st.LatencyJitter, latency)
		}
		if d := fastest(t, 2); d < 2*latency-10*time.Millisecond {
			t.Errorf("GET through the proxy with %v latency took %v, want at least %v (request and response delayed)", latency, d, 2*latency)
		}
	})
	t.Run("RemoveLatencyRestoresSpeed", func(t *testing.T) {
		if err := c.RemoveLatency(ctx); err != nil {
			t.Fatal(err)
		}
		if d := fastest(t, 3); d >= latency {
			t.Errorf("GET after RemoveLatency took %v, want well under %v", d, latency)
		}
	})
	t.Run("DropPortSilencesTheAdvertisedPeerPort", func(t *testing.T) {
		expectErr(t, "DropPort of a port the proxy does not own", c.DropPort(ctx, m.clientPort), fmt.Sprint(m.clientPort))
		if err := c.DropPort(ctx, m.advertisedPort); err != nil {
			t.Fatal(err)
		}
		if st := expectServing(t, c); !slices.Equal(st.DroppedPorts, []int{m.advertisedPort}) {
			t.Errorf("Status.DroppedPorts = %v, want [%d]", st.DroppedPorts, m.advertisedPort)
		}
		_, err := noKeepAlive(700 * time.Millisecond).Get(peerVersion)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("GET %s while dropped: %v, want a timeout (silence, not a refusal)", peerVersion, err)
		}
		if err := health(m.clientURL(), 2*time.Second); err != nil {
			t.Errorf("the client port must be unaffected by a peer drop: %v", err)
		}
	})
	t.Run("RecoverPortRestoresThePeerPort", func(t *testing.T) {
		if err := c.RecoverPort(ctx, m.advertisedPort); err != nil {
			t.Fatal(err)
		}
		fastest(t, 1)
		expectErr(t, "RecoverPort twice", c.RecoverPort(ctx, m.advertisedPort), "not dropped")
	})
}

// TestIPTablesIsolationInNamespace runs the agent's iptables backend in a
// network namespace of the test's own and watches real TCP traffic there:
// the agent's chain exists only while a port is dropped, a dropped port
// swallows new connections and established ones, and the host's rules are
// never touched.
func TestIPTablesIsolationInNamespace(t *testing.T) {
	t.Parallel()
	ns := netnstest.New(t, "agtest")
	chain := fmt.Sprintf("AGTEST-%d", os.Getpid()%100000)
	hostBefore := hostChainLines(t, chain)
	s := serve(t, agent.Config{
		EtcdPath:        etcdBinary(t),
		NetworkFaults:   agent.FaultsIPTables,
		IPTablesChain:   chain,
		IPTablesCommand: ns.IPTablesCommand(),
	})
	c := s.client(t, client.Config{})
	ctx := context.Background()
	if st := expectServing(t, c); st.NetworkBackend != wire.BackendIPTables {
		t.Fatalf("backend %q, want iptables", st.NetworkBackend)
	}
	pristine := ns.Rules(t)
	echo := newNSEcho(t, ns)
	established, err := ns.Dial(echo.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer established.Close()
	if err := echoRoundTrip(established, "before", 2*time.Second); err != nil {
		t.Fatalf("before DropPort: %v", err)
	}
	port := echo.Addr().(*net.TCPAddr).Port

	if err := c.DropPort(ctx, port); err != nil {
		t.Fatal(err)
	}
	rules := strings.Join(ns.Rules(t), "\n")
	for _, want := range []string{"-N " + chain, "-A INPUT -j " + chain, "-A OUTPUT -j " + chain, fmt.Sprintf("--dport %d -j DROP", port), fmt.Sprintf("--sport %d -j DROP", port)} {
		if !strings.Contains(rules, want) {
			t.Errorf("iptables -S in %s while dropped has no %q:\n%s", ns.Name, want, rules)
		}
	}
	if conn, err := ns.Dial(echo.Addr().String(), 700*time.Millisecond); err == nil {
		conn.Close()
		t.Error("new connection to a dropped port succeeded")
	} else if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Errorf("new connection to a dropped port: %v, want a timeout (DROP, not a refusal)", err)
	}
	if err := echoRoundTrip(established, "during", 700*time.Millisecond); err == nil {
		t.Error("established connection still echoes while its port is dropped")
	}
	if got := hostChainLines(t, chain); !slices.Equal(got, hostBefore) {
		t.Errorf("host's iptables rules naming %s changed while dropped: %q, before %q", chain, got, hostBefore)
	}

	if err := c.RecoverPort(ctx, port); err != nil {
		t.Fatal(err)
	}
	if got := ns.Rules(t); !slices.Equal(got, pristine) {
		t.Errorf("iptables -S in %s after RecoverPort:\n%s\nwant as before:\n%s", ns.Name, strings.Join(got, "\n"), strings.Join(pristine, "\n"))
	}
	conn, err := ns.Dial(echo.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatalf("new connection after RecoverPort: %v", err)
	}
	defer conn.Close()
	if err := echoRoundTrip(conn, "after", 2*time.Second); err != nil {
		t.Errorf("after RecoverPort: %v", err)
	}

	// A fault left by an agent that died is removed by the next agent.
	if err := c.DropPort(ctx, port); err != nil {
		t.Fatal(err)
	}
	successor, err := agent.New(agent.Config{
		EtcdPath:        etcdBinary(t),
		BaseDir:         t.TempDir(),
		NetworkFaults:   agent.FaultsIPTables,
		IPTablesChain:   chain,
		IPTablesCommand: ns.IPTablesCommand(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer successor.Close()
	if got := ns.Rules(t); !slices.Equal(got, pristine) {
		t.Errorf("iptables -S after a new agent started on a leftover drop:\n%s\nwant the leftover removed", strings.Join(got, "\n"))
	}
	if got := hostChainLines(t, chain); !slices.Equal(got, hostBefore) {
		t.Errorf("host's iptables rules naming %s changed: %q, before %q", chain, got, hostBefore)
	}
}

// hostChainLines is the host's iptables -S lines that name chain: the test
// must never add one. Other lines may change under other programs.
func hostChainLines(t *testing.T, chain string) []string {
	t.Helper()
	out, err := exec.Command("iptables", "-w", "-S").Output()
	if err != nil {
		t.Fatalf("host iptables -S: %v", err)
	}
	var lines []string
	for _, l := range netnstest.Lines(string(out)) {
		if strings.Contains(l, chain) {
			lines = append(lines, l)
		}
	}
	return lines
}

// newNSEcho is a TCP echo server listening inside ns until the test ends.
func newNSEcho(t *testing.T, ns *netnstest.NS) net.Listener {
	t.Helper()
	ln := ns.Listen(t)
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			go func() {
				buf := make([]byte, 512)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln
}

func echoRoundTrip(c net.Conn, msg string, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// TestArgsCannotChangeTheBinary passes a shell command line as etcd's
// arguments: the agent must run the configured etcd with them as argv,
// never a shell, so no file appears.
func TestArgsCannotChangeTheBinary(t *testing.T) {
	t.Parallel()
	s := serve(t, agent.Config{EtcdPath: etcdBinary(t)})
	c := s.client(t, client.Config{})
	cwd, _ := os.Getwd()
	marker := filepath.Join(t.TempDir(), "pwned")
	for _, args := range [][]string{
		{"/bin/sh", "-c", "touch x"},
		{"--name", "$(touch " + marker + ")", "; touch x", "`touch x`"},
	} {
		pid, err := c.Start(context.Background(), args)
		if err == nil {
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			t.Errorf("Start(%q) started pid %d (%s); etcd must refuse positional arguments", args, pid, exe)
			c.Kill(context.Background())
			continue
		}
		// etcd itself refused the arguments: proof that etcd ran, not sh.
		expectErr(t, fmt.Sprintf("Start(%q)", args), err, "exited at once", "not a valid flag")
	}
	for _, p := range []string{filepath.Join(s.base, "x"), filepath.Join(cwd, "x"), marker} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists (%v): an argument was run as a command", p, err)
		}
	}
	expectServing(t, c)
}

// TestFailedStartLeavesNoProxy checks that an etcd that exits at once
// leaves no peer proxy behind: Status does not claim one, and its port is
// free again.
func TestFailedStartLeavesNoProxy(t *testing.T) {
	t.Parallel()
	s := serve(t, agent.Config{EtcdPath: etcdBinary(t)})
	c := s.client(t, client.Config{})
	m := newMember(t, "bad", true)
	_, err := c.Start(context.Background(), append(m.args, "--no-such-flag"))
	expectErr(t, "Start with a bad flag", err, "exited at once")
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerProxy {
		t.Errorf("Status claims a peer proxy after a failed start: %+v", st)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", m.advertisedPort))
	if err != nil {
		t.Fatalf("the proxy's port %d is still taken after a failed start: %v", m.advertisedPort, err)
	}
	ln.Close()
	expectServing(t, c)
}

// TestPathsOutsideTheBaseDirAreRefused checks the flags by which a caller
// could make etcd write or use a directory outside the base dir.
func TestPathsOutsideTheBaseDirAreRefused(t *testing.T) {
	t.Parallel()
	s := serve(t, agent.Config{EtcdPath: etcdBinary(t)})
	c := s.client(t, client.Config{})
	outside := t.TempDir()
	m := newMember(t, "paths", false)
	config := filepath.Join(outside, "etcd.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf("name: paths\ndata-dir: %s\nlisten-client-urls: %s\nadvertise-client-urls: %s\n",
		filepath.Join(outside, "data"), m.clientURL(), m.clientURL())), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"DataDirUpwards", []string{"--data-dir", "../x"}, "inside the base dir"},
		{"DataDirAbsoluteElsewhere", []string{"--data-dir=/etc"}, "inside the base dir"},
		{"DataDirIsTheBaseDir", []string{"--data-dir=" + s.base}, "inside the base dir"},
		{"WALDirElsewhere", []string{"--wal-dir", filepath.Join(outside, "wal")}, "inside the base dir"},
		{"SingleDashWALDir", []string{"-wal-dir=" + filepath.Join(outside, "wal")}, "inside the base dir"},
		{"ConfigFileOverridesEveryFlag", append(slices.Clone(m.args), "--config-file", config), "config-file"},
		{"LogOutputFileElsewhere", append(slices.Clone(m.args), "--log-outputs=stderr,"+filepath.Join(outside, "etcd.log")), "inside the base dir"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pid, err := c.Start(context.Background(), tc.args)
			if err == nil {
				defer c.Terminate(context.Background())
				t.Errorf("Start(%q) started pid %d", tc.args, pid)
				time.Sleep(time.Second) // let etcd create what it will
			} else {
				expectErr(t, fmt.Sprintf("Start(%q)", tc.args), err, tc.want)
			}
			if st := expectServing(t, c); st.Pid != 0 && err != nil {
				t.Errorf("a refused Start left pid %d running", st.Pid)
			}
		})
	}
	entries, _ := os.ReadDir(outside)
	for _, e := range entries {
		if e.Name() != "etcd.yaml" {
			t.Errorf("etcd wrote %s outside the base dir", filepath.Join(outside, e.Name()))
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(s.base), "x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("../x relative to the base dir exists: %v", err)
	}
}

// TestDataDirCannotBeSwallowedByATrailingFlag ends etcd's argv with a flag
// that takes a value but has none. The agent's own --data-dir must not
// become that value: etcd would then write its data to its default dir,
// where Terminate and Archive never look.
func TestDataDirCannotBeSwallowedByATrailingFlag(t *testing.T) {
	t.Parallel()
	s := serve(t, agent.Config{EtcdPath: etcdBinary(t)})
	c := s.client(t, client.Config{})
	m := newMember(t, "swallow", false)
	args := append(slices.Clone(m.args), "--initial-cluster-token")
	if _, err := c.Start(context.Background(), args); err != nil {
		// etcd refusing the value-less flag is as good: v3.6 says so last
		// in its log, v3.7 first and then prints its usage.
		if !strings.Contains(err.Error(), "flag needs an argument") && !strings.Contains(err.Error(), "Start an etcd server") {
			t.Fatalf("Start with a trailing value-less flag: %v; want etcd to refuse the flag", err)
		}
		return
	}
	waitHealthy(t, m.clientURL())
	if _, err := os.Stat(filepath.Join(s.base, "etcd.data", "member")); err != nil {
		t.Errorf("etcd's data is not in the data dir the agent manages: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.base, "swallow.etcd")); err == nil {
		t.Errorf("etcd wrote its data to its default dir %s: the agent's --data-dir became a flag's value", filepath.Join(s.base, "swallow.etcd"))
	}
}

// TestCloseRefusesLaterCalls closes an agent while a caller's connection
// is still open (Serve does not cut hijacked RPC connections): a call that
// comes after Close must not start an etcd or add a fault that nothing
// will stop or heal, since the agent's process is about to exit.
func TestCloseRefusesLaterCalls(t *testing.T) {
	t.Parallel()
	s := serve(t, agent.Config{EtcdPath: etcdBinary(t)})
	c := s.client(t, client.Config{})
	m := newMember(t, "closed", true)
	ctx := context.Background()
	if _, err := c.Start(ctx, m.args); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	pid, err := c.Start(ctx, m.args)
	expectErr(t, "Start after Close", err, "shutting down")
	_, err = c.Restart(ctx)
	expectErr(t, "Restart after Close", err, "shutting down")
	expectErr(t, "DropPort after Close", c.DropPort(ctx, m.advertisedPort), "shutting down")
	if st := expectServing(t, c); st.Pid != 0 || pid != 0 {
		t.Errorf("after Close: %+v (Start returned pid %d), want no etcd running", st, pid)
	}
}
