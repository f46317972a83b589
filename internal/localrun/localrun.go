// Package localrun runs the whole suite on one machine: three hosts, one
// etcd-agent on each, and etcd-tester driving them. It is what `make run`
// does.
//
// As root with iptables and `ip netns`, each host is a network namespace
// of its own (package localnet): members use the ordinary ports 2379 and
// 2380 and isolation is real packet filtering inside the member's host.
// Otherwise the agents share loopback on distinct ports and network faults
// go through the agents' peer proxies, and the cases that need real
// isolation are skipped by the tester with the reason.
//
// Teardown always happens, on success, failure or interrupt: the agents
// are stopped (they heal their faults and stop etcd), then every process,
// namespace, link and rule the run created is removed. A run also clears
// what a killed earlier run left behind before it starts.
//
// Runs can go side by side: each holds a lock on its name and report dir
// for as long as it lives (lock.go), so a second run of a live run's name,
// or with a report dir inside or around a live run's, is refused before it
// touches anything, and only the leftovers of a dead run are cleared. The
// tester's metrics port is chosen free for the same reason.
package localrun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/pkg/capnslog"

	"github.com/etcd-functional/functional/internal/localnet"
	"github.com/etcd-functional/functional/internal/logtail"
)

var plog = capnslog.NewPackageLogger("github.com/etcd-functional/functional", "localrun")

// Modes of a run.
const (
	ModeAuto     = "auto"
	ModeNetns    = "netns"    // a network namespace per host; needs root
	ModeLoopback = "loopback" // shared loopback, distinct ports; no privileges
)

// Config says how to run the suite.
type Config struct {
	// BinDir holds etcd, etcd-agent and etcd-tester.
	BinDir string
	// EtcdPath is the etcd binary the agents run; empty means BinDir's.
	EtcdPath string
	// ReportDir receives the tester's report, the agents' logs and base
	// dirs (with the failure archives). It is emptied first.
	ReportDir string
	// Mode is ModeAuto (netns where possible), ModeNetns or ModeLoopback.
	Mode string
	// NetName names the namespaces, bridge and rules (localnet.Config.Name).
	NetName string
	// Hosts is the number of hosts (agents, members).
	Hosts int
	// TesterArgs are passed to etcd-tester after the ones the run sets.
	TesterArgs []string
	// Stdout receives the tester's output.
	Stdout io.Writer
}

// setup is what a run brought up, so that teardown removes exactly that.
type setup struct {
	net    *localnet.Net
	agents []*exec.Cmd
}

// Run brings up the hosts and agents, runs the tester to completion and
// tears everything down. It returns the tester's exit status; err is set
// when the run could not get as far as the tester's result.
//
// ctx ending (the first interrupt) is passed to the tester as SIGINT, so
// that it heals its faults and writes its report; interrupt, if not nil,
// delivers later signals, which are passed on so that the tester exits at
// once.
func Run(ctx context.Context, cfg Config, interrupt <-chan os.Signal) (status int, err error) {
	if err := cfg.validate(); err != nil {
		return 2, err
	}
	becomeSubreaper()
	defer reapOrphans()

	lock, err := lockRun(cfg)
	if err != nil {
		return 2, err
	}
	defer lock.release()
	mode, why := cfg.chooseMode()
	plog.Infof("mode %s: %s", mode, why)
	// The lock is ours: no live run has this name, so what is there is a
	// dead run's.
	cleanLeftovers(cfg)
	if mode == ModeLoopback {
		if err := checkPortsFree(cfg.Hosts); err != nil {
			return 2, err
		}
	}
	if err := os.RemoveAll(cfg.ReportDir); err != nil {
		return 2, fmt.Errorf("empty report dir: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.ReportDir, "agents"), 0o755); err != nil {
		return 2, fmt.Errorf("report dir: %w", err)
	}

	s := &setup{}
	defer func() {
		if terr := s.teardown(cfg); terr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", terr))
			if status == 0 {
				status = 1
			}
		}
	}()
	endpoints, testerArgs, err := s.bringUp(ctx, cfg, mode)
	if err != nil {
		if ctx.Err() != nil {
			return 1, errors.New("interrupted while bringing up the hosts and agents")
		}
		return 2, err
	}
	// The metrics port is chosen free (the tester logs it), so that runs
	// side by side do not fight over one; -metrics-addr among the user's
	// arguments, which come last, wins.
	args := append([]string{
		"-agent-endpoints", strings.Join(endpoints, ","),
		"-report-dir", cfg.ReportDir,
		"-metrics-addr", "127.0.0.1:0",
	}, testerArgs...)
	args = append(args, cfg.TesterArgs...)
	return runTester(ctx, cfg, args, interrupt)
}

