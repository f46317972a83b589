package netfault

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// testChainPrefix starts the name of every chain the tests create, so that
// the host check below can tell the tests' traces from rules other programs
// (Docker, other packages' tests running at the same time) add or remove.
const testChainPrefix = "NFTEST"

// TestMain fails the run if any goroutine outlives the tests, and if the
// tests changed the host's iptables rules: every rule they add belongs in a
// namespace of their own, and a slip (a command without "ip netns exec")
// would show as a line naming a test chain.
func TestMain(m *testing.M) {
	before, hostErr := hostRules()
	code := m.Run()
	if hostErr == nil {
		after, err := hostRules()
		if err != nil {
			fmt.Fprintf(os.Stderr, "netfault: cannot re-read the host's iptables rules: %v\n", err)
			code = 1
		} else if diff := testChainDiff(before, after); diff != "" {
			fmt.Fprintf(os.Stderr, "netfault: the tests changed the host's iptables rules:\n%s", diff)
			code = 1
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "netfault: goroutines leaked: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// hostRules is the host's filter table, read only, or an error when there
// is no iptables or no privilege to read it (then there is nothing the
// tests could have changed either).
func hostRules() (string, error) {
	if os.Geteuid() != 0 {
		return "", errors.New("not root")
	}
	out, err := exec.Command("iptables", "-w", "-S").Output()
	return string(out), err
}

// testChainDiff returns the lines that mention a test chain and are in
// only one of before and after.
func testChainDiff(before, after string) string {
	var diff strings.Builder
	b, a := lineSet(before), lineSet(after)
	for l := range b {
		if !a[l] && strings.Contains(l, testChainPrefix) {
			fmt.Fprintf(&diff, "- %s\n", l)
		}
	}
	for l := range a {
		if !b[l] && strings.Contains(l, testChainPrefix) {
			fmt.Fprintf(&diff, "+ %s\n", l)
		}
	}
	return diff.String()
}

func lineSet(s string) map[string]bool {
	m := map[string]bool{}
	for l := range strings.Lines(s) {
		m[strings.TrimSpace(l)] = true
	}
	return m
}

// echoServer is a TCP echo server that counts what reaches it, so that the
// tests can tell "no answer" from "nothing arrived".
type echoServer struct {
	ln       net.Listener
	accepted atomic.Int32
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// newEchoServer serves ln until the test ends.
func newEchoServer(t *testing.T, ln net.Listener) *echoServer {
	t.Helper()
	e := &echoServer{ln: ln, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.mu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				io.Copy(c, c)
				c.Close()
				e.mu.Lock()
				delete(e.conns, c)
				e.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(e.close)
	return e
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

func (e *echoServer) port() int { return e.ln.Addr().(*net.TCPAddr).Port }

func (e *echoServer) close() {
	e.ln.Close()
	e.mu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// roundTrip writes msg to c and reads it back, within timeout, and returns
// how long it took.
func roundTrip(c net.Conn, msg []byte, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	c.SetDeadline(start.Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return 0, err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return 0, err
	}
	if !bytes.Equal(got, msg) {
		return 0, fmt.Errorf("echo %q, want %q", got, msg)
	}
	return time.Since(start), nil
}

// expectSilence writes msg to c and checks that nothing comes back within
// wait: a timeout, not an error, not an EOF.
func expectSilence(t *testing.T, c net.Conn, msg []byte, wait time.Duration) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write to a silenced connection failed: %v (want the write to succeed and nothing to come back)", err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 1)
	n, err := c.Read(buf)
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a silenced connection: n=%d err=%v, want nothing until the deadline", n, err)
	}
}

// expectClosed checks that the peer closes c within wait.
func expectClosed(t *testing.T, c net.Conn, wait time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after %v, want it closed", wait)
	}
}

func listenLocal(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
