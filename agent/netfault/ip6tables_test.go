package netfault

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-functional/functional/internal/netnstest"
)

// ip6Rules is what ip6tables -S shows in the namespace.
func ip6Rules(t *testing.T, ns *netnstest.NS) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns.Name, "ip6tables", "-w", "-S").CombinedOutput()
	if err != nil {
		t.Fatalf("ip6tables -S in %s: %v: %s", ns.Name, err, out)
	}
	var lines []string
	for _, l := range netnstest.Lines(string(out)) {
		if !strings.HasPrefix(l, "#") { // "# Warning: ... legacy tables present"
			lines = append(lines, l)
		}
	}
	return lines
}

// TestIPTablesIsolatesIPv6 drops a port in a namespace whose loopback has
// ::1 and checks that the rules went into ip6tables as well as iptables,
// that a new IPv6 connection to the port times out while another port
// works, and that RecoverPort and Reset leave ip6tables as they found it.
func TestIPTablesIsolatesIPv6(t *testing.T) {
	ns := netnstest.New(t, "lz6")
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "[::1]:0"); return err }); err != nil {
		t.Skipf("no IPv6 loopback in a namespace here: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	const chain = testChainPrefix + "-IPV6"
	ipt := newTestIPTables(t, ns, chain)
	if !ipt.IPv6() {
		t.Skip("ip6tables does not work in a namespace here (see the log of Available)")
	}
	echo := newEchoServer(t, ln)
	var bln net.Listener
	if err := ns.Do(func() (err error) { bln, err = net.Listen("tcp", "[::1]:0"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bln.Close() })
	bystander := newEchoServer(t, bln)
	pristine6 := ip6Rules(t, ns)

	if err := ipt.DropPort(echo.port()); err != nil {
		t.Fatal(err)
	}
	want := slices.Concat(pristine6, []string{"-N " + chain, "-A INPUT -j " + chain, "-A OUTPUT -j " + chain,
		fmt.Sprintf("-A %s -p tcp -m tcp --dport %d -j DROP", chain, echo.port()),
		fmt.Sprintf("-A %s -p tcp -m tcp --sport %d -j DROP", chain, echo.port())})
	if got := ip6Rules(t, ns); !slices.Equal(got, want) {
		t.Fatalf("ip6tables -S after DropPort:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	expectRules(t, ns, droppedRules(chain, echo.port())) // and IPv4 as before
	c, err := ns.Dial(echo.addr(), 700*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatalf("IPv6 dial to dropped port %s succeeded", echo.addr())
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("IPv6 dial to a dropped port: %v; want a timeout, not a refusal", err)
	}
	if _, err := roundTrip(ns.MustDial(t, bystander.addr()), []byte("v6 other port"), 2*time.Second); err != nil {
		t.Fatalf("an IPv6 port that is not dropped: %v", err)
	}

	if err := ipt.RecoverPort(echo.port()); err != nil {
		t.Fatal(err)
	}
	if got := ip6Rules(t, ns); !slices.Equal(got, pristine6) {
		t.Fatalf("ip6tables -S after RecoverPort:\n  %s\nwant as before:\n  %s", strings.Join(got, "\n  "), strings.Join(pristine6, "\n  "))
	}
	if _, err := roundTrip(ns.MustDial(t, echo.addr()), []byte("v6 after"), 2*time.Second); err != nil {
		t.Fatalf("IPv6 connection after RecoverPort: %v", err)
	}

	// Reset clears ip6tables too, also of what an earlier process left.
	if err := ipt.DropPort(echo.port()); err != nil {
		t.Fatal(err)
	}
	fresh, err := NewIPTables(chain, ns.IPTablesCommand()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.Available(); err != nil {
		t.Fatal(err)
	}
	if err := fresh.Reset(); err != nil {
		t.Fatal(err)
	}
	if got := ip6Rules(t, ns); !slices.Equal(got, pristine6) {
		t.Fatalf("ip6tables -S after Reset:\n  %s\nwant as before:\n  %s", strings.Join(got, "\n  "), strings.Join(pristine6, "\n  "))
	}
	expectRules(t, ns, pristine)
}

func TestIP6Command(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"iptables"}, []string{"ip6tables"}},
		{[]string{"/usr/sbin/iptables-legacy"}, []string{"/usr/sbin/ip6tables-legacy"}},
		{[]string{"ip", "netns", "exec", "ns1", "iptables-nft"}, []string{"ip", "netns", "exec", "ns1", "ip6tables-nft"}},
		{[]string{"sudo", "-n", "iptables"}, []string{"sudo", "-n", "ip6tables"}},
		{[]string{"/opt/wrapper"}, nil},
	} {
		if got := ip6Command(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("ip6Command(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