func (c *Config) validate() error {
	if c.Hosts < 1 || c.Hosts > 9 {
		return fmt.Errorf("hosts %d: want 1..9", c.Hosts)
	}
	switch c.Mode {
	case ModeAuto, ModeNetns, ModeLoopback:
	default:
		return fmt.Errorf("mode %q: want %s, %s or %s", c.Mode, ModeAuto, ModeNetns, ModeLoopback)
	}
	// The name is used in every mode (a run clears a leftover network of
	// that name), so a bad one is refused before anything is touched.
	if err := (&localnet.Config{Name: c.NetName, Hosts: c.Hosts}).Validate(); err != nil {
		return fmt.Errorf("net name %q: want 1 to 10 characters of a-z and 0-9 (it names the namespaces, bridge and rules)", c.NetName)
	}
	if c.EtcdPath == "" {
		c.EtcdPath = filepath.Join(c.BinDir, "etcd")
	}
	for _, p := range []string{c.EtcdPath, filepath.Join(c.BinDir, "etcd-agent"), filepath.Join(c.BinDir, "etcd-tester")} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s missing (run `make build`): %w", p, err)
		}
	}
	if c.ReportDir == "" || filepath.Clean(c.ReportDir) == "/" {
		return fmt.Errorf("report dir %q: want a directory of its own (it is emptied)", c.ReportDir)
	}
	// Absolute, so that every process of the run names it the same way on
	// its command line (the tester too), which is how a later run finds
	// what this one left.
	abs, err := filepath.Abs(c.ReportDir)
	if err != nil {
		return fmt.Errorf("report dir: %w", err)
	}
	c.ReportDir = abs
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	return nil
}

// chooseMode picks the mode and says why, in words for the user.
func (c *Config) chooseMode() (string, string) {
	avail := localnet.Available()
	switch {
	case c.Mode == ModeLoopback:
		return ModeLoopback, "asked for; agents share loopback and fault the network through their peer proxies"
	case avail == nil:
		return ModeNetns, "root with iptables and ip netns: each member on a host (network namespace) of its own, isolation by iptables"
	case c.Mode == ModeNetns:
		return ModeNetns, "asked for, but " + avail.Error()
	default:
		return ModeLoopback, fmt.Sprintf("namespaces unavailable (%v); agents share loopback, network faults go through their peer proxies and real isolation cases are skipped", avail)
	}
}

// Loopback ports: host i uses (i+1)*10000 + the usual port.
func loopbackPort(i, base int) int { return (i+1)*10000 + base }

func (s *setup) bringUp(ctx context.Context, cfg Config, mode string) (endpoints, testerArgs []string, err error) {
	bin := func(name string) string { p, _ := filepath.Abs(filepath.Join(cfg.BinDir, name)); return p }
	var clientPorts, peerPorts []string
	if mode == ModeNetns {
		n, err := localnet.Create(localnet.Config{Name: cfg.NetName, Hosts: cfg.Hosts})
		if err != nil {
			return nil, nil, err
		}
		s.net = n
		plog.Infof("hosts: %d namespaces %s-0.. on bridge %s, subnet %s", cfg.Hosts, n.Name, n.Bridge, n.Subnet)
	}
	for i := 0; i < cfg.Hosts; i++ {
		base, _ := filepath.Abs(filepath.Join(cfg.ReportDir, "agents", fmt.Sprintf("agent-%d", i)))
		etcd, _ := filepath.Abs(cfg.EtcdPath)
		args := []string{"-etcd-path", etcd, "-base-dir", base}
		var cmd *exec.Cmd
		var ep string
		if mode == ModeNetns {
			ep = net.JoinHostPort(s.net.Hosts[i].Addr.String(), "9027")
			cmd = s.net.Command(i, bin("etcd-agent"), append(args, "-port", ":9027", "-network-faults", "iptables")...)
		} else {
			port := loopbackPort(i, 9027)
			ep = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			cmd = exec.Command(bin("etcd-agent"), append(args, "-port", ep, "-network-faults", "proxy")...)
			clientPorts = append(clientPorts, strconv.Itoa(loopbackPort(i, 2379)))
			peerPorts = append(peerPorts, strconv.Itoa(loopbackPort(i, 2380)))
		}
		logf, err := os.Create(filepath.Join(cfg.ReportDir, "agents", fmt.Sprintf("agent-%d.log", i)))
		if err != nil {
			return nil, nil, err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		// Its own process group: a Ctrl-C reaches the tester, which heals
		// through the agents; the agents are stopped last, by teardown.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		err = cmd.Start()
		logf.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("start agent %d: %w", i, err)
		}
		s.agents = append(s.agents, cmd)
		endpoints = append(endpoints, ep)
	}
	if mode == ModeLoopback {
		testerArgs = []string{"-client-ports", strings.Join(clientPorts, ","), "-peer-ports", strings.Join(peerPorts, ",")}
	}
	for i, ep := range endpoints {
		if err := waitListening(ctx, ep, 15*time.Second); err != nil {
			return nil, nil, fmt.Errorf("agent %d at %s did not come up: %w; its log ends:\n%s", i, ep, err,
				logtail.File(filepath.Join(cfg.ReportDir, "agents", fmt.Sprintf("agent-%d.log", i)), 0, 10))
		}
	}
	plog.Infof("agents up: %s", strings.Join(endpoints, ", "))
	return endpoints, testerArgs, nil
}

