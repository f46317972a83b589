package localnet

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as a tiny TCP echo server that the tests start
// inside a host's namespace, so that reachability is checked on real traffic.
func TestMain(m *testing.M) {
	if addr := os.Getenv("LOCALNET_TEST_ECHO"); addr != "" {
		echo(addr)
		return
	}
	os.Exit(m.Run())
}

func echo(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("listening")
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			line, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Fprint(c, line)
		}()
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Name: "", Hosts: 1}, "name"},
		{Config{Name: "Bad-Name", Hosts: 1}, "name"},
		{Config{Name: "elevenchars", Hosts: 1}, "name"},
		{Config{Name: "ok", Hosts: 0}, "hosts 0"},
		{Config{Name: "ok", Hosts: 201}, "hosts 201"},
		{Config{Name: "ok", Hosts: 1, Subnet: netip.MustParsePrefix("10.1.2.0/30")}, "subnet"},
		{Config{Name: "ok", Hosts: 1, Subnet: netip.MustParsePrefix("fd00::/64")}, "subnet"},
	} {
		err := c.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want an error about %q", c.cfg, err, c.want)
		}
	}
	a, b := Config{Name: "alpha", Hosts: 1}, Config{Name: "beta", Hosts: 1}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	if a.Subnet == b.Subnet {
		t.Errorf("default subnets of different names are equal: %s", a.Subnet)
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
}

// startEcho runs the echo server in host i and waits until it listens.
func startEcho(t *testing.T, n *Net, i int, port int) {
	t.Helper()
	cmd := n.Command(i, os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("LOCALNET_TEST_ECHO=%s:%d", n.Hosts[i].Addr, port))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "listening\n" {
		t.Fatalf("echo server in host %d: %q, %v", i, line, err)
	}
}

func roundTrip(dial func() (net.Conn, error)) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintln(c, "ping"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo answered %q", line)
	}
	return nil
}

