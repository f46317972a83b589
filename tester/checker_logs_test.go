package tester

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// logAgent is a fake agent with a log: ScanLog matches its lines from the
// offset given (a line number here) as the real agent does.
type logAgent struct {
	*fakeAgent
	mu    sync.Mutex
	lines []string
	froms []wire.LogPos
}

var _ client.LogScanner = (*logAgent)(nil)

func (l *logAgent) log(lines ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, lines...)
}

func (l *logAgent) ScanLog(_ context.Context, s wire.ScanLog) (wire.LogScan, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.froms = append(l.froms, s.From)
	var out wire.LogScan
	for _, line := range l.lines[min(int(s.From.Offset), len(l.lines)):] {
		hit := slices.ContainsFunc(s.Patterns, func(p string) bool { return strings.Contains(line, p) })
		if hit && !slices.ContainsFunc(s.Except, func(p string) bool { return strings.Contains(line, p) }) {
			out.Lines = append(out.Lines, line)
		}
	}
	out.End = wire.LogPos{File: 1, Offset: int64(len(l.lines))}
	return out, nil
}

func logCluster(t *testing.T) (*Cluster, []*logAgent) {
	t.Helper()
	s, fakes := fakeSettings(t, 3, nil)
	var las []*logAgent
	var agents []client.Agent
	for _, f := range fakes {
		la := &logAgent{fakeAgent: f}
		las = append(las, la)
		agents = append(agents, la)
	}
	c, err := newCluster(s, agents)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, las
}

func checkLogs(c *Cluster) (error, *CheckContext) {
	cc := &CheckContext{Cluster: c}
	return newLogCheck(cc).Check(context.Background()), cc
}

// TestLogCheck: a member whose etcd logged a panic or a corruption report
// fails the case with the line quoted; a clean log, a failpoint's own
// panic, or lines from before the bootstrap's mark pass; each check reads
// on from where the last ended.
func TestLogCheck(t *testing.T) {
	c, las := logCluster(t)
	las[0].log("panic: from an earlier run")
	c.markLogs(context.Background())
	for _, la := range las {
		la.log(`{"level":"info","msg":"ready to serve client requests"}`, `{"level":"warn","msg":"slow fdatasync"}`)
	}
	las[2].log("panic: failpoint panic: {}")
	if err, _ := checkLogs(c); err != nil {
		t.Fatalf("clean logs: %v", err)
	}

	las[1].log(`{"level":"error","msg":"etcd-1 found data inconsistency with peers"}`, "panic: runtime error: index out of range")
	err, _ := checkLogs(c)
	if err == nil || !strings.Contains(err.Error(), "etcd-1's etcd logged 2 line(s)") ||
		!strings.Contains(err.Error(), "found data inconsistency with peers") || !strings.Contains(err.Error(), "panic: runtime error") {
		t.Fatalf("corruption and panic in etcd-1's log: %v", err)
	}
	if strings.Contains(err.Error(), "etcd-0") || strings.Contains(err.Error(), "earlier run") {
		t.Errorf("lines of another member or from before the mark quoted: %v", err)
	}
	// Reported once: the next case reads on.
	if err, _ := checkLogs(c); err != nil {
		t.Fatalf("the next check: %v", err)
	}
	if got := las[1].froms[len(las[1].froms)-1]; got.Offset != 4 {
		t.Errorf("etcd-1's last scan from %+v, want offset 4 (after the lines already read)", got)
	}
}

// An agent that cannot scan (an older agent, a fake) is not scanned, and
// the figure says so; one that fails to answer leaves the verdict unknown.
func TestLogCheckWithoutScanner(t *testing.T) {
	c, _ := fakeCluster(t, 3)
	err, cc := checkLogs(c)
	if err != nil || cc.figures["members not scanned"] != 3 {
		t.Fatalf("agents without ScanLog: %v, figures %v", err, cc.figures)
	}
	c, las := logCluster(t)
	c.members[0].agent = failingScanner{las[0]}
	if err, _ := checkLogs(c); !errors.Is(err, ErrCheckUnknown) {
		t.Fatalf("a scan that failed: %v, want unknown", err)
	}
}

type failingScanner struct{ *logAgent }

func (failingScanner) ScanLog(context.Context, wire.ScanLog) (wire.LogScan, error) {
	return wire.LogScan{}, errors.New("connection reset")
}

// A case that failed before its checks (here: a member never came back)
// still says what etcd logged: etcdSays quotes the corruption report.
func TestFailedCaseQuotesEtcd(t *testing.T) {
	c, las := logCluster(t)
	c.markLogs(context.Background())
	r := &caseRun{t: &tester{cluster: c}}
	if err := r.etcdSays(context.Background()); err != nil {
		t.Fatalf("clean logs: %v", err)
	}
	las[1].log(`{"level":"error","msg":"checkInitialHashKV failed","error":"e644 found data inconsistency with peers"}`)
	err := r.etcdSays(context.Background())
	if err == nil || !strings.Contains(err.Error(), "etcd's logs: etcd-1's etcd logged 1 line(s)") || !strings.Contains(err.Error(), "found data inconsistency") {
		t.Fatalf("a failed case's logs with a corruption report: %v", err)
	}
}

// A FAILPOINTS case's panics are its own doing, also when the code that
// recovered the failpoint's panic raises another without its name: the
// logs of the members it made panic are read past; the others' are not.
func TestLogCheckReadsPastAFailpointsPanics(t *testing.T) {
	c, las := logCluster(t)
	c.markLogs(context.Background())
	fc := &failpointCase{fp: failpoint{"beforeCommit", `panic("beforeCommit")`}, targets: []int{1}}
	las[1].log(`{"level":"panic","msg":"execute job failed","panic":"failpoint panic: beforeCommit"}`, "panic: execute job failed")
	if err := (logCheck{&CheckContext{Cluster: c, Case: fc}}).Check(context.Background()); err != nil {
		t.Fatalf("the panic a FAILPOINTS case armed, on its target: %v", err)
	}
	las[2].log("panic: execute job failed")
	err := logCheck{&CheckContext{Cluster: c, Case: fc}}.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "etcd-2") {
		t.Fatalf("a panic on a member the case did not target: %v; want it failed", err)
	}
}
