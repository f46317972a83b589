package netfault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/pkg/capnslog"

	"github.com/etcd-functional/functional/agent/wire"
)

var plog = capnslog.NewPackageLogger("github.com/etcd-functional/functional", "netfault")

// iptablesTimeout bounds one iptables invocation. -w waits for the xtables
// lock without limit, so a wedged holder of the lock (another tool stuck
// mid-update) would otherwise hang the agent's RPC forever.
const iptablesTimeout = 30 * time.Second

// chainNameRE is what iptables accepts as a user chain name and what is
// safe to pass as one argument: at most 28 characters (the kernel's
// XT_EXTENSION_MAXNAMELEN less the terminating NUL), no spaces, no quoting.
var chainNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,28}$`)

// reservedChainNames are built-in chains and standard targets. Owning one of
// them would make Reset flush or delete something that is not ours (Reset
// of a chain named INPUT would wipe the host's whole input policy).
var reservedChainNames = map[string]bool{
	"INPUT": true, "OUTPUT": true, "FORWARD": true, "PREROUTING": true, "POSTROUTING": true,
	"ACCEPT": true, "DROP": true, "REJECT": true, "RETURN": true, "QUEUE": true, "LOG": true,
}

// builtinHooks are the chains that jump to ours: INPUT sees packets to local
// sockets, OUTPUT packets from them, and an etcd member's peer traffic is
// always local (it is the member's own port, or its connection to another
// member's port), so FORWARD never matters.
var builtinHooks = []string{"INPUT", "OUTPUT"}

// IPTables is the Isolator that uses the kernel packet filter. All its rules
// live in one chain of its own in the filter table, jumped to from INPUT and
// OUTPUT, so that it never edits a rule it did not create and Reset can
// remove everything with a flush, even after a crash of the process that
// added the rules.
//
// Each rule also goes into ip6tables when Available finds that it works
// (see the package comment). It keeps no other state in memory: every method reads the rules from the kernel
// first, because the kernel outlives the agent and is the only record that
// cannot be stale. The zero value is not usable; use NewIPTables. Methods
// are safe for concurrent use.
type IPTables struct {
	chain   string
	command []string
	v6      []string // ip6tables' invocation, once Available found it works; nil until then

	// mu serialises read-modify-write sequences of this process: iptables'
	// own -w lock covers one invocation only, and DropPort needs several.
	mu sync.Mutex
}

var _ Isolator = (*IPTables)(nil)

// NewIPTables returns an Isolator owning chain, e.g. "ETCD-AGENT-9027" (the
// agent's port in the name lets several agents share one host). command is
// the iptables invocation, ["iptables"] when empty; tests pass
// ["ip", "netns", "exec", ns, "iptables"] to work in a namespace of their
// own. It does not run anything; call Available to check that iptables works
// and to turn on IPv6 isolation where ip6tables works too.
func NewIPTables(chain string, command ...string) (*IPTables, error) {
	if !chainNameRE.MatchString(chain) {
		return nil, fmt.Errorf("netfault: invalid iptables chain name %q: want 1 to 28 characters of [A-Za-z0-9_-]", chain)
	}
	if strings.HasPrefix(chain, "-") || reservedChainNames[chain] {
		return nil, fmt.Errorf("netfault: invalid iptables chain name %q: reserved by iptables or starts with '-'", chain)
	}
	if len(command) == 0 {
		command = []string{"iptables"}
	}
	for _, a := range command {
		if a == "" {
			return nil, fmt.Errorf("netfault: iptables command %q has an empty argument", command)
		}
	}
	return &IPTables{chain: chain, command: slices.Clone(command)}, nil
}

// Name returns wire.BackendIPTables.
func (t *IPTables) Name() string { return wire.BackendIPTables }

// Chain returns the name of the chain this IPTables owns.
func (t *IPTables) Chain() string { return t.chain }

// IPv6 reports whether the rules also go into ip6tables: Available found
// that it works.
func (t *IPTables) IPv6() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.v6 != nil
}

// commands are the invocations every rule goes through: iptables, and
// ip6tables where it works; t.mu held.
func (t *IPTables) commands() [][]string {
	if t.v6 == nil {
		return [][]string{t.command}
	}
	return [][]string{t.command, t.v6}
}

// ip6Command is the command with its iptables binary replaced by the
// ip6tables of the same flavour (iptables-legacy → ip6tables-legacy), nil
// if the command names no iptables binary.
func ip6Command(command []string) []string {
	for i := len(command) - 1; i >= 0; i-- {
		if isIPTablesBinary(command[i]) {
			c := slices.Clone(command)
			dir, base := filepath.Split(c[i])
			c[i] = dir + "ip6" + strings.TrimPrefix(base, "ip")
			return c
		}
	}
	return nil
}

// Available reports, as an error a human can act on, why this backend cannot
// work here: the iptables binary is missing, or it cannot read the filter
// table (no CAP_NET_ADMIN, or the kernel lacks the filter). The agent calls
// it at start-up so that a misconfigured host fails at once rather than at
// the first injected fault, in the middle of a test round.
func (t *IPTables) Available() error {
	bins := []string{t.command[0]}
	if last := t.command[len(t.command)-1]; len(t.command) > 1 && isIPTablesBinary(last) {
		bins = append(bins, last)
	}
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			if isIPTablesBinary(b) {
				return fmt.Errorf("netfault: %s not found in PATH: install Debian's iptables package (apt-get install iptables): %w", b, err)
			}
			return fmt.Errorf("netfault: %s not found in PATH: %w", b, err)
		}
	}
	if _, err := t.run(t.command, "-S"); err != nil {
		if os.Geteuid() != 0 {
			return fmt.Errorf("netfault: iptables cannot read the filter table: it needs CAP_NET_ADMIN, run the agent as root or grant the capability: %w", err)
		}
		return fmt.Errorf("netfault: iptables cannot read the filter table: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.v6 = nil
	v6 := ip6Command(t.command)
	if v6 == nil {
		plog.Warningf("iptables: command %q names no iptables binary to derive ip6tables from: IPv6 traffic is not isolated", t.command)
		return nil
	}
	if _, err := t.run(v6, "-S"); err != nil {
		plog.Warningf("iptables: ip6tables does not work (%v): only IPv4 traffic is isolated", err)
		return nil
	}
	t.v6 = v6
	return nil
}

func isIPTablesBinary(path string) bool {
	return strings.HasPrefix(filepath.Base(path), "iptables")
}

// DropPort drops every TCP packet to or from port, in both directions, so
// that connections to the port time out (a DROP, not a REJECT: peers must
// see a silent network, as in a real partition, not a refusal) and already
// established connections stall. Dropping a port twice adds nothing.
func (t *IPTables) DropPort(port int) error {
	if err := checkPort(port); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, cmd := range t.commands() {
		if err := t.dropPort(cmd, port); err != nil {
			return err
		}
	}
	plog.Infof("iptables: dropped TCP port %d (chain %s)", port, t.chain)
	return nil
}

// dropPort adds the rules of DropPort with one command; t.mu held.
func (t *IPTables) dropPort(cmd []string, port int) error {
	st, err := t.state(cmd)
	if err != nil {
		return err
	}
	if !st.chains[t.chain] {
		if _, err := t.run(cmd, "-N", t.chain); err != nil {
			return fmt.Errorf("netfault: create chain %s: %w", t.chain, err)
		}
	}
	// Rules go in before the jumps so that the chain is never hooked up
	// half-filled; the jumps go first in INPUT and OUTPUT so that no ACCEPT
	// rule of the host's own can let the packets through before us.
	for _, r := range portRules(port) {
		if st.has(t.chain, r) {
			continue
		}
		if _, err := t.run(cmd, append([]string{"-A", t.chain}, r...)...); err != nil {
			return fmt.Errorf("netfault: drop port %d: %w", port, err)
		}
	}
	for _, hook := range builtinHooks {
		if st.has(hook, t.jumpRule()) {
			continue
		}
		if _, err := t.run(cmd, "-I", hook, "1", "-j", t.chain); err != nil {
			return fmt.Errorf("netfault: jump from %s to %s: %w", hook, t.chain, err)
		}
	}
	return nil
}

// RecoverPort deletes the rules DropPort added for port. Recovering a port
// that is not dropped is an error, because it means the caller's idea of
// the faults differs from the kernel's. When the last port is recovered the
// chain and the jumps go too, so that a healthy host shows no trace of the
// agent in iptables -S.
func (t *IPTables) RecoverPort(port int) error {
	if err := checkPort(port); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	cmds := t.commands()
	deleted, err := t.recoverPort(cmds[0], port)
	if err != nil {
		return err
	}
	if deleted == 0 {
		return fmt.Errorf("netfault: recover port %d: port %d is not dropped (chain %s has no rule for it)", port, port, t.chain)
	}
	// ip6tables follows iptables: a port dropped before IPv6 was
	// isolated has no rule there, which is no error.
	for _, cmd := range cmds[1:] {
		if _, err := t.recoverPort(cmd, port); err != nil {
			return err
		}
	}
	plog.Infof("iptables: recovered TCP port %d (chain %s)", port, t.chain)
	return nil
}

// recoverPort deletes the rules of DropPort with one command and returns
// how many it deleted; when the chain is left empty it goes too. t.mu
// held.
func (t *IPTables) recoverPort(cmd []string, port int) (int, error) {
	st, err := t.state(cmd)
	if err != nil {
		return 0, err
	}
	deleted := 0
	for _, r := range portRules(port) {
		if !st.has(t.chain, r) {
			continue
		}
		if _, err := t.run(cmd, append([]string{"-D", t.chain}, r...)...); err != nil {
			return deleted, fmt.Errorf("netfault: recover port %d: %w", port, err)
		}
		deleted++
	}
	if deleted > 0 && len(st.rules[t.chain]) == deleted {
		return deleted, t.resetOn(cmd)
	}
	return deleted, nil
}

// Dropped returns the ports that have a DROP rule in the chain, sorted. It
// reads the kernel, so it also reports ports dropped by an earlier agent
// process. If iptables fails it logs the error and returns nil: it feeds a
// status report, which must not fail because of it.
func (t *IPTables) Dropped() []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := t.state(t.command)
	if err != nil {
		plog.Warningf("iptables: cannot list dropped ports: %v", err)
		return nil
	}
	var ports []int
	for _, r := range st.rules[t.chain] {
		f := strings.Fields(r)
		// -p tcp -m tcp --dport N -j DROP (or --sport)
		if len(f) != 8 || f[0] != "-p" || f[1] != "tcp" || f[6] != "-j" || f[7] != "DROP" ||
			(f[4] != "--dport" && f[4] != "--sport") {
			continue
		}
		if p, err := strconv.Atoi(f[5]); err == nil && !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return ports
}

// Reset removes every rule that jumps to the chain and then the chain with
// its rules. It works from the kernel's rules, not from memory, so it also
// clears what a crashed earlier agent left behind; things that are already
// gone are not errors, so Reset is idempotent.
func (t *IPTables) Reset() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.reset()
}

func (t *IPTables) reset() error {
	var errs []error
	for _, cmd := range t.commands() {
		errs = append(errs, t.resetOn(cmd))
	}
	return errors.Join(errs...)
}

// resetOn is Reset with one command; t.mu held.
func (t *IPTables) resetOn(cmd []string) error {
	st, err := t.state(cmd)
	if err != nil {
		return err
	}
	var errs []error
	for _, chain := range st.order {
		for _, r := range st.rules[chain] {
			if !targets(r, t.chain) {
				continue
			}
			// Jumps a human or an older agent added by hand may carry
			// matches; delete by the exact spec iptables printed.
			if _, err := t.run(cmd, append([]string{"-D", chain}, strings.Fields(r)...)...); err != nil && !isNotExist(err) {
				errs = append(errs, fmt.Errorf("netfault: remove jump from %s to %s: %w", chain, t.chain, err))
			}
		}
	}
	if st.chains[t.chain] {
		for _, op := range []string{"-F", "-X"} {
			if _, err := t.run(cmd, op, t.chain); err != nil && !isNotExist(err) {
				errs = append(errs, fmt.Errorf("netfault: remove chain %s: %w", t.chain, err))
				break
			}
		}
		plog.Infof("%s: removed chain %s", filepath.Base(cmd[len(cmd)-1]), t.chain)
	}
	return errors.Join(errs...)
}

func (t *IPTables) jumpRule() []string { return []string{"-j", t.chain} }

// portRules are the rules that isolate port, in the form iptables -S prints
// them (with the implicit "-m tcp" spelled out), so that the rules read back
// from the kernel compare equal as strings.
func portRules(port int) [][]string {
	p := strconv.Itoa(port)
	return [][]string{
		{"-p", "tcp", "-m", "tcp", "--dport", p, "-j", "DROP"},
		{"-p", "tcp", "-m", "tcp", "--sport", p, "-j", "DROP"},
	}
}

// targets reports whether rule jumps or goes to chain.
func targets(rule, chain string) bool {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if (f[i] == "-j" || f[i] == "-g") && f[i+1] == chain {
			return true
		}
	}
	return false
}

func checkPort(port int) error {
	if port < wire.MinPort || port > wire.MaxPort {
		return fmt.Errorf("netfault: port %d out of range [%d, %d]", port, wire.MinPort, wire.MaxPort)
	}
	return nil
}

// filterState is the filter table as iptables -S prints it.
type filterState struct {
	chains map[string]bool     // user chains (-N)
	rules  map[string][]string // chain → rule specs after "-A chain", in order
	order  []string            // chains that have rules, in the order printed
}

func (s filterState) has(chain string, rule []string) bool {
	return slices.Contains(s.rules[chain], strings.Join(rule, " "))
}

func (t *IPTables) state(cmd []string) (filterState, error) {
	out, err := t.run(cmd, "-S")
	if err != nil {
		return filterState{}, fmt.Errorf("netfault: list iptables rules: %w", err)
	}
	return parseRules(out), nil
}

// commandError is a failed iptables invocation with what it said on stderr,
// which is the only place iptables explains itself.
type commandError struct {
	argv   []string
	err    error
	stderr string
}

func (e *commandError) Error() string {
	msg := fmt.Sprintf("%s: %v", strings.Join(e.argv, " "), e.err)
	if e.stderr != "" {
		msg += ": " + e.stderr
	}
	return msg
}

func (e *commandError) Unwrap() error { return e.err }

// isNotExist reports whether iptables failed because the rule or chain to
// remove is already gone; the wording differs between commands and between
// the legacy and nf_tables back ends.
func isNotExist(err error) bool {
	var ce *commandError
	if !errors.As(err, &ce) {
		return false
	}
	for _, s := range []string{
		"does not exist",
		"No chain/target/match by that name",
		"does a matching rule exist",
	} {
		if strings.Contains(ce.stderr, s) {
			return true
		}
	}
	return false
}

// run runs cmd (iptables or ip6tables) -w args and returns its stdout.
func (t *IPTables) run(cmd []string, args ...string) (string, error) {
	argv := slices.Concat(cmd, []string{"-w"}, args)
	ctx, cancel := context.WithTimeout(context.Background(), iptablesTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w after %v (is another process holding the xtables lock?)", ctx.Err(), iptablesTimeout)
		}
		return "", &commandError{argv: argv, err: err, stderr: strings.TrimSpace(stderr.String())}
	}
	return stdout.String(), nil
}
