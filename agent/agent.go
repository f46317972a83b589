// Package agent is etcd-agent: a daemon on every machine of a test cluster
// that manages one etcd process on behalf of the tester. It starts, stops
// (gracefully: SIGTERM, then SIGINT, then SIGKILL), restarts, kills, pauses,
// archives and terminates etcd, and cuts or slows the member's network, as
// the RPC contract of package wire describes.
//
// The agent is bounded in what a caller can make it do: it only ever runs
// the etcd binary it was configured with, as argv and never through a
// shell; every path etcd writes must lie inside the base dir; requests are
// size-limited and may require a token and TLS client certificates.
//
// No fault outlives the agent: it keeps a record of its etcd process in the
// base dir, and on start it removes leftover rules of a crashed predecessor
// and adopts (and resumes, if paused) the etcd it finds from that record.
// On Close it heals every fault and stops etcd.
//
// Nor does a fault outlive its tester: every fault is held on a lease
// (see wire.MethodKeepFaults) that the tester renews while it holds the
// fault. When the lease ends with a fault in place, the tester is taken to
// be gone and the agent heals on its own: it removes isolation and
// latency, resumes a paused etcd and restarts one that Stop or Kill ended.
package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/pkg/capnslog"

	"github.com/etcd-functional/functional/agent/netfault"
	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/logtail"
)

var plog = capnslog.NewPackageLogger("github.com/etcd-functional/functional", "agent")

// Files and directories inside the base dir.
const (
	defaultDataDir = "etcd.data"
	logFile        = "etcd.log"
	stateFile      = "agent-state.json"
	archiveDir     = "failure_archive"
)

// Network-fault backend choices for Config.NetworkFaults.
const (
	FaultsAuto     = "auto"
	FaultsIPTables = wire.BackendIPTables
	FaultsProxy    = wire.BackendProxy
)

// Config configures an Agent.
type Config struct {
	// EtcdPath is the only binary the agent ever runs.
	EtcdPath string
	// BaseDir holds etcd's data dir and log, the archives and the agent's
	// own record. Every path etcd writes must lie inside it.
	BaseDir string
	// SigtermWait and SigintWait are how long a stop waits after SIGTERM
	// and after SIGINT before the next, harder signal.
	SigtermWait, SigintWait time.Duration
	// NetworkFaults is FaultsAuto (iptables where it works, else the
	// proxy), FaultsIPTables or FaultsProxy.
	NetworkFaults string
	// IPTablesChain is the agent's own chain; IPTablesCommand runs
	// iptables (default "iptables"; tests run it in a namespace).
	IPTablesChain   string
	IPTablesCommand []string
	// Token, if set, must be presented by every caller as a bearer token.
	Token string
	// MaxRequestBytes bounds one RPC request; default 1 MiB.
	MaxRequestBytes int64
	// FaultLease is how long a fault lasts after the call that injected
	// it unless the lease is renewed (wire.MethodKeepFaults); default
	// DefaultFaultLease, within wire.MinFaultLease..wire.MaxFaultLease.
	FaultLease time.Duration
}

// Defaults for Config.
const (
	// DefaultSigtermWait is longer than etcd's own graceful shutdown can
	// take: with clients' watch streams open, etcd waits up to its request
	// timeout (5 s + 2 election timeouts: 7 s by default) for gRPC to stop
	// gracefully, then up to as long again to hand leadership over, which
	// takes the whole wait when the transferee is stopping too (a quorum
	// stopped at once). Measured: 14-15 s. A shorter wait turned such
	// graceful stops into SIGKILLs, which the tester fails.
	DefaultSigtermWait     = 30 * time.Second
	DefaultSigintWait      = 5 * time.Second
	DefaultMaxRequestBytes = 1 << 20
	// DefaultFaultLease outlasts the longest hold of a tester that does
	// not renew leases (an older one) with its default flags: the
	// _UNTIL_TRIGGER_SNAPSHOT cases wait up to 30 s for the snapshot, then
	// -case-delay (3 s), with room for a slow stop on a busy machine. A
	// cluster whose tester died is still whole again within a minute; a
	// tester that renews (every few -case-delays) shortens that.
	DefaultFaultLease = time.Minute
	// sigquitWait is how long Cleanup waits for the Go runtime to write
	// its goroutine dump and exit before it climbs the ladder.
	sigquitWait = 5 * time.Second
	// startCheck is how long Start watches a new process for an immediate
	// exit (bad flags, port in use), so that the caller gets the reason.
	startCheck = 300 * time.Millisecond
	// pauseWait bounds how long Pause waits for every thread of etcd to
	// stop after SIGSTOP.
	pauseWait = 5 * time.Second
)

