package agent_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/logtail"
	"github.com/etcd-functional/functional/internal/netnstest"
)

// Hosts of the two-member cluster of TestAgentDelaysBothDirections.
const (
	dlHostA = "198.18.0.1" // the agent's member, etcd-0
	dlHostB = "198.18.0.2" // etcd-1, run directly
)

// TestAgentDelaysBothDirections runs the agent binary in a member's own
// network namespace, as a deployment would, with a real two-member etcd
// cluster across two namespaces, and measures a write on the leader: it
// commits once the follower has the entry, a round trip between the
// members, so a delay D that reaches both directions of the agent's member
// adds about 2·D (inbound only, it would add D). It then kills the agent
// and checks that the next one replaces the dead one's redirect, and that
// a clean shutdown leaves no rule behind.
func TestAgentDelaysBothDirections(t *testing.T) {
	a := netnstest.New(t, "dla")
	b := netnstest.New(t, "dlb")
	if _, err := a.IPTables("-t", "nat", "-S"); err != nil {
		t.Skipf("no nat table in a namespace here: %v", err)
	}
	etcd := etcdBinary(t)
	netnstest.Link(t, a, b, dlHostA+"/30", dlHostB+"/30")
	t.Cleanup(func() { b.KillAll(t) })
	t.Cleanup(func() { a.KillAll(t) })
	natBefore := a.Rules(t) // filter table; the nat table is compared below
	natPristine, _ := a.IPTables("-t", "nat", "-S")
	agentBin := buildAgent(t)
	dir := t.TempDir()

	cluster := fmt.Sprintf("etcd-0=http://%s:2380,etcd-1=http://%s:2380", dlHostA, dlHostB)
	token := fmt.Sprintf("dl-%d", os.Getpid())
	memberArgs := func(name, host, listenPeer string) []string {
		return []string{
			"--name", name,
			"--listen-client-urls", "http://" + host + ":2379",
			"--advertise-client-urls", "http://" + host + ":2379",
			"--listen-peer-urls", "http://" + host + ":" + listenPeer,
			"--initial-advertise-peer-urls", "http://" + host + ":2380",
			"--initial-cluster", cluster,
			"--initial-cluster-token", token,
			"--initial-cluster-state", "new",
			"--unsafe-no-fsync",
		}
	}
	// etcd-1, on the other host, without an agent.
	startInNS(t, b, filepath.Join(dir, "etcd-1.log"), etcd, append(memberArgs("etcd-1", dlHostB, "2380"), "--data-dir", filepath.Join(dir, "etcd-1.data"))...)

	agentLogPath := filepath.Join(dir, "agent.log")
	base := filepath.Join(dir, "agent")
	runAgent := func() *exec.Cmd {
		return startInNS(t, a, agentLogPath, agentBin, "-etcd-path", etcd, "-base-dir", base,
			"-port", dlHostA+":9027", "-network-faults", "iptables", "-sigterm-wait", "20s")
	}
	agentCmd := runAgent()
	c, err := client.New(forwardTo(t, a, dlHostA+":9027"), client.Config{RetryFor: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(agentLogPath)
			t.Logf("agent log ends:\n%s", logtail.Lines(string(b), 40))
		}
	})
	ctx := context.Background()
	if _, err := c.Start(ctx, memberArgs("etcd-0", dlHostA, "2381")); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.DelayDirections != wire.DelayBoth || st.DelayInboundWhy != "" {
		t.Fatalf("agent in the member's namespace: DelayDirections %q (%s), want %q", st.DelayDirections, st.DelayInboundWhy, wire.DelayBoth)
	}
	nat, _ := a.IPTables("-t", "nat", "-S")
	if !strings.Contains(nat, "-A ETCD-AGENT-9027 -p tcp -m tcp --dport 2380 -j REDIRECT --to-ports") {
		t.Fatalf("nat table in the member's namespace has no redirect of port 2380:\n%s", nat)
	}

	hc := nsHTTP(a)
	urls := []string{"http://" + dlHostA + ":2379", "http://" + dlHostB + ":2379"}
	waitPuts(t, hc, urls)
	leader := leaderURL(t, hc, urls)
	const delay = 200 * time.Millisecond
	measure := func(phase string) (lo, hi time.Duration) {
		t.Helper()
		lo = time.Hour
		for i := range 3 {
			start := time.Now()
			if err := etcdPut(hc, leader, fmt.Sprintf("k%d", i), "v", 10*time.Second); err != nil {
				t.Fatalf("%s: put on the leader %s: %v", phase, leader, err)
			}
			d := time.Since(start)
			lo, hi = min(lo, d), max(hi, d)
		}
		t.Logf("%-14s put on the leader (%s): min %v max %v", phase, leader, lo.Round(time.Millisecond), hi.Round(time.Millisecond))
		return lo, hi
	}
	if lo, _ := measure("no delay"); lo >= delay/2 {
		t.Errorf("without a delay a put takes at least %v, want well under %v", lo, delay)
	}
	if err := c.SetLatency(ctx, delay, 0); err != nil {
		t.Fatal(err)
	}
	lo, hi := measure("delay " + delay.String())
	if lo < 2*delay*8/10 || hi > 2*delay+time.Second {
		t.Errorf("delay %v both ways: puts took %v to %v, want about %v (a round trip; %v would mean one direction only)", delay, lo, hi, 2*delay, delay)
	}
	if err := c.RemoveLatency(ctx); err != nil {
		t.Fatal(err)
	}
	if lo, _ := measure("delay removed"); lo >= delay/2 {
		t.Errorf("after RemoveLatency a put takes at least %v, want well under %v", lo, delay)
	}

	// Isolation still holds with the member's outbound connections going
	// through the proxy: its dials carry the peer port and are dropped.
	if err := c.DropPort(ctx, 2380); err != nil {
		t.Fatal(err)
	}
	if err := etcdPut(hc, leader, "isolated", "v", 3*time.Second); err == nil {
		t.Error("a put committed while the agent's member was cut off from the other (two members: no quorum)")
	}
	if err := c.RecoverPort(ctx, 2380); err != nil {
		t.Fatal(err)
	}
	waitPuts(t, hc, urls)

	// An agent that dies leaves its redirect to a port no one serves; the
	// next one replaces it before it adopts etcd.
	agentCmd.Process.Kill()
	agentCmd.Wait()
	agentCmd = runAgent()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st, err = c.Status(ctx)
		if err == nil && st.Adopted || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || !st.Adopted || st.DelayDirections != wire.DelayBoth {
		t.Fatalf("successor agent: %+v, %v; want it to adopt etcd with delay both ways", st, err)
	}
	nat, _ = a.IPTables("-t", "nat", "-S")
	if n, m := strings.Count(nat, "-A OUTPUT -j ETCD-AGENT-9027"), strings.Count(nat, "REDIRECT"); n != 1 || m != 1 {
		t.Errorf("after a successor replaced a dead agent's redirect: %d jumps and %d REDIRECT rules, want 1 and 1:\n%s", n, m, nat)
	}
	waitPuts(t, hc, urls) // etcd reconnects through the new proxies
	// Its connections made since go through the successor's proxies: a
	// gap between the old redirect and the new would have let etcd
	// connect around them, for good.
	leader = leaderURL(t, hc, urls)
	if err := c.SetLatency(ctx, delay, 0); err != nil {
		t.Fatal(err)
	}
	if lo, hi := measure("adopted, delay " + delay.String()); lo < 2*delay*8/10 || hi > 2*delay+time.Second {
		t.Errorf("successor agent, delay %v both ways: puts took %v to %v, want about %v", delay, lo, hi, 2*delay)
	}
	if err := c.RemoveLatency(ctx); err != nil {
		t.Fatal(err)
	}

	// A clean shutdown stops etcd and removes every rule.
	agentCmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- agentCmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("agent shutdown: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("agent still running 60 s after SIGTERM")
	}
	if got, _ := a.IPTables("-t", "nat", "-S"); got != natPristine {
		t.Errorf("nat table after the agent shut down:\n%s\nwant as before:\n%s", got, natPristine)
	}
	if got := a.Rules(t); strings.Join(got, "\n") != strings.Join(natBefore, "\n") {
		t.Errorf("filter table after the agent shut down:\n%s\nwant as before:\n%s", strings.Join(got, "\n"), strings.Join(natBefore, "\n"))
	}
}

