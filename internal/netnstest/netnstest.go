// Package netnstest gives a test a network namespace of its own: its
// loopback, its ports and its iptables rules are separate from the host's,
// so that a test can drop ports for real without touching the machine it
// runs on. Sockets are created inside the namespace by a goroutine locked
// to an OS thread that entered it; once created, they stay in the
// namespace whichever thread uses them.
//
// It needs root, ip (iproute2) and iptables; New skips the test, saying
// why, where that cannot work.
package netnstest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NS is a network namespace that lives as long as the test that made it.
type NS struct {
	Name string
	f    *os.File // /run/netns/<Name>, for setns
}

// New creates a namespace named prefix plus a random suffix, with its
// loopback up, and deletes it when the test ends.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and edits its iptables rules")
	}
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s in PATH (Debian packages iproute2 and iptables): %v", bin, err)
		}
	}
	name := fmt.Sprintf("%s%08x", prefix, rand.Uint32())
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
	t.Cleanup(func() { f.Close() }) // before the del above: LIFO
	ns := &NS{Name: name, f: f}
	if _, err := ns.IPTables("-S"); err != nil {
		t.Skipf("iptables does not work in a namespace here: %v", err)
	}
	return ns
}

// Do runs f on an OS thread that has entered the namespace.
func (ns *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked on purpose: the thread is in another namespace,
		// so it must end with this goroutine rather than go back to the
		// scheduler to run other goroutines.
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.Name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// Listen listens on 127.0.0.1:0 inside the namespace until the test ends.
func (ns *NS) Listen(t testing.TB) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Dial connects to addr from inside the namespace.
func (ns *NS) Dial(addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

// MustDial connects to addr from inside the namespace, failing the test if
// it cannot within 2 s, and closes the connection when the test ends.
func (ns *NS) MustDial(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := ns.Dial(addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// IPTablesCommand is the argv prefix that runs iptables in the namespace.
func (ns *NS) IPTablesCommand() []string {
	return []string{"ip", "netns", "exec", ns.Name, "iptables"}
}

// IPTables runs iptables -w with args in the namespace and returns its
// output: the test's own view of the rules, independent of the code under
// test.
func (ns *NS) IPTables(args ...string) (string, error) {
	out, err := exec.Command("ip", slices.Concat([]string{"netns", "exec", ns.Name, "iptables", "-w"}, args)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("iptables %s in %s: %v: %s", strings.Join(args, " "), ns.Name, err, out)
	}
	return string(out), nil
}

// Rules returns the lines of iptables -S in the namespace.
func (ns *NS) Rules(t testing.TB) []string {
	t.Helper()
	out, err := ns.IPTables("-S")
	if err != nil {
		t.Fatal(err)
	}
	return Lines(out)
}

// Lines splits iptables output into trimmed, non-empty lines.
func Lines(out string) []string {
	var lines []string
	for l := range strings.Lines(out) {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// Link joins a and b, as two hosts on one wire, by a veth pair: dev0 in a
// with address addrA, dev1 in b with addrB, both up (addresses as
// prefixes, e.g. "198.18.0.1/30"). The pair is made inside a with its peer
// in b, so that its names never exist in the host's namespace; deleting
// either namespace deletes it.
func Link(t testing.TB, a, b *NS, addrA, addrB string) {
	t.Helper()
	for _, args := range [][]string{
		{"-n", a.Name, "link", "add", "dev0", "type", "veth", "peer", "name", "dev1", "netns", b.Name},
		{"-n", a.Name, "addr", "add", addrA, "dev", "dev0"},
		{"-n", b.Name, "addr", "add", addrB, "dev", "dev1"},
		{"-n", a.Name, "link", "set", "dev0", "up"},
		{"-n", b.Name, "link", "set", "dev1", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

// KillAll sends SIGKILL to every process left in the namespace (ip netns
// del does not end them) but the test's own, by pid, and waits up to 10 s for them to go. A
// test calls it from a Cleanup registered after New's, so that it runs
// before the namespace is deleted.
func (ns *NS) KillAll(t testing.TB) {
	t.Helper()
	for range 100 {
		out, err := exec.Command("ip", "netns", "pids", ns.Name).Output()
		if err != nil {
			t.Errorf("ip netns pids %s: %v", ns.Name, err)
			return
		}
		// The test process itself may be listed: Do's goroutine may have
		// run on the main thread, which the runtime never ends.
		pids := slices.DeleteFunc(Lines(string(out)), func(p string) bool { return p == strconv.Itoa(os.Getpid()) })
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("processes still in namespace %s after 10 s of SIGKILL", ns.Name)
}