// checkPortsFree says which loopback ports a loopback run needs are taken
// (the agents', and each member's client, peer and peer-listen ports), so
// that a busy port is reported before anything starts rather than as an
// agent or member that fails later.
func checkPortsFree(hosts int) error {
	var busy []string
	for i := 0; i < hosts; i++ {
		for _, base := range []int{9027, 2379, 2380, 2381} {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(loopbackPort(i, base)))
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				busy = append(busy, addr)
				continue
			}
			ln.Close()
		}
	}
	if len(busy) > 0 {
		return fmt.Errorf("loopback mode needs these ports free, but they are in use: %s", strings.Join(busy, ", "))
	}
	return nil
}

func waitListening(ctx context.Context, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func runTester(ctx context.Context, cfg Config, args []string, interrupt <-chan os.Signal) (int, error) {
	bin, _ := filepath.Abs(filepath.Join(cfg.BinDir, "etcd-tester"))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = cfg.Stdout, cfg.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	plog.Infof("running %s %s", bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return 2, fmt.Errorf("start tester: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	ctxDone := ctx.Done()
	for {
		select {
		case err := <-done:
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return exit.ExitCode(), nil
			}
			if err != nil {
				return 2, fmt.Errorf("tester: %w", err)
			}
			return 0, nil
		case <-ctxDone:
			ctxDone = nil
			plog.Warningf("interrupted: asking the tester to heal its faults and write its report (interrupt again to stop it at once)")
			cmd.Process.Signal(syscall.SIGINT)
		case sig := <-interrupt:
			cmd.Process.Signal(sig)
		}
	}
}

// teardown stops the agents (SIGTERM: each heals its faults and stops its
// etcd), kills what does not stop in time, and removes the network.
//
// The agents are stopped one after the other: a cluster still up (after an
// interrupt) whose members all get SIGTERM at once has its leader try to
// hand leadership to a member that is going away, and wait etcd's 7s for
// it; one at a time, the leader hands over at once or has no peer left.
func (s *setup) teardown(cfg Config) error {
	var errs []error
	for i, cmd := range s.agents {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			// Killed by the SIGTERM itself: it was still starting, before
			// its handler, so it had nothing to heal or stop.
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
					err = nil
				}
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("agent %d: %w (see its log in %s)", i, err, filepath.Join(cfg.ReportDir, "agents")))
			}
		case <-time.After(40 * time.Second):
			cmd.Process.Kill()
			<-done
			errs = append(errs, fmt.Errorf("agent %d did not stop within 40s; killed", i))
		}
	}
	if s.net != nil {
		if err := s.net.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	killLeftovers(cfg) // etcd processes of agents that died
	plog.Infof("teardown done")
	return errors.Join(errs...)
}

// cleanLeftovers removes what a killed earlier run left: its namespaces
// and rules, and its agents and etcd processes.
func cleanLeftovers(cfg Config) {
	if localnet.Available() == nil {
		if err := localnet.Remove(cfg.NetName); err != nil {
			plog.Warningf("removing a leftover network: %v", err)
		}
	}
	killLeftovers(cfg)
}

// killLeftovers kills every process that runs a binary of BinDir with the
// report dir on its command line: the agents of a run (their -base-dir),
// their etcd processes (--data-dir) and the tester (-report-dir), whether
// or not their parent survived. It returns once they are gone, so that
// their ports are free.
func killLeftovers(cfg Config) {
	bin, _ := filepath.Abs(cfg.BinDir)
	report, _ := filepath.Abs(cfg.ReportDir)
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var killed []int
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := os.Readlink(filepath.Join(p, "exe"))
		if err != nil || filepath.Dir(exe) != bin {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || !slices.ContainsFunc(strings.Split(string(cmdline), "\x00"), func(arg string) bool {
			return arg == report || strings.Contains(arg, report+string(filepath.Separator))
		}) {
			continue
		}
		plog.Warningf("killing leftover %s (pid %d) of an earlier run", filepath.Base(exe), pid)
		syscall.Kill(pid, syscall.SIGKILL)
		killed = append(killed, pid)
	}
	waitGone(killed, 10*time.Second)
}

// waitGone waits, up to timeout, until every pid has exited, and reaps
// those that are children of this process. A zombie has exited: its
// sockets are closed.
func waitGone(pids []int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for _, pid := range pids {
		for {
			var ws syscall.WaitStatus
			syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			if exited(pid) {
				break
			}
			if time.Now().After(deadline) {
				plog.Warningf("pid %d is still there %v after SIGKILL", pid, timeout)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// exited reports whether pid is gone, or a zombie whose threads have all
// exited: the leader of a thread group turns zombie first, and the files
// (sockets) are closed by the last thread to go.
func exited(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) || (stat[i+2] != 'Z' && stat[i+2] != 'X') {
		return false
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	return err != nil || len(tasks) <= 1
}

// becomeSubreaper makes this process adopt orphans of its children: an
// etcd whose agent died is reaped here rather than left a zombie.
func becomeSubreaper() {
	const prSetChildSubreaper = 36
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
}

// reapOrphans collects exited orphans, bounded.
func reapOrphans() {
	for range 100 {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