// Agent manages one etcd process. Its methods are the RPCs of package wire;
// Handler serves them.
type Agent struct {
	cfg      Config
	isolator netfault.Isolator // the iptables backend; nil with the proxy backend
	backend  string

	op     sync.Mutex // serialises operations; a stop can take seconds
	closed bool       // set by Close under op and mu: later operations are refused

	mu               sync.Mutex // guards the fields below; held briefly
	proc             *process
	args             etcdArgs
	state            wire.State
	lastStopSignal   string
	lastStopDuration time.Duration
	proxy            *netfault.Proxy
	proxyRoute       string // "listen → target" of proxy
	dropped          []int
	latency, jitter  time.Duration
	lastArchive      string

	fp failpointSupport // set once by New
	// The fault lease. faultStopped is set when Stop or Kill ended etcd,
	// and cleared when anything starts, terminates or archives it: only
	// a stop that is a fault is undone when the lease ends.
	leaseUntil      time.Time   // zero: no lease runs
	leaseTimer      *time.Timer // runs expireLease at leaseUntil; nil until the first lease
	faultStopped    bool
	faultsExpiredAt time.Time
	faultsExpired   []string
	// etcdVersion and etcdVersionErr are learned once in New and never
	// change: the agent runs one binary for its whole life.
	etcdVersion, etcdVersionErr string
	out                         outbound   // the member's outbound peer connections (delay.go)
	lastExit                    exitStatus // how the last etcd process ended (exit.go)
}

// New checks cfg, prepares the base dir, removes network faults an earlier
// agent left behind and adopts the etcd process it recorded, if that still
// runs.
func New(cfg Config) (*Agent, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, state: wire.StateUninitialized, fp: detectFailpoints(cfg.EtcdPath)}
	if err := a.chooseBackend(); err != nil {
		return nil, err
	}
	if a.isolator != nil {
		if err := a.isolator.Reset(); err != nil {
			return nil, fmt.Errorf("remove leftover network faults: %w", err)
		}
	}
	if err := a.initOutbound(); err != nil {
		return nil, err
	}
	if err := a.recover(); err != nil {
		return nil, err
	}
	if err := a.removeStaleOutbound(); err != nil {
		return nil, err
	}
	// A binary whose version cannot be learned still runs: the caller
	// sees why in Status and decides (the tester refuses to guess flags).
	if v, err := etcdVersion(cfg.EtcdPath); err != nil {
		a.etcdVersionErr = err.Error()
		plog.Warningf("etcd %s: version unknown: %v", cfg.EtcdPath, err)
	} else {
		a.etcdVersion = v.String()
	}
	plog.Infof("agent ready: etcd %s (version %s), base dir %s, network faults by %s, failpoints %t",
		cfg.EtcdPath, cmp.Or(a.etcdVersion, "unknown"), cfg.BaseDir, a.backend, a.fp.ok)
	return a, nil
}

func (c *Config) setDefaults() error {
	if c.EtcdPath == "" {
		return errors.New("etcd path is empty: set the etcd binary to run")
	}
	p := c.EtcdPath
	if !strings.Contains(p, "/") {
		lp, err := exec.LookPath(p)
		if err != nil {
			return fmt.Errorf("etcd path %q: %w", p, err)
		}
		p = lp
	}
	p, err := filepath.Abs(p)
	if err != nil {
		return fmt.Errorf("etcd path %q: %w", c.EtcdPath, err)
	}
	st, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("etcd path: %w", err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("etcd path %s: not an executable file", p)
	}
	c.EtcdPath = p
	if c.BaseDir == "" {
		return errors.New("base dir is empty: set a directory for etcd's data, log and archives")
	}
	if c.BaseDir, err = filepath.Abs(c.BaseDir); err != nil {
		return fmt.Errorf("base dir: %w", err)
	}
	if err := os.MkdirAll(c.BaseDir, 0o755); err != nil {
		return fmt.Errorf("base dir: %w", err)
	}
	if c.SigtermWait <= 0 {
		c.SigtermWait = DefaultSigtermWait
	}
	if c.SigintWait <= 0 {
		c.SigintWait = DefaultSigintWait
	}
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if c.NetworkFaults == "" {
		c.NetworkFaults = FaultsAuto
	}
	if c.IPTablesChain == "" {
		c.IPTablesChain = "ETCD-AGENT"
	}
	if c.FaultLease == 0 {
		c.FaultLease = DefaultFaultLease
	}
	if err := checkLease(c.FaultLease); err != nil {
		return fmt.Errorf("default %w", err)
	}
	return nil
}

