package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/pkg/capnslog"
	"go.uber.org/goleak"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/etcdtest"
	"github.com/etcd-functional/functional/internal/freeport"
	"github.com/etcd-functional/functional/internal/logfmt"
	"github.com/etcd-functional/functional/internal/logtail"
)

// helperEnv marks a process as the signal-recording helper: the agent runs
// the test binary itself as its "etcd" where a test must see which signals
// arrive and when. TestMain sets it for every child of the test process
// (the agent gives no way to set one child's environment), so a child is
// the helper only if it also has the --data-dir the agent always passes
// (fuzzing workers, also children, have none); the helper's mode is its
// first other argument, the argv the test passes to Start.
const helperEnv = "AGENT_TEST_HELPER"

// Helper modes: which signals the helper survives. It records each signal
// it receives, with a timestamp, in signalsFile in its working directory
// (the agent's base dir).
const (
	modeIgnoreTermInt = "ignore-term-int" // survives SIGTERM and SIGINT: only SIGKILL ends it
	modeIgnoreTerm    = "ignore-term"     // survives SIGTERM, exits on SIGINT
	modeExit3OnTerm   = "exit-3-on-term"  // exits with code 3 on SIGTERM, as a failed shutdown would
	signalsFile       = "signals.log"
)

// TestMain runs the helper or the fake tester when the test binary is
// started as one, and otherwise the tests, failing the run if any goroutine outlives them.
func TestMain(m *testing.M) {
	if os.Getenv(fakeTesterEnv) != "" {
		os.Exit(runFakeTester())
	}
	if os.Getenv(helperEnv) != "" && slices.ContainsFunc(os.Args[1:], isAgentDataDir) {
		// syscall.Exit, not os.Exit: a race-enabled binary sleeps a second
		// in os.Exit (GORACE atexit_sleep_ms), which would blur the ladder.
		syscall.Exit(runHelper(os.Args[1:]))
	}
	os.Setenv(helperEnv, "1")
	capnslog.SetFormatter(logfmt.NewFormatter(agentLog))
	log.SetOutput(agentLog) // net/http's server errors (TLS handshakes)
	capnslog.SetGlobalLogLevel(capnslog.INFO)
	goleak.VerifyTestMain(m)
}

// runHelper is the helper process: it records the signals it receives and
// stays alive until a signal its mode does not survive, SIGKILL, the death
// of its parent, or a minute.
func runHelper(args []string) int {
	mode := "" // the first argument that is not the agent's --data-dir
	for _, a := range args {
		if !isAgentDataDir(a) {
			mode = a
			break
		}
	}
	if mode != modeIgnoreTermInt && mode != modeIgnoreTerm && mode != modeExit3OnTerm {
		fmt.Fprintf(os.Stderr, "agent test helper: unknown mode %q (argv %q); exiting at once\n", mode, args)
		return 2
	}
	f, err := os.OpenFile(signalsFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent test helper:", err)
		return 1
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	fmt.Fprintf(f, "ready %d\n", time.Now().UnixNano())
	ppid := os.Getppid()
	tick := time.NewTicker(50 * time.Millisecond)
	giveUp := time.After(time.Minute)
	for {
		select {
		case s := <-sigs:
			name := map[os.Signal]string{syscall.SIGTERM: "SIGTERM", syscall.SIGINT: "SIGINT"}[s]
			fmt.Fprintf(f, "%s %d\n", name, time.Now().UnixNano())
			if mode == modeIgnoreTerm && s == syscall.SIGINT {
				return 0
			}
			if mode == modeExit3OnTerm && s == syscall.SIGTERM {
				return 3
			}
		case <-tick.C:
			if os.Getppid() != ppid {
				return 1 // the test process died: do not linger
			}
		case <-giveUp:
			return 1
		}
	}
}

func isAgentDataDir(arg string) bool { return strings.HasPrefix(arg, "--data-dir=") }

// signalRecord is one line of the helper's signalsFile.
type signalRecord struct {
	name string
	at   time.Time
}

func readSignals(t *testing.T, base string) []signalRecord {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(base, signalsFile))
	if err != nil {
		t.Fatal(err)
	}
	var recs []signalRecord
	for l := range strings.Lines(string(b)) {
		name, ns, ok := strings.Cut(strings.TrimSpace(l), " ")
		n, err := strconv.ParseInt(ns, 10, 64)
		if !ok || err != nil {
			t.Fatalf("helper's %s: bad line %q", signalsFile, l)
		}
		recs = append(recs, signalRecord{name, time.Unix(0, n)})
	}
	return recs
}

// waitHelperReady waits until the helper has installed its signal handlers.
func waitHelperReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(filepath.Join(base, signalsFile)); strings.HasPrefix(string(b), "ready ") {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("signal-recording helper not ready after 10 s")
}

// logSink collects the agent's log (capnslog is global) so that a test can
// check what the agent logged after a point it marked. It keeps at most
// maxLog bytes, so that a long fuzzing run does not grow it without bound.
type logSink struct {
	mu      sync.Mutex
	buf     []byte
	dropped int // bytes discarded from the front
}

const maxLog = 4 << 20

var agentLog = &logSink{}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if len(l.buf) > maxLog {
		cut := len(l.buf) - maxLog/2
		l.buf = append([]byte(nil), l.buf[cut:]...)
		l.dropped += cut
	}
	return len(p), nil
}

// mark returns the position of the end of the log so far.
func (l *logSink) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped + len(l.buf)
}

