package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/logtail"
)

// envFailpointBinary overrides where the tests look for a failpoint build.
const envFailpointBinary = "ETCD_FAILPOINTS_BIN"

// failpointBinary returns an etcd built with failpoints ($ETCD_FAILPOINTS_BIN,
// else the newest-named bin/etcd-*-failpoints of the module), or skips.
func failpointBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(envFailpointBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("$%s: %v", envFailpointBinary, err)
		}
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			bins, _ := filepath.Glob(filepath.Join(dir, "bin", "etcd-*-failpoints"))
			if len(bins) == 0 {
				t.Skipf("no failpoint build of etcd in %s: run `make build FAILPOINTS=1` (writes bin/etcd-VERSION-failpoints) or set $%s", filepath.Join(dir, "bin"), envFailpointBinary)
			}
			slices.Sort(bins)
			return bins[len(bins)-1]
		}
		dir = filepath.Dir(dir)
	}
	t.Skipf("no go.mod above the working directory; set $%s", envFailpointBinary)
	return ""
}

// goodTerms are terms the agent accepts; TestFailpointsOnFailpointBuild
// proves that gofail accepts each of them too.
var goodTerms = []string{"panic", `panic("boom")`, "off", "print", "return", "return()", "return(0)", "return(1)", "return(-7)",
	"return(true)", "return(false)", `return("x y")`, "sleep(0)", "sleep(100)", "sleep(60000)", "1*panic", "50.0%panic",
	"12.5%return(false)", "2*50.0%sleep(10)", "1*sleep(100)->panic", "3*off->panic", "100.0%print"}

// failpointer returns the failpoint side of c.
func failpointer(t *testing.T, c client.Agent) client.Failpointer {
	t.Helper()
	fp, ok := c.(client.Failpointer)
	if !ok {
		t.Fatalf("client %T does not implement client.Failpointer", c)
	}
	return fp
}

// gofailHTTP returns the GOFAIL_HTTP of process pid, "" if it has none.
func gofailHTTP(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	for kv := range bytes.SplitSeq(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("GOFAIL_HTTP=")); ok {
			return string(v)
		}
	}
	return ""
}

// gatewayPut writes one key through etcd's JSON gateway ("foo" = "bar").
func gatewayPut(url string, timeout time.Duration) error {
	resp, err := noKeepAlive(timeout).Post(url+"/v3/kv/put", "application/json", strings.NewReader(`{"key":"Zm9v","value":"YmFy"}`))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("put: %s", resp.Status)
	}
	return nil
}