func checkLease(d time.Duration) error {
	if d < wire.MinFaultLease || d > wire.MaxFaultLease {
		return fmt.Errorf("fault lease %v: want %v..%v", d, wire.MinFaultLease, wire.MaxFaultLease)
	}
	return nil
}

func (a *Agent) chooseBackend() error {
	switch a.cfg.NetworkFaults {
	case FaultsProxy:
		a.backend = wire.BackendProxy
		return nil
	case FaultsIPTables, FaultsAuto:
	default:
		return fmt.Errorf("network faults %q: want %s, %s or %s", a.cfg.NetworkFaults, FaultsAuto, FaultsIPTables, FaultsProxy)
	}
	ipt, err := netfault.NewIPTables(a.cfg.IPTablesChain, a.cfg.IPTablesCommand...)
	if err == nil {
		err = ipt.Available()
	}
	if err != nil {
		if a.cfg.NetworkFaults == FaultsIPTables {
			return fmt.Errorf("network faults by iptables: %w", err)
		}
		plog.Warningf("iptables unusable (%v): network faults go through the peer proxy; isolation cuts only traffic into this member's advertised peer port", err)
		a.backend = wire.BackendProxy
		return nil
	}
	a.isolator, a.backend = ipt, wire.BackendIPTables
	return nil
}

// record is what the agent keeps on disk about its etcd, so that an agent
// started after a crash knows what its predecessor left running.
type record struct {
	Pid       int        `json:"pid"`
	StartTime uint64     `json:"start_time"`
	Args      []string   `json:"args"`
	State     wire.State `json:"state"`
	// FaultStopped: Stop or Kill ended etcd as a fault, which the next
	// agent process undoes when its fault lease runs out.
	FaultStopped bool `json:"fault_stopped,omitempty"`
}

func (a *Agent) recordPath() string { return filepath.Join(a.cfg.BaseDir, stateFile) }

