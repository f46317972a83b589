package netfault

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/netnstest"
)

func newTestIPTables(t *testing.T, ns *netnstest.NS, chain string) *IPTables {
	t.Helper()
	ipt, err := NewIPTables(chain, ns.IPTablesCommand()...)
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

func expectRules(t *testing.T, ns *netnstest.NS, want []string) {
	t.Helper()
	if got := ns.Rules(t); !slices.Equal(got, want) {
		t.Fatalf("iptables -S in %s:\n  %s\nwant:\n  %s", ns.Name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// TestIPTablesIsolatesRealTraffic drops a port in a namespace and watches
// real connections: a new one times out (DROP, not a refusal), an
// established one gets no echo, another port is unaffected, and after
// RecoverPort new connections work and the stalled one resumes.
func TestIPTablesIsolatesRealTraffic(t *testing.T) {
	ns := netnstest.New(t, "nftest")
	const chain = testChainPrefix + "-ISOLATE"
	ipt := newTestIPTables(t, ns, chain)
	echo := newEchoServer(t, ns.Listen(t))
	bystander := newEchoServer(t, ns.Listen(t))
	port := echo.port()

	established := ns.MustDial(t, echo.addr())
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

	c, err := ns.Dial(echo.addr(), 700*time.Millisecond)
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
	if _, err := roundTrip(ns.MustDial(t, bystander.addr()), []byte("other port"), 2*time.Second); err != nil {
		t.Fatalf("a port that is not dropped: %v", err)
	}

	if err := ipt.RecoverPort(port); err != nil {
		t.Fatal(err)
	}
	expectRules(t, ns, pristine)
	if _, err := roundTrip(ns.MustDial(t, echo.addr()), []byte("after"), 2*time.Second); err != nil {
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
	ns := netnstest.New(t, "nftest")
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
	ns := netnstest.New(t, "nftest")
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
	got, want := ns.Rules(t), droppedRules(chain, ports...)
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
	ns := netnstest.New(t, "nftest")
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
		if _, err := ns.IPTables(args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ns.IPTables("-D", "INPUT", "-j", testChainPrefix+"-NOT-OURS")
		ns.IPTables("-F", testChainPrefix+"-NOT-OURS")
		ns.IPTables("-X", testChainPrefix+"-NOT-OURS")
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
	ns := netnstest.New(t, "nftest")
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
