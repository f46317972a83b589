package netfault

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/internal/netnstest"
)

// Addresses of the two hosts of the delay test, on a veth pair between
// their namespaces (198.18.0.0/15 is for benchmarks; nothing routes it).
const (
	dlTargetIP = "198.18.0.1"
	dlOtherIP  = "198.18.0.2"
)

// twoHosts makes two namespaces, the target member's host and another,
// joined by a veth pair.
func twoHosts(t *testing.T) (target, other *netnstest.NS) {
	t.Helper()
	target = netnstest.New(t, "dl")
	other = netnstest.New(t, "dl")
	if _, err := target.IPTables("-t", "nat", "-S"); err != nil {
		t.Skipf("no nat table in a namespace here: %v", err)
	}
	netnstest.Link(t, target, other, dlTargetIP+"/30", dlOtherIP+"/30")
	return target, other
}

// nsListen listens on addr inside ns until the test ends.
func nsListen(t *testing.T, ns *netnstest.NS, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// nsDialer wraps dial so that each connection is made from inside ns, as
// the agent's would be from the member's namespace.
func nsDialer(ns *netnstest.NS, dial DialFunc) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			c, err = dial(ctx, network, addr)
			return err
		})
		return c, err
	}
}

func accept(t *testing.T, ln *net.TCPListener) net.Conn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept on %s: %v", ln.Addr(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// oneWay sends a byte from src and returns how long it took to reach dst.
func oneWay(src, dst net.Conn, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	dst.SetReadDeadline(start.Add(timeout))
	defer dst.SetReadDeadline(time.Time{})
	if _, err := src.Write([]byte{'x'}); err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := dst.Read(b[:]); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// TestDelayReachesBothDirectionsInNamespaces builds what the agent builds
// in a member's own namespace (the peer proxy on the advertised port, the
// outbound proxy and the redirect of the member's outbound peer
// connections) between two hosts, and measures the one-way latency of real
// TCP traffic on a connection dialled into the member and on one it dials
// out, in each direction: about the delay while it is set, fast before and
// after.
func TestDelayReachesBothDirectionsInNamespaces(t *testing.T) {
	target, other := twoHosts(t)
	const delay = 300 * time.Millisecond
	const slack = 400 * time.Millisecond // race detector, two shared cores

	ipt, err := NewIPTables(testChainPrefix+"-DELAY", target.IPTablesCommand()...)
	if err != nil {
		t.Fatal(err)
	}
	redirect := NewOutboundRedirect(ipt)
	if err := redirect.Available(); err != nil {
		t.Skipf("nat table unusable: %v", err)
	}
	t.Cleanup(func() {
		if err := redirect.Reset(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	// The member: its peer listener, behind the inbound proxy on the
	// advertised address.
	memberLn := nsListen(t, target, "127.0.0.1:0")
	plain := nsDialer(target, (&net.Dialer{Timeout: 2 * time.Second}).DialContext)
	in := newProxy(nsListen(t, target, dlTargetIP+":0"), memberLn.Addr().String(),
		func(ctx context.Context, _ net.Conn) (net.Conn, error) {
			return plain(ctx, "tcp", memberLn.Addr().String())
		})
	t.Cleanup(func() { in.Close() })
	out := newOutboundProxy(nsListen(t, target, "127.0.0.1:0"), nsDialer(target, MarkedDialer(OutboundMark)))
	t.Cleanup(func() { out.Close() })

	// The other member's peer port, whose number the redirect names.
	otherLn := nsListen(t, other, dlOtherIP+":0")
	otherPort := otherLn.Addr().(*net.TCPAddr).Port
	if err := redirect.Install([]int{otherPort}, out.Addr().(*net.TCPAddr).Port); err != nil {
		t.Fatal(err)
	}
	nat, err := target.IPTables("-t", "nat", "-S")
	if err != nil {
		t.Fatal(err)
	}
	chain := ipt.Chain()
	for _, want := range []string{
		"-A OUTPUT -j " + chain,
		fmt.Sprintf("-A %s -m mark --mark %#x -j RETURN", chain, OutboundMark),
		fmt.Sprintf("-A %s -p tcp -m tcp --dport %d -j REDIRECT --to-ports %d", chain, otherPort, out.Addr().(*net.TCPAddr).Port),
	} {
		if !slices.Contains(netnstest.Lines(nat), want) {
			t.Errorf("nat table of the target has no %q:\n%s", want, nat)
		}
	}

	// A connection the other host dials into the member, and one the
	// member dials out to the other host.
	inOther := other.MustDial(t, net.JoinHostPort(dlTargetIP, fmt.Sprint(in.Addr().(*net.TCPAddr).Port)))
	inMember := accept(t, memberLn)
	outMember := target.MustDial(t, otherLn.Addr().String())
	outOther := accept(t, otherLn)
	if got := outOther.RemoteAddr().(*net.TCPAddr).IP.String(); got != dlTargetIP {
		t.Fatalf("the other host sees the outbound connection from %s, want %s", got, dlTargetIP)
	}

	flows := []struct {
		name     string
		src, dst net.Conn
	}{
		{"into the member, on the connection dialled to it", inOther, inMember},
		{"out of the member, on the connection dialled to it", inMember, inOther},
		{"out of the member, on the connection it dialled", outMember, outOther},
		{"into the member, on the connection it dialled", outOther, outMember},
	}
	// measure returns the fastest and slowest of three one-way trips of
	// each flow.
	measure := func(phase string) (lo, hi []time.Duration) {
		t.Helper()
		for _, f := range flows {
			mn, mx := time.Duration(1<<62), time.Duration(0)
			for range 3 {
				d, err := oneWay(f.src, f.dst, delay+5*time.Second)
				if err != nil {
					t.Fatalf("%s, %s: %v", phase, f.name, err)
				}
				mn, mx = min(mn, d), max(mx, d)
			}
			t.Logf("%-14s %-52s min %7v max %7v", phase, f.name, mn.Round(time.Millisecond), mx.Round(time.Millisecond))
			lo, hi = append(lo, mn), append(hi, mx)
		}
		return lo, hi
	}
	expectFast := func(phase string) {
		t.Helper()
		lo, _ := measure(phase)
		for i, d := range lo {
			if d >= delay/2 {
				t.Errorf("%s, %s: fastest one-way trip %v, want well under the delay %v", phase, flows[i].name, d, delay)
			}
		}
	}

	expectFast("no delay")
	for _, p := range []*Proxy{in, out} {
		if err := p.SetLatency(delay, 0); err != nil {
			t.Fatal(err)
		}
	}
	lo, hi := measure("delay " + delay.String())
	for i := range flows {
		if lo[i] < delay*8/10 || hi[i] > delay+slack {
			t.Errorf("delay %v, %s: one-way trips took %v to %v, want within [%v, %v]",
				delay, flows[i].name, lo[i], hi[i], delay*8/10, delay+slack)
		}
	}
	for _, p := range []*Proxy{in, out} {
		if err := p.RemoveLatency(); err != nil {
			t.Fatal(err)
		}
	}
	expectFast("delay removed")

	// A connection dialled to the outbound proxy itself, not redirected,
	// is closed rather than forwarded to the proxy again.
	expectClosed(t, target.MustDial(t, out.Addr().String()), 5*time.Second)
}

// TestOutboundRedirectResetRemovesLeftovers installs the redirect as a
// dead agent would have left it and checks that Install twice is a no-op,
// that a successor's Install replaces the dead one's rules, and that a
// successor's Reset removes them all.
func TestOutboundRedirectResetRemovesLeftovers(t *testing.T) {
	ns := netnstest.New(t, "dl")
	if _, err := ns.IPTables("-t", "nat", "-S"); err != nil {
		t.Skipf("no nat table in a namespace here: %v", err)
	}
	pristine, _ := ns.IPTables("-t", "nat", "-S")
	newRedirect := func() *OutboundRedirect {
		ipt, err := NewIPTables(testChainPrefix+"-LEFT", ns.IPTablesCommand()...)
		if err != nil {
			t.Fatal(err)
		}
		return NewOutboundRedirect(ipt)
	}
	dead := newRedirect()
	t.Cleanup(func() { dead.Reset() })
	for range 2 {
		if err := dead.Install([]int{2380, 12380}, 40000); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := ns.IPTables("-t", "nat", "-S")
	if n := strings.Count(got, "-A OUTPUT -j "+testChainPrefix+"-LEFT"); n != 1 {
		t.Errorf("after Install twice, %d jumps from OUTPUT, want 1:\n%s", n, got)
	}
	if n := strings.Count(got, "REDIRECT"); n != 2 {
		t.Errorf("after Install twice, %d REDIRECT rules, want 2:\n%s", n, got)
	}
	// A successor that adopts the member replaces the redirect in place.
	successor := newRedirect()
	if err := successor.Install([]int{2380, 12380}, 40001); err != nil {
		t.Fatal(err)
	}
	chain := testChainPrefix + "-LEFT"
	want := slices.Concat(netnstest.Lines(pristine), []string{
		"-N " + chain,
		"-A OUTPUT -j " + chain,
		fmt.Sprintf("-A %s -m mark --mark %#x -j RETURN", chain, OutboundMark),
		"-A " + chain + " -m addrtype --dst-type LOCAL -j RETURN",
		"-A " + chain + " -p tcp -m tcp --dport 2380 -j REDIRECT --to-ports 40001",
		"-A " + chain + " -p tcp -m tcp --dport 12380 -j REDIRECT --to-ports 40001",
	})
	if got, _ := ns.IPTables("-t", "nat", "-S"); !slices.Equal(netnstest.Lines(got), want) {
		t.Errorf("nat table after a successor's Install:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if err := newRedirect().Reset(); err != nil {
		t.Fatal(err)
	}
	if got, _ := ns.IPTables("-t", "nat", "-S"); got != pristine {
		t.Errorf("nat table after Reset by a new agent:\n%s\nwant as before:\n%s", got, pristine)
	}
}