// save writes the record; a.mu held. A failure is logged, not returned:
// the operation it follows has happened, and the caller must hear of that.
func (a *Agent) save() {
	r := record{Args: a.args, State: a.state, FaultStopped: a.faultStopped}
	if a.proc != nil && !a.proc.exited() {
		r.Pid, r.StartTime = a.proc.pid, a.proc.startTime
	}
	if err := writeJSON(a.recordPath(), r); err != nil {
		plog.Errorf("save agent record: %v", err)
	}
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// recover reads the record of an earlier agent process, if any, and takes
// over the etcd it started. A paused etcd is resumed: the fault that paused
// it died with its injector.
func (a *Agent) recover() error {
	b, err := os.ReadFile(a.recordPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read agent record: %w", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		plog.Warningf("ignoring unreadable agent record %s: %v", a.recordPath(), err)
		return nil
	}
	a.args, a.state = r.Args, r.State
	if a.state == "" {
		a.state = wire.StateUninitialized
	}
	if r.Pid > 0 {
		p, err := adoptProcess(r.Pid, r.StartTime, a.cfg.EtcdPath)
		if err != nil {
			plog.Infof("etcd pid %d of the earlier agent is gone (%v)", r.Pid, err)
			a.state = wire.StateStopped
		} else {
			a.proc = p
			if r.State == wire.StatePaused {
				if err := p.signal(syscall.SIGCONT); err != nil {
					return fmt.Errorf("resume adopted etcd: %w", err)
				}
				plog.Warningf("resumed etcd pid %d, left paused by an earlier agent", p.pid)
			}
			a.state = wire.StateStarted
			plog.Infof("adopted etcd pid %d started by an earlier agent", p.pid)
			if err := a.ensureProxy(); err != nil {
				plog.Errorf("adopted etcd pid %d: %v", p.pid, err)
			}
			if err := a.ensureOutboundLocked(a.args); err != nil {
				plog.Errorf("adopted etcd pid %d: %v", p.pid, err)
			}
		}
	} else if a.state == wire.StateStarted || a.state == wire.StatePaused {
		a.state = wire.StateStopped
	}
	if r.FaultStopped && a.proc == nil && a.state == wire.StateStopped {
		// The fault outlived the agent that injected it; it gets a lease
		// of its own, so that a tester still alive can restart etcd
		// itself, and otherwise this agent does.
		a.mu.Lock()
		a.faultStopped = true
		a.extendLeaseLocked()
		a.mu.Unlock()
		plog.Warningf("etcd was left stopped by a fault of the earlier agent: restarting it in %v unless a caller does first", a.cfg.FaultLease)
	}
	a.save()
	return nil
}

// Close heals every network fault, stops etcd (the whole ladder) and
// closes the proxy. The agent is not usable afterwards.
func (a *Agent) Close() error {
	a.op.Lock()
	defer a.op.Unlock()
	a.mu.Lock()
	a.closed = true // under a.op for lockOp, and a.mu for KeepFaults
	if a.leaseTimer != nil {
		a.leaseTimer.Stop() // a run already waiting for a.op finds a.closed
	}
	a.mu.Unlock()
	var errs []error
	if err := a.healNetwork(); err != nil {
		errs = append(errs, err)
	}
	a.mu.Lock()
	p := a.proc
	a.mu.Unlock()
	if p != nil && !p.exited() {
		if err := a.stop(p, a.ladder()); err != nil {
			errs = append(errs, err)
		}
	}
	a.mu.Lock()
	if a.proxy != nil {
		errs = append(errs, a.proxy.Close())
		a.proxy = nil
	}
	a.closeOutboundLocked()
	a.save()
	a.mu.Unlock()
	return errors.Join(errs...)
}

// errClosed refuses an operation after Close. Serve does not cut RPC
// connections that are open when it returns, and a call on one of them
// must not start an etcd or add a fault once the agent has stopped etcd
// and healed the network for good: its process is about to exit.
var errClosed = errors.New("etcd-agent is shutting down")

// lockOp takes a.op for an operation, unless the agent is closed.
func (a *Agent) lockOp() error {
	a.op.Lock()
	if a.closed {
		a.op.Unlock()
		return errClosed
	}
	return nil
}

func (a *Agent) ladder() []stopStep {
	return []stopStep{{syscall.SIGTERM, a.cfg.SigtermWait}, {syscall.SIGINT, a.cfg.SigintWait}}
}

// running returns the live process, or an error naming the state; a.mu held.
func (a *Agent) runningLocked() (*process, error) {
	if a.proc == nil || a.proc.exited() {
		if a.state == wire.StateUninitialized {
			return nil, errors.New("etcd has not been started")
		}
		return nil, fmt.Errorf("etcd is not running (state %s)", a.currentStateLocked())
	}
	return a.proc, nil
}

// currentStateLocked is a.state, corrected for an etcd that exited on its
// own since the agent last acted on it.
func (a *Agent) currentStateLocked() wire.State {
	if (a.state == wire.StateStarted || a.state == wire.StatePaused) && (a.proc == nil || a.proc.exited()) {
		return wire.StateStopped
	}
	return a.state
}

// Start starts etcd with args and returns its pid.
func (a *Agent) Start(args []string) (int, error) {
	if err := a.lockOp(); err != nil {
		return 0, err
	}
	defer a.op.Unlock()
	v, err := validateArgs(a.cfg.BaseDir, args)
	if err != nil {
		return 0, err
	}
	return a.start(v)
}

func (a *Agent) start(args etcdArgs) (int, error) {
	a.mu.Lock()
	if p := a.proc; p != nil && !p.exited() {
		a.mu.Unlock()
		return 0, fmt.Errorf("etcd is already running (pid %d, state %s): stop it first", p.pid, a.state)
	}
	a.mu.Unlock()
	for _, d := range []string{args.dataDir(), args.walDir()} {
		if d != "" {
			if err := os.MkdirAll(filepath.Dir(d), 0o755); err != nil {
				return 0, fmt.Errorf("create parent of %s: %w", d, err)
			}
		}
	}
	a.mu.Lock()
	err := a.ensureOutboundLocked(args) // before etcd dials its peers
	a.mu.Unlock()
	if err != nil {
		return 0, err
	}
	logPath := filepath.Join(a.cfg.BaseDir, logFile)
	logStart := fileSize(logPath)
	env, err := a.etcdEnv()
	if err != nil {
		return 0, err
	}
	p, err := startProcess(a.cfg.EtcdPath, args, a.cfg.BaseDir, logPath, env)
	if err != nil {
		return 0, err
	}
	a.mu.Lock()
	a.noteExitLocked()
	a.proc, a.args, a.state = p, args, wire.StateStarted
	a.faultStopped = false
	a.save()
	err = a.ensureProxy()
	if err == nil {
		err = a.ensureOutboundLocked(args) // again if ensureProxy replaced the proxy
	}
	if err != nil {
		a.closeOutboundLocked() // no proxy: no latency to carry
	}
	a.mu.Unlock()
	if err != nil {
		a.stop(p, a.ladder())
		return 0, err
	}
	select {
	case <-p.done:
		a.mu.Lock()
		// No member behind the proxy: Status must not claim one.
		a.closeProxyLocked()
		a.save()
		a.mu.Unlock()
		return 0, fmt.Errorf("etcd pid %d exited at once; its log ends:\n%s", p.pid, logtail.File(logPath, logStart, 20))
	case <-time.After(startCheck):
	}
	plog.Infof("started etcd pid %d: %s", p.pid, strings.Join(args, " "))
	return p.pid, nil
}

// ensureProxy starts (or keeps) the peer proxy the args ask for; a.mu held.
func (a *Agent) ensureProxy() error {
	listen, target, ok, err := a.args.peerProxyAddrs()
	if err != nil {
		return err
	}
	route := listen + " → " + target
	if a.proxy != nil {
		if ok && a.proxyRoute == route {
			return nil // faults it holds stay: a restart does not heal them
		}
		a.closeProxyLocked()
	}
	if !ok {
		return nil
	}
	px, err := netfault.NewProxy(listen, target)
	if err != nil {
		return fmt.Errorf("peer proxy %s: %w", route, err)
	}
	a.proxy, a.proxyRoute = px, route
	plog.Infof("proxying peer traffic %s → %s", px.Addr(), target)
	return nil
}

// Stop stops etcd gracefully: SIGTERM, SIGINT, SIGKILL, each after the
// configured wait.
func (a *Agent) Stop() error { return a.stopRunning(a.ladder()) }

// stopRunning stops the running etcd with the given ladder, or says why
// there is none to stop.
func (a *Agent) stopRunning(steps []stopStep) error {
	if err := a.lockOp(); err != nil {
		return err
	}
	defer a.op.Unlock()
	a.mu.Lock()
	p, err := a.runningLocked()
	a.mu.Unlock()
	if err != nil {
		return err
	}
	if err := a.stop(p, steps); err != nil {
		return err
	}
	a.mu.Lock()
	a.faultStopped = true
	a.extendLeaseLocked()
	a.save()
	a.mu.Unlock()
	return nil
}

// stop stops p with the given ladder (SIGKILL is always the last rung) and
// records how it ended.
func (a *Agent) stop(p *process, steps []stopStep) error {
	sig, took, err := p.stop(steps)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		return err
	}
	a.lastStopSignal, a.lastStopDuration = sig, took
	a.noteExitLocked()
	if a.state != wire.StateTerminated {
		a.state = wire.StateStopped
	}
	a.save()
	plog.Infof("stopped etcd pid %d by %s in %v", p.pid, sig, took.Round(time.Millisecond))
	return nil
}