// TestFailpointsOnFailpointBuild drives a real failpoint build of etcd
// through the agent's RPCs: the agent serves failpoints on loopback only;
// it lists them; it refuses unknown names and counts of disarmed ones; a
// sleep term acts on every put and its count rises; disarming empties the
// term (and twice is fine); a panic term on raftBeforeSave makes the next
// put kill etcd with the panic in its log, and the restarted etcd has every
// failpoint disarmed.
func TestFailpointsOnFailpointBuild(t *testing.T) {
	bin := failpointBinary(t)
	s := serve(t, agent.Config{EtcdPath: bin})
	c := s.client(t, client.Config{})
	fp := failpointer(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Failpoints || st.FailpointsReason != "" {
		t.Fatalf("Status of an agent running %s: Failpoints %t (%q), want true", bin, st.Failpoints, st.FailpointsReason)
	}
	if _, err := fp.Failpoints(ctx); err == nil || !strings.Contains(err.Error(), "not been started") {
		t.Fatalf("Failpoints before any start: %v, want an error saying etcd has not been started", err)
	}

	m := newMember(t, "fp0", false)
	pid, err := c.Start(ctx, m.args)
	if err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())

	addr := gofailHTTP(t, pid)
	if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
		t.Fatalf("etcd's GOFAIL_HTTP = %q, want 127.0.0.1:PORT", addr)
	}

	fps, err := fp.Failpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range fps {
		if f.Term != "" {
			t.Errorf("fresh etcd: failpoint %s armed with %q", f.Name, f.Term)
		}
		names = append(names, f.Name)
	}
	for _, want := range []string{"raftBeforeSave", "raftAfterSave", "beforeCommit", "defragBeforeCopy", "compactBeforeSetFinishedCompact"} {
		if !slices.Contains(names, want) {
			t.Errorf("failpoints %v: %s missing", names, want)
		}
	}
	t.Logf("%d failpoints: %s", len(names), strings.Join(names, " "))

	// Every term the agent accepts, gofail accepts too (on a failpoint that
	// only a defragmentation reaches, so none acts).
	for _, term := range goodTerms {
		if err := fp.ArmFailpoint(ctx, "defragBeforeCopy", term); err != nil {
			t.Errorf("arm defragBeforeCopy with %q: %v", term, err)
		}
	}
	if fps, err := fp.Failpoints(ctx); err != nil || !slices.Contains(fps, wire.Failpoint{Name: "defragBeforeCopy", Term: goodTerms[len(goodTerms)-1]}) {
		t.Fatalf("Failpoints after arming defragBeforeCopy: %v, %v; want it armed with %q", fps, err, goodTerms[len(goodTerms)-1])
	}
	if err := fp.DisarmFailpoint(ctx, "defragBeforeCopy"); err != nil {
		t.Fatal(err)
	}

	expectErr(t, "arm an unknown failpoint", fp.ArmFailpoint(ctx, "noSuchFailpoint", "panic"), `failpoint "noSuchFailpoint"`, "no such failpoint", "raftBeforeSave")
	_, err = fp.FailpointCount(ctx, "raftAfterSave")
	expectErr(t, "count of a disarmed failpoint", err, `failpoint "raftAfterSave" is not armed`)

	// sleep: acts on every save, so the count rises with puts.
	if err := fp.ArmFailpoint(ctx, "raftAfterSave", "sleep(1)"); err != nil {
		t.Fatal(err)
	}
	if fps, err := fp.Failpoints(ctx); err != nil || !slices.Contains(fps, wire.Failpoint{Name: "raftAfterSave", Term: "sleep(1)"}) {
		t.Fatalf("Failpoints after arming raftAfterSave=sleep(1): %v, %v", fps, err)
	}
	const puts = 3
	for i := range puts {
		if err := gatewayPut(m.clientURL(), 5*time.Second); err != nil {
			t.Fatalf("put %d with raftAfterSave=sleep(1): %v", i, err)
		}
	}
	n, err := fp.FailpointCount(ctx, "raftAfterSave")
	if err != nil {
		t.Fatal(err)
	}
	if n < puts {
		t.Fatalf("raftAfterSave count after %d acknowledged puts = %d, want at least %d", puts, n, puts)
	}
	if err := fp.DisarmFailpoint(ctx, "raftAfterSave"); err != nil {
		t.Fatal(err)
	}
	if err := fp.DisarmFailpoint(ctx, "raftAfterSave"); err != nil {
		t.Fatalf("disarm a disarmed failpoint: %v, want no error", err)
	}
	if fps, err := fp.Failpoints(ctx); err != nil || !slices.Contains(fps, wire.Failpoint{Name: "raftAfterSave"}) {
		t.Fatalf("Failpoints after disarming raftAfterSave: %v, %v; want it with no term", fps, err)
	}

	// panic: the next save kills etcd, and the log says which failpoint.
	if err := fp.ArmFailpoint(ctx, "raftBeforeSave", "panic"); err != nil {
		t.Fatal(err)
	}
	gatewayPut(m.clientURL(), 5*time.Second) // fails: etcd dies under it
	waitExited(t, c)
	log, err := os.ReadFile(filepath.Join(s.base, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	// A bare panic logs "failpoint panic: {}"; the stack names gofail.
	if !strings.Contains(string(log), "panic: failpoint panic: {}") || !strings.Contains(string(log), "gofail/runtime.actPanic") {
		t.Fatalf("etcd exited but its log has no failpoint panic (\"panic: failpoint panic: {}\" and gofail/runtime.actPanic); it ends:\n%s", logtail.Lines(string(log), 15))
	}
	_, err = fp.Failpoints(ctx)
	expectErr(t, "Failpoints of an exited etcd", err, "not running")

	// A restart is a fresh process: nothing armed, and it serves again.
	// panic("MESSAGE") puts the message in the log.
	pid2, err := c.Restart(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	if a2 := gofailHTTP(t, pid2); a2 != addr {
		t.Fatalf("restarted etcd pid %d: GOFAIL_HTTP=%q, want the agent's port kept (%s)", pid2, a2, addr)
	}
	fps, err = fp.Failpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fps {
		if f.Term != "" {
			t.Errorf("restarted etcd: failpoint %s armed with %q, want every one disarmed", f.Name, f.Term)
		}
	}
	if err := gatewayPut(m.clientURL(), 5*time.Second); err != nil {
		t.Fatalf("put after restart: %v", err)
	}
	if err := fp.ArmFailpoint(ctx, "beforeCommit", `panic("beforeCommit")`); err != nil {
		t.Fatal(err)
	}
	gatewayPut(m.clientURL(), 5*time.Second) // may fail: etcd dies under it
	waitExited(t, c)
	log, err = os.ReadFile(filepath.Join(s.base, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "panic: failpoint panic: beforeCommit") {
		t.Fatalf("etcd exited but its log has no \"panic: failpoint panic: beforeCommit\"; it ends:\n%s", logtail.Lines(string(log), 15))
	}
}

// waitExited waits, for at most 20 s, until the agent reports that its
// etcd exited.
func waitExited(t *testing.T, c client.Agent) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := c.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.State == wire.StateStopped && st.Pid == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd still %s (pid %d) 20 s after its failpoint was to panic", st.State, st.Pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFailpointsWithoutFailpointBuild: with a normal etcd, Status says there
// are no failpoints and why, etcd gets no GOFAIL_HTTP, and every failpoint
// RPC fails with that reason.
func TestFailpointsWithoutFailpointBuild(t *testing.T) {
	bin := etcdBinary(t)
	s := serve(t, agent.Config{EtcdPath: bin})
	c := s.client(t, client.Config{})
	fp := failpointer(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Failpoints {
		t.Skipf("%s is a failpoint build; set $ETCD_BIN to a normal etcd to run this test", bin)
	}
	if !strings.Contains(st.FailpointsReason, "built without gofail failpoints") {
		t.Fatalf("Status.FailpointsReason = %q, want it to say the binary was built without failpoints", st.FailpointsReason)
	}
	m := newMember(t, "plain0", false)
	pid, err := c.Start(ctx, m.args)
	if err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	if addr := gofailHTTP(t, pid); addr != "" {
		t.Errorf("normal etcd started with GOFAIL_HTTP=%s, want none", addr)
	}
	_, err = fp.Failpoints(ctx)
	expectErr(t, "Failpoints", err, "built without gofail failpoints", "FAILPOINTS=1")
	expectErr(t, "ArmFailpoint", fp.ArmFailpoint(ctx, "raftBeforeSave", "panic"), "built without gofail failpoints")
	expectErr(t, "DisarmFailpoint", fp.DisarmFailpoint(ctx, "raftBeforeSave"), "built without gofail failpoints")
	_, err = fp.FailpointCount(ctx, "raftBeforeSave")
	expectErr(t, "FailpointCount", err, "built without gofail failpoints")
	expectServing(t, c)
}

// TestFailpointNamesAndTermsRefused: bad names and terms are refused with
// what is wrong and what is allowed, before the agent looks at etcd at all
// (here a binary without failpoints: a well-formed request gets that error
// instead).
func TestFailpointNamesAndTermsRefused(t *testing.T) {
	s := serve(t, agent.Config{EtcdPath: testBinary(t)})
	c := s.client(t, client.Config{})
	fp := failpointer(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const noFailpoints = "built without gofail failpoints"
	for _, term := range goodTerms {
		expectErr(t, "arm with "+term, fp.ArmFailpoint(ctx, "raftBeforeSave", term), noFailpoints)
	}
	bad := []struct{ term, want string }{
		{"", "term is empty"},
		{"explode", `unknown action "explode"`},
		{"break", "break runs gdb"},
		{"panic(1)", `want panic or panic("STRING")`},
		{`panic("")`, `want panic or panic("STRING")`},
		{"off(1)", "off takes no value"},
		{"sleep", "want sleep(ms)"},
		{"sleep(-1)", "want sleep(ms)"},
		{"sleep(60001)", "0..60000"},
		{`sleep("1s")`, "want sleep(ms)"},
		{"return(1.5)", "want return"},
		{"return(007)", "want return"},
		{"return(-0)", "want return"},
		{"sleep(+5)", "want sleep(ms)"},
		{"sleep(010)", "want sleep(ms)"},
		{"50%panic", "write the percentage with a decimal point, e.g. 50.0%"},
		{"2*50%sleep(10)", "decimal point"},
		{`return("a\"b")`, "want return"},
		{"0*panic", "N in 1..1000000000"},
		{"101.0%panic", "P in (0, 100]"},
		{"0.0%panic", "P in (0, 100]"},
		{"panic->", `"" is not a term`},
		{"panic;b=panic", "is not a term"},
		{"1*2", "is not a term"},
		{strings.Repeat("1*", 200) + "panic", "at most 256"},
		{strings.Repeat("off->", 8) + "panic", "at most 8"},
	}
	for _, b := range bad {
		err := fp.ArmFailpoint(ctx, "raftBeforeSave", b.term)
		expectErr(t, fmt.Sprintf("arm with %q", b.term), err, b.want)
		if strings.Contains(err.Error(), noFailpoints) {
			t.Errorf("arm with %q: %v: the term must be refused before the binary is looked at", b.term, err)
		}
	}
	for _, name := range []string{"", "1abc", "raft/BeforeSave", "a b", "../x", "failpoints?x", strings.Repeat("a", 129)} {
		expectErr(t, fmt.Sprintf("arm %q", name), fp.ArmFailpoint(ctx, name, "panic"), "failpoint name", "Go identifier")
		expectErr(t, fmt.Sprintf("disarm %q", name), fp.DisarmFailpoint(ctx, name), "failpoint name")
		_, err := fp.FailpointCount(ctx, name)
		expectErr(t, fmt.Sprintf("count %q", name), err, "failpoint name")
	}
	expectServing(t, c)
}

// TestFailpointsOfAdoptedEtcd: an agent that adopts the etcd of a
// predecessor (here: a second agent on the same base dir) reaches its
// failpoints, since the address is read from etcd's own environment.
func TestFailpointsOfAdoptedEtcd(t *testing.T) {
	bin := failpointBinary(t)
	s := serve(t, agent.Config{EtcdPath: bin})
	m := newMember(t, "fpadopt0", false)
	pid, err := s.Start(m.args)
	if err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	if err := s.ArmFailpoint("raftAfterSave", "sleep(1)"); err != nil {
		t.Fatal(err)
	}

	b, err := agent.New(agent.Config{EtcdPath: bin, BaseDir: s.base, NetworkFaults: agent.FaultsProxy, SigtermWait: 5 * time.Second, SigintWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close() // stops etcd; the first agent's cleanup then finds it gone
	if st := b.Status(); st.Pid != pid || !st.Adopted || !st.Failpoints {
		t.Fatalf("second agent: Status pid %d adopted %t failpoints %t, want pid %d adopted, with failpoints", st.Pid, st.Adopted, st.Failpoints, pid)
	}
	fps, err := b.Failpoints()
	if err != nil {
		t.Fatalf("Failpoints through the adopting agent: %v", err)
	}
	if !slices.Contains(fps, wire.Failpoint{Name: "raftAfterSave", Term: "sleep(1)"}) {
		t.Fatalf("adopting agent sees %v, want raftAfterSave armed with sleep(1) by the first agent", fps)
	}
	if err := b.DisarmFailpoint("raftAfterSave"); err != nil {
		t.Fatal(err)
	}
}

// An armed failpoint is a fault under the lease: arming extends the lease,
// and when nobody renews it the agent disarms the failpoint, as it heals
// any other fault, and says so. A tester that died with a panic armed
// would otherwise leave it for etcd's next write.
func TestFaultLeaseDisarmsFailpoints(t *testing.T) {
	bin := failpointBinary(t)
	s := serve(t, agent.Config{EtcdPath: bin, FaultLease: leaseTestLease})
	c := s.client(t, client.Config{})
	fp := failpointer(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := newMember(t, "fplease", false)
	if _, err := c.Start(ctx, m.args); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	// Let the start's own lease lapse first: the arming must start one.
	waitStatus(t, s.Agent, leaseTestLease+5*time.Second, "past the start's lease", func(st wire.Status) bool { return st.FaultLeaseUntil.IsZero() })

	injected := time.Now()
	if err := fp.ArmFailpoint(ctx, "defragBeforeCopy", "sleep(1)"); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.FaultLeaseUntil.Before(injected.Add(leaseTestLease - 100*time.Millisecond)) {
		t.Errorf("FaultLeaseUntil %v after arming, want a lease of %v from then", st.FaultLeaseUntil, leaseTestLease)
	}
	st := waitStatus(t, s.Agent, leaseTestLease+5*time.Second, "expired", func(st wire.Status) bool { return !st.FaultsExpiredAt.IsZero() })
	expectExpiry(t, st, injected, "failpoint defragBeforeCopy armed (sleep(1))")
	fps, err := fp.Failpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fps {
		if f.Term != "" {
			t.Errorf("failpoint %s still armed (%s) after the lease lapsed", f.Name, f.Term)
		}
	}
}
