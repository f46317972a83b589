package tester

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/stresser"
)

// cannedKV answers with canned results, one per call (the last repeats).
type cannedKV struct {
	name     string
	id       uint64
	statuses []cannedStatus
	hashes   map[int64]cannedHash
	calls    int
	hashRevs []int64
}

type cannedStatus struct {
	rev    int64
	leader uint64
	err    error
}

type cannedHash struct {
	hash    uint32
	compact int64
	err     error
}

func (k *cannedKV) Name() string { return k.name }

func (k *cannedKV) Status(context.Context) (int64, uint64, uint64, error) {
	s := k.statuses[min(k.calls, len(k.statuses)-1)]
	k.calls++
	return s.rev, s.leader, k.id, s.err
}

func (k *cannedKV) HashKV(_ context.Context, rev int64) (uint32, int64, error) {
	k.hashRevs = append(k.hashRevs, rev)
	h, ok := k.hashes[rev]
	if !ok {
		return 0, 0, errors.New("mvcc: required revision is a future revision")
	}
	return h.hash, h.compact, h.err
}

func fastHashChecker(ms ...*cannedKV) hashChecker {
	kvs := make([]kvMember, len(ms))
	for i, m := range ms {
		kvs[i] = m
	}
	h := newHashChecker(kvs)
	h.interval = time.Millisecond
	return h
}

func TestHashCheckerEqual(t *testing.T) {
	hashes := map[int64]cannedHash{100: {0xabc, 50, nil}}
	a := &cannedKV{name: "etcd-0", id: 1, statuses: []cannedStatus{{100, 2, nil}}, hashes: hashes}
	b := &cannedKV{name: "etcd-1", id: 2, statuses: []cannedStatus{{100, 2, nil}}, hashes: hashes}
	c := &cannedKV{name: "etcd-2", id: 3, statuses: []cannedStatus{{100, 2, nil}}, hashes: hashes}
	if err := fastHashChecker(a, b, c).Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*cannedKV{a, b, c} {
		if len(m.hashRevs) != 1 || m.hashRevs[0] != 100 {
			t.Errorf("%s hashed at %v; want the leader's revision 100 once", m.name, m.hashRevs)
		}
	}
}

// A follower behind the leader at first: the checker waits for it, then
// hashes everybody at the leader's revision.
func TestHashCheckerWaitsForConvergence(t *testing.T) {
	hashes := map[int64]cannedHash{100: {0xabc, 0, nil}, 120: {0xdef, 0, nil}}
	a := &cannedKV{name: "etcd-0", id: 1, statuses: []cannedStatus{{120, 1, nil}}, hashes: hashes}
	b := &cannedKV{name: "etcd-1", id: 2, statuses: []cannedStatus{{100, 1, nil}, {110, 1, nil}, {120, 1, nil}}, hashes: hashes}
	c := &cannedKV{name: "etcd-2", id: 3, statuses: []cannedStatus{{0, 0, errors.New("connection refused")}, {120, 1, nil}}, hashes: hashes}
	if err := fastHashChecker(a, b, c).Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b.calls != 3 || len(b.hashRevs) != 1 || b.hashRevs[0] != 120 {
		t.Errorf("etcd-1: %d status calls, hashed at %v; want 3 and [120]", b.calls, b.hashRevs)
	}
}

func TestHashCheckerReportsDifference(t *testing.T) {
	same := map[int64]cannedHash{100: {0xabc, 50, nil}}
	a := &cannedKV{name: "etcd-0", id: 1, statuses: []cannedStatus{{100, 1, nil}}, hashes: same}
	b := &cannedKV{name: "etcd-1", id: 2, statuses: []cannedStatus{{100, 1, nil}}, hashes: same}
	c := &cannedKV{name: "etcd-2", id: 3, statuses: []cannedStatus{{100, 1, nil}}, hashes: map[int64]cannedHash{100: {0x123, 50, nil}}}
	err := fastHashChecker(a, b, c).Check(context.Background())
	if err == nil {
		t.Fatal("different hashes passed")
	}
	for _, w := range []string{"after 7 tries", "hashes at revision 100 differ", "etcd-0 revision 100 hash 00000abc", "etcd-2 revision 100 hash 00000123"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if c.calls != hashCheckTries {
		t.Errorf("%d tries, want %d", c.calls, hashCheckTries)
	}

	// Equal hashes from different compaction points are not equal stores.
	c.hashes = map[int64]cannedHash{100: {0xabc, 60, nil}}
	if err := fastHashChecker(a, b, c).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "compact revision 60") {
		t.Errorf("different compact revisions: %v", err)
	}
}

func TestHashCheckerReportsRevisions(t *testing.T) {
	h := map[int64]cannedHash{100: {1, 0, nil}}
	a := &cannedKV{name: "etcd-0", id: 1, statuses: []cannedStatus{{100, 1, nil}}, hashes: h}
	b := &cannedKV{name: "etcd-1", id: 2, statuses: []cannedStatus{{90, 1, nil}}, hashes: h}
	err := fastHashChecker(a, b).Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "etcd-0 revision 100 (leader); etcd-1 revision 90") {
		t.Errorf("stuck follower: %v", err)
	}
	// Nobody leads.
	a.statuses = []cannedStatus{{100, 0, nil}}
	b.statuses = []cannedStatus{{100, 0, nil}}
	if err := fastHashChecker(a, b).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "no member is the leader") {
		t.Errorf("no leader: %v", err)
	}
}