// Restart starts etcd again with the arguments of the last start and the
// data it left.
func (a *Agent) Restart() (int, error) {
	if err := a.lockOp(); err != nil {
		return 0, err
	}
	defer a.op.Unlock()
	a.mu.Lock()
	args, state := a.args, a.currentStateLocked()
	a.mu.Unlock()
	switch {
	case state == wire.StateUninitialized || args == nil:
		return 0, errors.New("etcd has not been started: nothing to restart")
	case state == wire.StateTerminated:
		return 0, errors.New("etcd's data was removed (terminated or archived): start it afresh instead")
	}
	return a.start(args)
}

// Kill sends SIGKILL at once: a crash.
func (a *Agent) Kill() error { return a.stopRunning(nil) }

// Pause stops the process with SIGSTOP.
func (a *Agent) Pause() error {
	return a.pauseOrResume(syscall.SIGSTOP, wire.StateStarted, wire.StatePaused)
}

// Resume continues a paused process with SIGCONT.
func (a *Agent) Resume() error {
	return a.pauseOrResume(syscall.SIGCONT, wire.StatePaused, wire.StateStarted)
}

func (a *Agent) pauseOrResume(sig syscall.Signal, from, to wire.State) error {
	if err := a.lockOp(); err != nil {
		return err
	}
	defer a.op.Unlock()
	a.mu.Lock()
	p, err := a.runningLocked()
	if err == nil && a.state != from {
		err = fmt.Errorf("etcd is %s, not %s", a.state, from)
	}
	if err == nil {
		err = p.signal(sig)
	}
	if err != nil {
		a.mu.Unlock()
		return err
	}
	a.state = to
	if to == wire.StatePaused {
		a.extendLeaseLocked()
	}
	a.save()
	a.mu.Unlock()
	plog.Infof("sent %s to etcd pid %d", signalName(sig), p.pid)
	if sig == syscall.SIGSTOP {
		// Return once the fault is in place, not when it was asked for.
		return p.waitStopped(pauseWait)
	}
	return nil
}