func TestHostsReachEachOther(t *testing.T) {
	needRoot(t)
	n, err := Create(Config{Name: "lntest1", Hosts: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	startEcho(t, n, 0, 7000)
	target := fmt.Sprintf("%s:7000", n.Hosts[0].Addr)

	// From the root namespace, over the bridge.
	if err := roundTrip(func() (net.Conn, error) { return net.DialTimeout("tcp", target, 2*time.Second) }); err != nil {
		t.Fatalf("root namespace -> host 0: %v", err)
	}
	// From host 1 to host 0, across the bridge (through FORWARD).
	cmd := n.Command(1, "bash", "-c", fmt.Sprintf(`exec 3<>/dev/tcp/%s/7000 && echo ping >&3 && timeout 2 head -n1 <&3`, n.Hosts[0].Addr))
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "ping\n" {
		t.Fatalf("host 1 -> host 0: %q, %v", out, err)
	}
	// Each host has its own loopback: host 0's server is not on host 1's.
	cmd = n.Command(1, "bash", "-c", `exec 3<>/dev/tcp/127.0.0.1/7000`)
	if err := cmd.Run(); err == nil {
		t.Fatal("host 1 reached a port that only host 0 listens on via its own loopback")
	}
}

func TestCloseLeavesNothing(t *testing.T) {
	needRoot(t)
	n, err := Create(Config{Name: "lntest2", Hosts: 2})
	if err != nil {
		t.Fatal(err)
	}
	// A process left running in a host must not keep anything alive.
	stray := n.Command(0, "sleep", "60")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	stray.Wait()
	assertGone(t, "lntest2")
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestCreateClearsLeftovers(t *testing.T) {
	needRoot(t)
	// A run killed before it could Close leaves its network behind; the
	// next Create of the same name must succeed and own a clean network.
	first, err := Create(Config{Name: "lntest3", Hosts: 1})
	if err != nil {
		t.Fatal(err)
	}
	_ = first // deliberately not closed
	second, err := Create(Config{Name: "lntest3", Hosts: 1})
	if err != nil {
		Remove("lntest3")
		t.Fatalf("Create over leftovers: %v", err)
	}
	out, _ := exec.Command("iptables", "-w", "-S", "FORWARD").Output()
	if c := strings.Count(string(out), "localnet:lntest3"); c != 1 {
		t.Errorf("FORWARD holds %d rules of the network, want 1:\n%s", c, out)
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "lntest3")
}

func TestSubnetClash(t *testing.T) {
	needRoot(t)
	a, err := Create(Config{Name: "lntest4", Hosts: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	_, err = Create(Config{Name: "lntest5", Hosts: 1, Subnet: a.Subnet})
	if err == nil || !strings.Contains(err.Error(), "overlaps") {
		Remove("lntest5")
		t.Fatalf("Create on a subnet in use = %v, want an overlap error", err)
	}
	assertGone(t, "lntest5")
}

func assertGone(t *testing.T, name string) {
	t.Helper()
	if nss, _ := namespacesOf(name); len(nss) > 0 {
		t.Errorf("namespaces left: %v", nss)
	}
	if links, _ := linksOf(name); len(links) > 0 {
		t.Errorf("links left: %v", links)
	}
	out, _ := exec.Command("iptables", "-w", "-S", "FORWARD").Output()
	if strings.Contains(string(out), "localnet:"+name) {
		t.Errorf("FORWARD rules left:\n%s", out)
	}
	if routes := unreachableRoutes(t, name); routes != "" {
		t.Errorf("unreachable routes left: %s", routes)
	}
}

// unreachableRoutes lists the unreachable routes of the network named
// name, one a line.
func unreachableRoutes(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "route", "show", "type", "unreachable").Output()
	if err != nil {
		t.Fatalf("ip route: %v", err)
	}
	var mine []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, fmt.Sprintf(" metric %d", routeMetric(name))) {
			mine = append(mine, l)
		}
	}
	return strings.Join(mine, "\n")
}

// TestTrafficStaysHome: once a network's bridge is gone (torn down, or
// removed under a live run), a connect to one of its hosts fails on this
// machine at once rather than following the default route off it; while
// the bridge is up, the route carries nothing.
func TestTrafficStaysHome(t *testing.T) {
	needRoot(t)
	n, err := Create(Config{Name: "lntest6", Hosts: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if unreachableRoutes(t, "lntest6") == "" {
		t.Fatal("no unreachable route for the subnet while the network is up")
	}
	startEcho(t, n, 0, 7001)
	target := fmt.Sprintf("%s:7001", n.Hosts[0].Addr)
	if err := roundTrip(func() (net.Conn, error) { return net.DialTimeout("tcp", target, 2*time.Second) }); err != nil {
		t.Fatalf("with the bridge up, root namespace -> host 0: %v", err)
	}
	if out, err := exec.Command("ip", "route", "get", n.Hosts[0].Addr.String()).CombinedOutput(); err != nil || !strings.Contains(string(out), "dev "+n.Bridge) {
		t.Fatalf("with the bridge up, the host's route is not the bridge: %s %v", out, err)
	}

	if out, err := exec.Command("ip", "link", "del", n.Bridge).CombinedOutput(); err != nil {
		t.Fatalf("delete the bridge: %v: %s", err, out)
	}
	start := time.Now()
	c, err := net.DialTimeout("tcp", target, 5*time.Second)
	took := time.Since(start)
	if err == nil {
		c.Close()
		t.Fatalf("connected to %s with the bridge gone", target)
	}
	if !errors.Is(err, syscall.EHOSTUNREACH) || took > time.Second {
		t.Fatalf("with the bridge gone, connect to %s: %v after %v; want no route to host at once", target, err, took)
	}
	if out, _ := exec.Command("ip", "route", "get", n.Hosts[0].Addr.String()).CombinedOutput(); strings.Contains(string(out), " via ") {
		t.Fatalf("with the bridge gone, the host's address routes off the machine: %s", out)
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "lntest6")
}