// since returns what was logged after mark.
func (l *logSink) since(mark int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf[max(0, mark-l.dropped):])
}

// etcdBinary returns the real etcd, or skips the test.
func etcdBinary(t *testing.T) string {
	t.Helper()
	bin, err := etcdtest.Binary()
	if err != nil {
		t.Skipf("no etcd binary: %v", err)
	}
	return bin
}

// testBinary is the test binary itself, run as the signal-recording helper.
func testBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// served is an Agent served in-process on a loopback port.
type served struct {
	*agent.Agent
	addr string
	base string
}

// serve creates an agent from cfg (base dir: a temp dir; network faults:
// the proxy, so that no test touches the host's iptables) and serves it on
// 127.0.0.1:0 until the test ends; then it closes the agent and checks that
// no etcd is left running.
func serve(t *testing.T, cfg agent.Config) *served {
	t.Helper()
	return serveTLS(t, cfg, nil)
}

// serveTLS is serve with TLS on the RPC port.
func serveTLS(t *testing.T, cfg agent.Config, tlsConfig *tls.Config) *served {
	t.Helper()
	if cfg.BaseDir == "" {
		cfg.BaseDir = t.TempDir()
	}
	if cfg.NetworkFaults == "" {
		cfg.NetworkFaults = agent.FaultsProxy
	}
	if cfg.SigtermWait == 0 {
		cfg.SigtermWait = 5 * time.Second
	}
	if cfg.SigintWait == 0 {
		cfg.SigintWait = time.Second
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln, tlsConfig) }()
	s := &served{Agent: a, addr: ln.Addr().String(), base: cfg.BaseDir}
	mark := agentLog.mark()
	t.Cleanup(func() {
		if t.Failed() {
			// Parallel tests share the log; the lines are still the best
			// account of what this agent did.
			t.Logf("agent log since this agent started (all tests):\n%s", logtail.Lines(agentLog.since(mark), 60))
			if b, err := os.ReadFile(filepath.Join(cfg.BaseDir, "etcd.log")); err == nil {
				t.Logf("etcd.log ends:\n%s", logtail.Lines(string(b), 20))
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		pid := a.Status().Pid
		if err := a.Close(); err != nil {
			t.Errorf("agent Close: %v", err)
		}
		if st := a.Status(); st.Pid != 0 {
			t.Errorf("after Close: etcd pid %d still running", st.Pid)
		}
		if pid != 0 {
			expectGone(t, pid)
		}
	})
	return s
}

// client returns a typed client of s; it is closed when the test ends,
// before the agent is.
func (s *served) client(t *testing.T, cfg client.Config) client.Agent {
	t.Helper()
	if cfg.RetryFor == 0 {
		cfg.RetryFor = 2 * time.Second
	}
	c, err := client.New(s.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// member is the argv of a one-member etcd cluster on free loopback ports.
// With a proxy the member listens for peers on one port and advertises
// another, so that the agent proxies the advertised port.
type member struct {
	clientPort, peerPort, advertisedPort int
	args                                 []string
}

func newMember(t *testing.T, name string, proxy bool) member {
	t.Helper()
	ports, err := freeport.Take(3, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := member{clientPort: ports[0], peerPort: ports[1], advertisedPort: ports[1]}
	if proxy {
		m.advertisedPort = ports[2]
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", m.clientPort)
	advertised := fmt.Sprintf("http://127.0.0.1:%d", m.advertisedPort)
	m.args = []string{
		"--name", name,
		"--data-dir", "etcd.data",
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.peerPort),
		"--initial-advertise-peer-urls", advertised,
		"--initial-cluster", name + "=" + advertised,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", fmt.Sprintf("agent-test-%d-%d", os.Getpid(), m.clientPort),
		"--unsafe-no-fsync",
	}
	return m
}

func (m member) clientURL() string { return fmt.Sprintf("http://127.0.0.1:%d", m.clientPort) }

// noKeepAlive is an HTTP client that leaves no idle connection (and so no
// goroutine) behind.
func noKeepAlive(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
}

// health GETs etcd's /health once.
func health(url string, timeout time.Duration) error {
	resp, err := noKeepAlive(timeout).Get(url + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body [512]byte
	n, _ := resp.Body.Read(body[:])
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body[:n]), `"health":"true"`) {
		return fmt.Errorf("GET %s/health: %s %s", url, resp.Status, body[:n])
	}
	return nil
}

// waitHealthy polls etcd's /health until it answers OK, for at most 20 s.
func waitHealthy(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = health(url, time.Second); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("etcd at %s not healthy after 20 s: %v", url, err)
}

// expectGone checks that pid no longer exists: the agent reaped it.
func expectGone(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		state, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		t.Errorf("pid %d: kill(pid, 0) = %v, want ESRCH (process gone and reaped); /proc stat: %s", pid, err, state)
	}
}

// procState is the one-letter state of pid from /proc/<pid>/stat.
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return fields[0]
}

// expectErr fails unless err is an error whose text contains every one of
// wants.
func expectErr(t *testing.T, what string, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want one containing %q", what, wants)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("%s: error %q, want it to contain %q", what, err, w)
		}
	}
}

// expectServing checks that the agent still answers a Status call.
func expectServing(t *testing.T, c client.Agent) wire.Status {
	t.Helper()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatalf("Status after the previous call: %v; the agent must keep serving", err)
	}
	return st
}