func TestHashCheckerHonoursContext(t *testing.T) {
	a := &cannedKV{name: "etcd-0", id: 1, statuses: []cannedStatus{{100, 0, nil}}}
	h := fastHashChecker(a)
	h.interval = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := h.Check(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Check = %v, want the context's error", err)
	}
}

func TestStressBudget(t *testing.T) {
	st := stresser.Stats{Duration: 10 * time.Second, Success: 9000, Failure: 2999}
	if err := (stressBudget{st, 1000, 0.3}).Check(context.Background()); err != nil {
		t.Errorf("2999 failures of 11999 sent: %v", err)
	}
	st.Failure = 3900
	if err := (stressBudget{st, 1000, 0.3}).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "3900 of 12900 stress requests failed") {
		t.Errorf("3900 failures of 12900 sent: %v", err)
	}
	// The budget is of the requests sent, not of those the rate asked
	// for: a load that got little through (300 of the 10000 asked, two
	// thirds failed) does not pass.
	st.Success, st.Failure = 100, 200
	if err := (stressBudget{st, 1000, 0.3}).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "200 of 300") {
		t.Errorf("200 failures of 300 sent: %v", err)
	}
	st.Success, st.Failure = 0, 0
	if err := (stressBudget{st, 1000, 0.3}).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "no stress request finished") {
		t.Errorf("nothing sent: %v", err)
	}
	st.Success, st.Failure = 0, 2
	if err := (stressBudget{st, 1000, 0.9}).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "none of 2") {
		t.Errorf("no success, under a 90%% budget: %v", err)
	}
	st.Success, st.Failure, st.Unexpected = 9000, 1, 1
	if err := (stressBudget{st, 1000, 0.3}).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "1 unexpected") {
		t.Errorf("one unexpected error: %v", err)
	}
	// Through the case: only NO_FAIL_WITH_STRESS judges the load.
	if (noFail{stress: false}).StressChecker(st) != nil {
		t.Error("NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS has a stress checker")
	}
	if (noFail{stress: true, budget: 0.3, qps: 1000}).StressChecker(st).Check(context.Background()) == nil {
		t.Error("NO_FAIL_WITH_STRESS passed an unexpected error")
	}
}

type checkFunc func(context.Context) error

func (f checkFunc) Check(ctx context.Context) error { return f(ctx) }

func TestCheckersRunAllAndName(t *testing.T) {
	ran := 0
	unknown := &CheckContext{}
	unknown.Figure("ops", 12)
	cks := []namedChecker{
		{"hash", checkFunc(func(context.Context) error { ran++; return errors.New("differ") }), nil},
		{"stresser", checkFunc(func(context.Context) error { ran++; return nil }), nil},
		{"history", checkFunc(func(context.Context) error { ran++; return fmt.Errorf("search cut short: %w", ErrCheckUnknown) }), unknown},
		{"stress budget", checkFunc(func(context.Context) error { ran++; return errors.New("over") }), nil},
	}
	res, err := runCheckers(context.Background(), cks, true)
	if ran != 4 || err == nil || !strings.Contains(err.Error(), "hash check: differ") || !strings.Contains(err.Error(), "stress budget check: over") {
		t.Errorf("ran %d, err %v", ran, err)
	}
	if strings.Contains(err.Error(), "history") {
		t.Errorf("an unknown verdict failed the case with -allow-unknown: %v", err)
	}
	// Without -allow-unknown, a checker that could not decide fails the
	// case: nothing was proven.
	if _, err := runCheckers(context.Background(), cks[2:3], false); err == nil || !strings.Contains(err.Error(), "history check could not decide") {
		t.Errorf("an unknown verdict without -allow-unknown: %v, want the case failed", err)
	}
	var verdicts []string
	for _, r := range res {
		verdicts = append(verdicts, r.Name+"="+r.Verdict)
	}
	if want := []string{"hash=fail", "stresser=pass", "history=unknown", "stress budget=fail"}; !slices.Equal(verdicts, want) {
		t.Errorf("verdicts %v, want %v", verdicts, want)
	}
	if res[2].Figures["ops"] != 12 {
		t.Errorf("figures of the history checker: %v", res[2].Figures)
	}
}

// A checker registered from outside runs in every case after the built-in
// ones and gets the case's context.
func TestRegisterChecker(t *testing.T) {
	var got *CheckContext
	RegisterChecker("test only", func(cc *CheckContext) Checker {
		got = cc
		return checkFunc(func(context.Context) error { cc.Figure("seen", 1); return nil })
	})
	t.Cleanup(func() {
		checkersMu.Lock()
		registry = registry[:len(registry)-1]
		checkersMu.Unlock()
	})
	if names := Checkers(); names[len(names)-1] != "test only" || !slices.Contains(names, "hash") {
		t.Errorf("checkers %v", names)
	}
	defer func() {
		if recover() == nil {
			t.Error("a name registered twice did not panic")
		}
	}()
	res := &CaseResult{Case: "X"}
	cks := buildCheckers(CheckContext{Config: Config{ConsistencyCheck: false}, Result: res, Dir: "d"})
	if len(cks) != 1 || cks[0].name != "test only" || got == nil || got.Result != res || got.Dir != "d" {
		t.Fatalf("built %v for a case without load or hash check", cks)
	}
	out, err := runCheckers(context.Background(), cks, false)
	if err != nil || len(out) != 1 || out[0].Figures["seen"] != 1 {
		t.Errorf("results %+v, %v", out, err)
	}
	RegisterChecker("hash", nil)
}
