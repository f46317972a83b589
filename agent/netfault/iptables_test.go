package netfault

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/etcd-functional/functional/agent/wire"
)

// netns is a network namespace of a test's own: its loopback, its ports and
// its iptables rules are separate from the host's, so the tests can drop
// ports for real without touching the machine they run on.
type netns struct {
	name string
	f    *os.File // /run/netns/<name>, for setns
}

// newNetns creates a namespace with its loopback up and removes it when the
// test ends. It skips the test, saying why, where that cannot work.
func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and edits its iptables rules")
	}
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s in PATH (Debian packages iproute2 and iptables): %v", bin, err)
		}
	}
	name := fmt.Sprintf("nftest%08x", rand.Uint32())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v: %s", name, err, out)
	}
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // runs before the del above: LIFO
	ns := &netns{name: name, f: f}
	if _, err := ns.iptables("-S"); err != nil {
		t.Skipf("iptables does not work in a namespace here: %v", err)
	}
	return ns
}

// do runs f on an OS thread that has entered the namespace. Sockets created
// by f belong to the namespace for good, whichever thread uses them later.
func (ns *netns) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked on purpose: the thread is in another namespace,
		// so it must end with this goroutine rather than go back to the
		// scheduler to run other goroutines.
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

func (ns *netns) listen(t *testing.T) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := ns.do(func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func (ns *netns) dial(addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

func (ns *netns) mustDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := ns.dial(addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s in %s: %v", addr, ns.name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (ns *netns) command() []string { return []string{"ip", "netns", "exec", ns.name, "iptables"} }

// iptables runs iptables in the namespace, as the tests' own independent
// view of the rules (and as "another process" creating leftovers).
func (ns *netns) iptables(args ...string) (string, error) {
	out, err := exec.Command("ip", slices.Concat([]string{"netns", "exec", ns.name, "iptables", "-w"}, args)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (ns *netns) rules(t *testing.T) []string {
	t.Helper()
	out, err := ns.iptables("-S")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range strings.Lines(out) {
		lines = append(lines, strings.TrimSpace(l))
	}
	return lines
}

func newTestIPTables(t *testing.T, ns *netns, chain string) *IPTables {
	t.Helper()
	ipt, err := NewIPTables(chain, ns.command()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := ipt.Available(); err != nil {
		t.Fatalf("Available in a fresh namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := ipt.Reset(); err != nil {
			t.Errorf("cleanup Reset: %v", err)
		}
	})
	return ipt
}

// pristine is what iptables -S shows in a fresh namespace.
var pristine = []string{"-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT"}

func droppedRules(chain string, ports ...int) []string {
	if len(ports) == 0 {
		return pristine
	}
	rules := append(slices.Clone(pristine), "-N "+chain, "-A INPUT -j "+chain, "-A OUTPUT -j "+chain)
	for _, p := range ports {
		rules = append(rules,
			fmt.Sprintf("-A %s -p tcp -m tcp --dport %d -j DROP", chain, p),
			fmt.Sprintf("-A %s -p tcp -m tcp --sport %d -j DROP", chain, p))
	}
	return rules
}

func expectRules(t *testing.T, ns *netns, want []string) {
	t.Helper()
	if got := ns.rules(t); !slices.Equal(got, want) {
		t.Fatalf("iptables -S in %s:\n  %s\nwant:\n  %s", ns.name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// TestIPTablesIsolatesRealTraffic drops a port in a namespace and watches
// real connections: a new one times out (DROP, not a refusal), an
// established one gets no echo, another port is unaffected, and after
// RecoverPort new connections work and the stalled one resumes.
func TestIPTablesIsolatesRealTraffic(t *testing.T) {
	ns := newNetns(t)
	const chain = testChainPrefix + "-ISOLATE"
	ipt := newTestIPTables(t, ns, chain)
	echo := newEchoServer(t, ns.listen(t))
	bystander := newEchoServer(t, ns.listen(t))
	port := echo.port()

	established := ns.mustDial(t, echo.addr())
	if _, err := roundTrip(established, []byte("before"), 2*time.Second); err != nil {
		t.Fatalf("before DropPort: %v", err)
	}
	expectRules(t, ns, pristine)

	if err := ipt.DropPort(port); err != nil {
		t.Fatal(err)
	}
	expectRules(t, ns, droppedRules(chain, port))
	if got := ipt.Dropped(); !slices.Equal(got, []int{port}) {
		t.Fatalf("Dropped() = %v, want [%d]", got, port)
	}

	c, err := ns.dial(echo.addr(), 700*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatal("dial to a dropped port succeeded")
	}
	// A dial timeout is os.ErrDeadlineExceeded or context.DeadlineExceeded
	// depending on where it struck; both are net.Errors with Timeout().
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a dropped port: %v; want a timeout, not a refusal", err)
	}
	expectSilence(t, established, []byte("during"), 700*time.Millisecond)
	if _, err := roundTrip(ns.mustDial(t, bystander.addr()), []byte("other port"), 2*time.Second); err != nil {
		t.Fatalf("a port that is not dropped: %v", err)
	}

	if err := ipt.RecoverPort(port); err != nil {
		t.Fatal(err)
	}
	expectRules(t, ns, pristine)
	if _, err := roundTrip(ns.mustDial(t, echo.addr()), []byte("after"), 2*time.Second); err != nil {
		t.Fatalf("new connection after RecoverPort: %v", err)
	}
	// The established connection was stalled, not broken, as in a real
	// partition: TCP's retransmission delivers what was written during the
	// drop once the port is back.
	established.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len("during"))
	if _, err := established.Read(got); err != nil || string(got) != "during" {
		t.Fatalf("established connection after RecoverPort: %q, %v; want the echo of what was written during the drop", got, err)
	}
}

// TestIPTablesIdempotentAndSorted checks that dropping twice adds nothing,
// that Dropped is sorted, that recovering one port keeps the others, and
// that recovering a port that is not dropped is an error naming it.
func TestIPTablesIdempotentAndSorted(t *testing.T) {
	ns := newNetns(t)
	const chain = testChainPrefix + "-IDEMPOTENT"
	ipt := newTestIPTables(t, ns, chain)

	for range 2 {
		if err := ipt.DropPort(2380); err != nil {
			t.Fatal(err)
		}
	}
	expectRules(t, ns, droppedRules(chain, 2380))
	if err := ipt.DropPort(1234); err != nil {
		t.Fatal(err)
	}
	expectRules(t, ns, droppedRules(chain, 2380, 1234))
	if got := ipt.Dropped(); !slices.Equal(got, []int{1234, 2380}) {
		t.Fatalf("Dropped() = %v, want [1234 2380]", got)
	}

	if err := ipt.RecoverPort(9999); err == nil || !strings.Contains(err.Error(), "9999") {
		t.Fatalf("RecoverPort(9999), never dropped: %v; want an error naming 9999", err)
	}
	if err := ipt.RecoverPort(2380); err != nil {
		t.Fatal(err)
	}
	expectRules(t, ns, droppedRules(chain, 1234))
	if err := ipt.RecoverPort(2380); err == nil || !strings.Contains(err.Error(), "2380") {
		t.Fatalf("second RecoverPort(2380): %v; want an error naming 2380", err)
	}
	if err := ipt.RecoverPort(1234); err != nil {
		t.Fatal(err)
	}
	expectRules(t, ns, pristine)
	if got := ipt.Dropped(); len(got) != 0 {
		t.Fatalf("Dropped() = %v after recovering everything", got)
	}
}

// TestIPTablesConcurrent drops and recovers ports from many goroutines at
// once; the result must be exactly one jump per hook and two rules per port.
func TestIPTablesConcurrent(t *testing.T) {
	ns := newNetns(t)
	const chain = testChainPrefix + "-CONCURRENT"
	ipt := newTestIPTables(t, ns, chain)
	ports := []int{2380, 2381, 2382, 2383, 2384, 2385}

	var wg sync.WaitGroup
	errs := make(chan error, 2*len(ports))
	for _, p := range ports {
		wg.Go(func() { errs <- ipt.DropPort(p) })
		wg.Go(func() { ipt.Dropped() })
	}
	wg.Wait()
	for range ports {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// The goroutines ran in any order, and so were the rules appended.
	got, want := ns.rules(t), droppedRules(chain, ports...)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("iptables -S after concurrent drops:\n  %s\nwant (sorted):\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	for _, p := range ports {
		wg.Go(func() { errs <- ipt.RecoverPort(p) })
	}
	wg.Wait()
	for range ports {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	expectRules(t, ns, pristine)
}

// TestIPTablesResetClearsLeftovers builds by hand what a crashed agent
// would leave (its chain with a rule, jumps to it, one of them with a match
// and one duplicated) next to a chain that is someone else's; a new
// IPTables must see the leftover port and Reset must remove all of it and
// nothing else, and be idempotent.
func TestIPTablesResetClearsLeftovers(t *testing.T) {
	ns := newNetns(t)
	const chain = testChainPrefix + "-AGENT-9027"
	for _, args := range [][]string{
		{"-N", chain},
		{"-A", chain, "-p", "tcp", "--dport", "2380", "-j", "DROP"},
		{"-I", "INPUT", "-j", chain},
		{"-I", "INPUT", "-j", chain},
		{"-A", "INPUT", "-s", "10.0.0.0/8", "-j", chain},
		{"-I", "OUTPUT", "-j", chain},
		{"-N", testChainPrefix + "-NOT-OURS"},
		{"-A", testChainPrefix + "-NOT-OURS", "-p", "tcp", "--dport", "2380", "-j", "DROP"},
		{"-A", "INPUT", "-j", testChainPrefix + "-NOT-OURS"},
	} {
		if _, err := ns.iptables(args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ns.iptables("-D", "INPUT", "-j", testChainPrefix+"-NOT-OURS")
		ns.iptables("-F", testChainPrefix+"-NOT-OURS")
		ns.iptables("-X", testChainPrefix+"-NOT-OURS")
	})

	ipt := newTestIPTables(t, ns, chain)
	if got := ipt.Dropped(); !slices.Equal(got, []int{2380}) {
		t.Fatalf("Dropped() with a leftover chain = %v, want [2380]: it must read the kernel", got)
	}
	notOurs := append(slices.Clone(pristine),
		"-N "+testChainPrefix+"-NOT-OURS",
		"-A INPUT -j "+testChainPrefix+"-NOT-OURS",
		"-A "+testChainPrefix+"-NOT-OURS -p tcp -m tcp --dport 2380 -j DROP")
	for range 2 {
		if err := ipt.Reset(); err != nil {
			t.Fatal(err)
		}
		expectRules(t, ns, notOurs)
	}
}

// TestIPTablesResetEmpty checks that Reset in a namespace where the chain
// never existed succeeds and changes nothing.
func TestIPTablesResetEmpty(t *testing.T) {
	ns := newNetns(t)
	ipt := newTestIPTables(t, ns, testChainPrefix+"-EMPTY")
	for range 2 {
		if err := ipt.Reset(); err != nil {
			t.Fatal(err)
		}
		expectRules(t, ns, pristine)
	}
	if ipt.Name() != wire.BackendIPTables || ipt.Chain() != testChainPrefix+"-EMPTY" {
		t.Errorf("Name() = %q, Chain() = %q", ipt.Name(), ipt.Chain())
	}
}

// TestIPTablesAvailable checks that a missing binary and a namespace that
// does not exist are reported, in words a user can act on.
func TestIPTablesAvailable(t *testing.T) {
	ipt, err := NewIPTables(testChainPrefix+"-AVAIL", "/nonexistent/iptables")
	if err != nil {
		t.Fatal(err)
	}
	if err := ipt.Available(); err == nil || !strings.Contains(err.Error(), "not found") || !strings.Contains(err.Error(), "install") {
		t.Errorf("Available with a missing binary: %v; want it to say iptables is not found and how to install it", err)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("the rest needs iptables in PATH")
	}
	if os.Geteuid() != 0 {
		ipt, err := NewIPTables(testChainPrefix + "-AVAIL")
		if err != nil {
			t.Fatal(err)
		}
		if err := ipt.Available(); err == nil || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
			t.Errorf("Available without privileges: %v; want it to say CAP_NET_ADMIN is needed", err)
		}
		t.Skip("the rest needs root")
	}
	ipt, err = NewIPTables(testChainPrefix+"-AVAIL", "ip", "netns", "exec", "nftest-does-not-exist", "iptables")
	if err != nil {
		t.Fatal(err)
	}
	if err := ipt.Available(); err == nil || !strings.Contains(err.Error(), "nftest-does-not-exist") {
		t.Errorf("Available in a namespace that does not exist: %v; want an error quoting the command", err)
	}
	if err := ipt.DropPort(2380); err == nil {
		t.Error("DropPort in a namespace that does not exist succeeded")
	} else {
		t.Logf("DropPort in a namespace that does not exist: %v", err)
	}
}

// TestIPTablesValidation needs no privileges: bad arguments are refused
// before iptables runs (the command here does not even exist).
func TestIPTablesValidation(t *testing.T) {
	for _, chain := range []string{"", strings.Repeat("A", 29), "INPUT", "OUTPUT", "DROP", "-X", "a b", "a;b", "ünicode"} {
		if _, err := NewIPTables(chain); err == nil {
			t.Errorf("NewIPTables(%q) accepted a bad chain name", chain)
		}
	}
	if _, err := NewIPTables("OK", "ip", ""); err == nil {
		t.Error("NewIPTables accepted an empty command argument")
	}
	ipt, err := NewIPTables(strings.Repeat("A", 28), "/nonexistent/iptables")
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range []int{0, -1, 65536, 1 << 20} {
		for name, f := range map[string]func(int) error{"DropPort": ipt.DropPort, "RecoverPort": ipt.RecoverPort} {
			err := f(port)
			if err == nil || !strings.Contains(err.Error(), strconv.Itoa(port)) || !strings.Contains(err.Error(), "[1, 65535]") {
				t.Errorf("%s(%d): %v; want an error naming the port and the range [1, 65535]", name, port, err)
			}
		}
	}
}