// buildAgent builds etcd-agent for the test.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "etcd-agent")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "github.com/etcd-functional/functional/cmd/etcd-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build etcd-agent: %v\n%s", err, out)
	}
	return bin
}

// startInNS runs bin in ns, output to logPath; the caller's namespace
// cleanup (KillAll) ends it if the test does not, and Cleanup reaps it.
func startInNS(t *testing.T, ns *netnstest.NS, logPath, bin string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// forwardTo serves a loopback port of the host that forwards each
// connection to addr inside ns, so that the agent's ordinary client can
// reach an agent in a namespace; it stops when the test ends.
func forwardTo(t *testing.T, ns *netnstest.NS, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			track(c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				up, err := ns.Dial(addr, 2*time.Second)
				if err != nil {
					c.Close()
					return
				}
				track(up)
				done := make(chan struct{})
				go func() { io.Copy(up, c); up.Close(); close(done) }()
				io.Copy(c, up)
				c.Close()
				<-done
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// nsHTTP is an HTTP client whose connections are made inside ns.
func nsHTTP(ns *netnstest.NS) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return ns.Dial(addr, 2*time.Second)
		},
	}}
}

// etcdPut writes key through etcd's JSON gateway.
func etcdPut(hc *http.Client, url, key, value string, timeout time.Duration) error {
	body, _ := json.Marshal(map[string]string{
		"key":   base64.StdEncoding.EncodeToString([]byte(key)),
		"value": base64.StdEncoding.EncodeToString([]byte(value)),
	})
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v3/kv/put", bytes.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"revision"`) {
		return fmt.Errorf("put %s: %s %s", url, resp.Status, b)
	}
	return nil
}

// waitPuts waits, at most 60 s, until a put succeeds on every member.
func waitPuts(t *testing.T, hc *http.Client, urls []string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, u := range urls {
		for {
			err := etcdPut(hc, u, "ready", "1", 2*time.Second)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster not writable through %s after 60 s: %v", u, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// leaderURL returns the client URL of the member that leads.
func leaderURL(t *testing.T, hc *http.Client, urls []string) string {
	t.Helper()
	for _, u := range urls {
		resp, err := hc.Post(u+"/v3/maintenance/status", "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Header struct {
				MemberID string `json:"member_id"`
			} `json:"header"`
			Leader string `json:"leader"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader != "" && st.Leader == st.Header.MemberID {
			return u
		}
	}
	t.Fatalf("no member of %v says it leads", urls)
	return ""
}