var validLabel = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$`)

// Archive stops etcd (SIGQUIT first, so that the Go runtime writes every
// goroutine's stack into the log), moves its data and log into a new
// directory under failure_archive named by the time and label, and starts
// a fresh log. It returns the directory.
func (a *Agent) Archive(label string) (string, error) {
	if label != "" && !validLabel.MatchString(label) {
		return "", fmt.Errorf("archive label %q: want 1 to 100 characters of A-Z a-z 0-9 _ . - not starting with a dot", label)
	}
	if err := a.lockOp(); err != nil {
		return "", err
	}
	defer a.op.Unlock()
	a.mu.Lock()
	p, args := a.proc, a.args
	a.mu.Unlock()
	if args == nil {
		return "", errors.New("etcd has not been started: nothing to archive")
	}
	if p != nil && !p.exited() {
		steps := append([]stopStep{{syscall.SIGQUIT, sigquitWait}}, a.ladder()...)
		if err := a.stop(p, steps); err != nil {
			return "", err
		}
	}
	dir, err := a.archiveDir(label)
	if err != nil {
		return "", err
	}
	moves := []struct{ from, to string }{
		{args.dataDir(), "etcd.data"},
		{args.walDir(), "etcd.wal"},
		{filepath.Join(a.cfg.BaseDir, logFile), logFile},
	}
	for _, m := range moves {
		if m.from == "" {
			continue
		}
		if err := os.Rename(m.from, filepath.Join(dir, m.to)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return dir, fmt.Errorf("archive %s: %w", m.from, err)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := writeJSON(filepath.Join(dir, "agent-status.json"), a.statusLocked()); err != nil {
		return dir, fmt.Errorf("archive status: %w", err)
	}
	if err := os.WriteFile(filepath.Join(a.cfg.BaseDir, logFile), nil, 0o644); err != nil {
		return dir, fmt.Errorf("start a fresh log: %w", err)
	}
	a.state, a.lastArchive, a.faultStopped = wire.StateTerminated, dir, false
	a.closeProxyLocked()
	a.save()
	plog.Infof("archived etcd's data and log in %s", dir)
	return dir, nil
}

// archiveDir creates a new, unique directory for one archive.
func (a *Agent) archiveDir(label string) (string, error) {
	name := time.Now().UTC().Format(time.RFC3339)
	if label != "" {
		name += "_" + label
	}
	base := filepath.Join(a.cfg.BaseDir, archiveDir)
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", base, err)
	}
	for i := 1; i < 1000; i++ {
		dir := filepath.Join(base, name)
		if i > 1 {
			dir = fmt.Sprintf("%s.%d", dir, i)
		}
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			return dir, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("create archive dir: %w", err)
		}
	}
	return "", fmt.Errorf("create archive dir: 1000 archives named %s already", name)
}

// Terminate stops etcd and removes its data. It is not an error if etcd
// is not running, so that a tester can clear what an earlier run left.
func (a *Agent) Terminate() error {
	if err := a.lockOp(); err != nil {
		return err
	}
	defer a.op.Unlock()
	a.mu.Lock()
	p, args := a.proc, a.args
	a.mu.Unlock()
	if p != nil && !p.exited() {
		if err := a.stop(p, a.ladder()); err != nil {
			return err
		}
	}
	if args == nil {
		args = etcdArgs{"--data-dir=" + filepath.Join(a.cfg.BaseDir, defaultDataDir)}
	}
	for _, d := range []string{args.dataDir(), args.walDir()} {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("remove %s: %w", d, err)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.state, a.faultStopped = wire.StateTerminated, false
	a.closeProxyLocked()
	a.save()
	plog.Infof("terminated etcd and removed %s", args.dataDir())
	return nil
}

// closeProxyLocked closes the peer proxy and forgets the faults it held.
func (a *Agent) closeProxyLocked() {
	if a.proxy == nil {
		return
	}
	if err := a.proxy.Close(); err != nil {
		plog.Warningf("close peer proxy: %v", err)
	}
	a.dropped = a.droppedWithout(a.proxyPort())
	a.latency, a.jitter, a.proxy = 0, 0, nil
	a.closeOutboundLocked()
}

func (a *Agent) proxyPort() int {
	if a.proxy == nil {
		return 0
	}
	return a.proxy.Addr().(*net.TCPAddr).Port
}

func (a *Agent) droppedWithout(port int) []int {
	if a.isolator != nil {
		return a.dropped // iptables rules do not depend on the proxy
	}
	return slices.DeleteFunc(a.dropped, func(p int) bool { return p == port })
}

// DropPort drops all TCP traffic to and from port.
func (a *Agent) DropPort(port int) error {
	if err := checkPort(port); err != nil {
		return err
	}
	if err := a.lockOp(); err != nil {
		return err
	}
	defer a.op.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	iso, err := a.isolatorLocked()
	if err != nil {
		return err
	}
	if err := iso.DropPort(port); err != nil {
		return err
	}
	if !slices.Contains(a.dropped, port) {
		a.dropped = append(a.dropped, port)
		slices.Sort(a.dropped)
	}
	a.extendLeaseLocked()
	plog.Infof("dropping TCP traffic to and from port %d (%s)", port, iso.Name())
	return nil
}

// RecoverPort removes what DropPort added for port.
func (a *Agent) RecoverPort(port int) error {
	if err := checkPort(port); err != nil {
		return err
	}
	if err := a.lockOp(); err != nil {
		return err
	}
	defer a.op.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !slices.Contains(a.dropped, port) {
		return fmt.Errorf("port %d is not dropped (dropped: %v)", port, a.dropped)
	}
	iso, err := a.isolatorLocked()
	if err != nil {
		return err
	}
	if err := iso.RecoverPort(port); err != nil {
		return err
	}
	a.dropped = slices.DeleteFunc(a.dropped, func(p int) bool { return p == port })
	plog.Infof("recovered port %d (%s)", port, iso.Name())
	return nil
}

func checkPort(port int) error {
	if port < wire.MinPort || port > wire.MaxPort {
		return fmt.Errorf("port %d: want %d..%d", port, wire.MinPort, wire.MaxPort)
	}
	return nil
}

func (a *Agent) isolatorLocked() (netfault.Isolator, error) {
	if a.isolator != nil {
		return a.isolator, nil
	}
	if a.proxy == nil {
		return nil, errors.New("no way to isolate: iptables is not in use and etcd was not started behind the peer proxy (give --listen-peer-urls a port other than --initial-advertise-peer-urls)")
	}
	return a.proxy, nil
}

// SetLatency adds latency ± jitter to the member's peer traffic, through
// the peer proxy (this kernel has no netem).
func (a *Agent) SetLatency(latency, jitter time.Duration) error {
	if latency < 0 || latency > wire.MaxLatency {
		return fmt.Errorf("latency %v: want 0..%v", latency, wire.MaxLatency)
	}
	if jitter < 0 || jitter > latency {
		return fmt.Errorf("latency jitter %v: want 0..%v (at most the latency)", jitter, latency)
	}
	if err := a.lockOp(); err != nil {
		return err
	}
	defer a.op.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proxy == nil {
		return errors.New("latency needs the peer proxy: start etcd with --listen-peer-urls on a port other than --initial-advertise-peer-urls")
	}
	if err := a.proxy.SetLatency(latency, jitter); err != nil {
		return err
	}
	if err := a.setOutboundLatencyLocked(latency, jitter); err != nil {
		a.proxy.RemoveLatency()
		return err
	}
	a.latency, a.jitter = latency, jitter
	if latency > 0 {
		a.extendLeaseLocked()
	}
	plog.Infof("peer traffic delayed by %v ± %v (%s)", latency, jitter, a.delayDirectionsLocked())
	return nil
}

// RemoveLatency removes the added latency.
func (a *Agent) RemoveLatency() error {
	if err := a.lockOp(); err != nil {
		return err
	}
	defer a.op.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proxy == nil {
		return errors.New("no latency to remove: etcd does not run behind the peer proxy")
	}
	if err := a.proxy.RemoveLatency(); err != nil {
		return err
	}
	if err := a.setOutboundLatencyLocked(0, 0); err != nil {
		return err
	}
	a.latency, a.jitter = 0, 0
	plog.Infof("peer traffic latency removed")
	return nil
}

// healNetwork removes every network fault; a.op held.
func (a *Agent) healNetwork() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	if a.isolator != nil {
		errs = append(errs, a.isolator.Reset())
	}
	if a.proxy != nil {
		errs = append(errs, a.proxy.Reset())
	}
	errs = append(errs, a.setOutboundLatencyLocked(0, 0))
	a.dropped, a.latency, a.jitter = nil, 0, 0
	return errors.Join(errs...)
}

// Status reports what the agent knows of etcd and of its faults.
func (a *Agent) Status() wire.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.statusLocked()
}

func (a *Agent) statusLocked() wire.Status {
	st := wire.Status{
		State:            a.currentStateLocked(),
		LastStopSignal:   a.lastStopSignal,
		LastStopDuration: a.lastStopDuration,
		Args:             slices.Clone([]string(a.args)),
		NetworkBackend:   a.backend,
		PeerProxy:        a.proxy != nil,
		DroppedPorts:     slices.Clone(a.dropped),
		Latency:          a.latency,
		LatencyJitter:    a.jitter,
		DelayDirections:  a.delayDirectionsLocked(),
		DelayInboundWhy:  a.delayInboundWhyLocked(),
		LastArchive:      a.lastArchive,
		Failpoints:       a.fp.ok,
		FailpointsReason: a.fp.reason,
		FaultLeaseUntil:  a.leaseUntil,
		FaultsExpiredAt:  a.faultsExpiredAt,
		FaultsExpired:    slices.Clone(a.faultsExpired),
		EtcdVersion:      a.etcdVersion,
		EtcdVersionError: a.etcdVersionErr,
	}
	a.exitFieldsLocked(&st)
	if p := a.proc; p != nil && !p.exited() {
		st.Pid, st.Adopted = p.pid, p.adopted
	}
	return st
}

// versionTimeout bounds `etcd --version`, which prints and exits at once;
// a binary that does anything else is not an etcd we understand.
const versionTimeout = 10 * time.Second

// etcdVersion runs `path --version` and parses the release it prints.
func etcdVersion(path string) (wire.EtcdVersion, error) {
	ctx, cancel := context.WithTimeout(context.Background(), versionTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	if err != nil {
		first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return wire.EtcdVersion{}, fmt.Errorf("%s --version: %w (output: %q)", path, err, first)
	}
	v, err := wire.ParseEtcdVersionOutput(out)
	if err != nil {
		return wire.EtcdVersion{}, fmt.Errorf("%s --version: %w", path, err)
	}
	return v, nil
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}
