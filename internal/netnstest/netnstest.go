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
