package tester

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/stresser"
)

// The catalogue, by name.
var wantCases = []string{
	"SIGTERM_ONE_FOLLOWER", "SIGTERM_LEADER", "SIGTERM_QUORUM", "SIGTERM_ALL",
	"SIGTERM_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT", "SIGTERM_LEADER_UNTIL_TRIGGER_SNAPSHOT",
	"SIGKILL_ONE_FOLLOWER", "SIGKILL_LEADER", "SIGKILL_QUORUM", "SIGKILL_ALL",
	"SIGSTOP_ONE_FOLLOWER", "SIGSTOP_LEADER", "SIGSTOP_QUORUM",
	"BLACKHOLE_PEER_PORT_TX_RX_ONE_FOLLOWER", "BLACKHOLE_PEER_PORT_TX_RX_LEADER",
	"BLACKHOLE_PEER_PORT_TX_RX_QUORUM", "BLACKHOLE_PEER_PORT_TX_RX_ALL",
	"BLACKHOLE_PEER_PORT_TX_RX_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT",
	"BLACKHOLE_PEER_PORT_TX_RX_LEADER_UNTIL_TRIGGER_SNAPSHOT",
	"DELAY_PEER_PORT_TX_RX_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT",
	"DELAY_PEER_PORT_TX_RX_LEADER_UNTIL_TRIGGER_SNAPSHOT",
	"RANDOM_DELAY_PEER_PORT_TX_RX_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT",
	"RANDOM_DELAY_PEER_PORT_TX_RX_LEADER_UNTIL_TRIGGER_SNAPSHOT",
	"DELAY_PEER_PORT_TX_RX_ONE_FOLLOWER", "DELAY_PEER_PORT_TX_RX_LEADER",
	"DELAY_PEER_PORT_TX_RX_QUORUM", "DELAY_PEER_PORT_TX_RX_ALL",
	"RANDOM_DELAY_PEER_PORT_TX_RX_ONE_FOLLOWER", "RANDOM_DELAY_PEER_PORT_TX_RX_LEADER",
	"RANDOM_DELAY_PEER_PORT_TX_RX_QUORUM", "RANDOM_DELAY_PEER_PORT_TX_RX_ALL",
	"SIGQUIT_AND_REMOVE_ONE_FOLLOWER", "SIGQUIT_AND_REMOVE_LEADER",
	"SIGQUIT_AND_REMOVE_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT",
	"SIGQUIT_AND_REMOVE_LEADER_UNTIL_TRIGGER_SNAPSHOT",
	"SIGQUIT_AND_REMOVE_QUORUM_AND_RESTORE_LEADER_SNAPSHOT_FROM_SCRATCH",
	"FAILPOINTS", "EXTERNAL", "FAILPOINTS_WITH_DISK_IO_LATENCY",
	"NO_FAIL_WITH_STRESS", "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS",
}

// TestFailpointCasesNeedAFailpointBuild: without failpoints in the
// members' etcd, the FAILPOINTS cases are skipped with the reason and how
// to get them, never faked.
func TestFailpointCasesNeedAFailpointBuild(t *testing.T) {
	env := env3()
	env.NoFailpoints = "the etcd of agent 10.0.0.1:9027 has no failpoints: built without gofail"
	_, skipped, err := selectCases(Catalogue(DefaultConfig()), nil, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"FAILPOINTS", "FAILPOINTS_WITH_DISK_IO_LATENCY"} {
		if r := skipReason(skipped, n); !strings.Contains(r, "built without gofail") || !strings.Contains(r, "FAILPOINTS=1") {
			t.Errorf("%s without failpoints: skip reason %q", n, r)
		}
	}
	if _, _, err := selectCases(Catalogue(DefaultConfig()), []string{"FAILPOINTS"}, nil, env); err == nil {
		t.Error("FAILPOINTS asked for by name without failpoints: no error")
	}
}

func TestCatalogue(t *testing.T) {
	names := CaseNames(Catalogue(DefaultConfig()))
	got, want := slices.Sorted(slices.Values(names)), slices.Sorted(slices.Values(wantCases))
	if !slices.Equal(got, want) {
		t.Errorf("catalogue:\n got %v\nwant %v", got, want)
	}
	// Every case listed once, by name, with a description.
	listed := map[string]bool{}
	for _, l := range ListCases(DefaultConfig()) {
		name, desc, ok := strings.Cut(l, " ")
		if !ok || !slices.Contains(wantCases, name) || listed[name] || strings.TrimSpace(desc) == "" {
			t.Errorf("ListCases line %q: want a case's name, once, then a description", l)
		}
		listed[name] = true
	}
	if len(listed) != len(wantCases) {
		t.Errorf("ListCases lists %d cases, want %d", len(listed), len(wantCases))
	}
	// A delay on several members is twice as long between two of them,
	// and a case says so; one on a single member has nothing to add.
	for _, c := range Catalogue(DefaultConfig()) {
		name, desc := c.Name(), c.Describe()
		several := strings.HasSuffix(name, "_QUORUM") || strings.HasSuffix(name, "_ALL")
		if strings.Contains(name, "DELAY") && several != strings.Contains(desc, "twice that") {
			t.Errorf("%s: %q; want the doubled delay between targets named exactly when several are hit", name, desc)
		}
	}
}

// env3 is three agents on distinct hosts with iptables: everything runs.
func env3() Env {
	return Env{
		Members: 3, Hosts: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"},
		Backends:  []string{wire.BackendIPTables, wire.BackendIPTables, wire.BackendIPTables},
		PeerProxy: true, StressWrites: true,
	}
}

func skipReason(skipped []Skip, name string) string {
	for _, s := range skipped {
		if s.Case == name {
			return s.Reason
		}
	}
	return ""
}

func TestSelectDefaultSkipsWithReasons(t *testing.T) {
	// Without a program EXTERNAL is skipped, and says what it needs.
	_, skipped, err := selectCases(Catalogue(DefaultConfig()), nil, nil, env3())
	if err != nil || len(skipped) != 1 || !strings.Contains(skipReason(skipped, "EXTERNAL"), "needs -external-exec-path") {
		t.Fatalf("no -external-exec-path: skipped %v, err %v; want EXTERNAL alone, saying it needs one", skipped, err)
	}
	cfg := DefaultConfig()
	cfg.ExternalExecPath = "/bin/true"
	cat := Catalogue(cfg)

	sel, skipped, err := selectCases(cat, nil, nil, env3())
	if err != nil || len(skipped) != 0 || len(sel) != len(cat) {
		t.Fatalf("full environment: %d selected, skipped %v, err %v; want every case", len(sel), skipped, err)
	}

	// Agents sharing a host: no blackhole, and say why.
	env := env3()
	env.Hosts = []string{"127.0.0.1", "127.0.0.1", "127.0.0.1"}
	sel, skipped, err = selectCases(cat, nil, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range CaseNames(cat) {
		r := skipReason(skipped, n)
		if strings.HasPrefix(n, "BLACKHOLE") != (r != "") {
			t.Errorf("%s: skip reason %q", n, r)
		}
		if r != "" && !strings.Contains(r, "outbound connections to the others cannot be cut, so isolation would be one-way") {
			t.Errorf("%s: reason %q does not say the isolation would be one-way", n, r)
		}
	}
	if len(sel)+len(skipped) != len(cat) {
		t.Errorf("%d selected + %d skipped != %d", len(sel), len(skipped), len(cat))
	}

	// The proxy backend on distinct hosts: still no blackhole.
	env = env3()
	env.Backends[1] = wire.BackendProxy
	_, skipped, _ = selectCases(cat, nil, nil, env)
	if r := skipReason(skipped, "BLACKHOLE_PEER_PORT_TX_RX_ALL"); !strings.Contains(r, `"proxy" network backend`) || !strings.Contains(r, "etcd-1") {
		t.Errorf("proxy backend: reason %q", r)
	}

	// No peer proxy: no delay.
	env = env3()
	env.PeerProxy = false
	_, skipped, _ = selectCases(cat, nil, nil, env)
	for _, n := range CaseNames(cat) {
		if strings.Contains(n, "DELAY") != strings.Contains(skipReason(skipped, n), "-peer-proxy") {
			t.Errorf("no peer proxy: %s skip reason %q", n, skipReason(skipped, n))
		}
	}

	// No writes: no snapshot cases.
	env = env3()
	env.StressWrites = false
	_, skipped, _ = selectCases(cat, nil, nil, env)
	for _, n := range CaseNames(cat) {
		if strings.HasSuffix(n, "_UNTIL_TRIGGER_SNAPSHOT") != strings.Contains(skipReason(skipped, n), "nop") {
			t.Errorf("nop stresser: %s skip reason %q", n, skipReason(skipped, n))
		}
	}

	// Two agents: only the ALL, NO_FAIL and EXTERNAL (the user's
	// program picks its own targets) cases.
	env = env3()
	env.Members, env.Hosts, env.Backends = 2, env.Hosts[:2], env.Backends[:2]
	sel, _, _ = selectCases(cat, nil, nil, env)
	for _, c := range sel {
		if n := c.Name(); !strings.HasSuffix(n, "_ALL") && !strings.HasPrefix(n, "NO_FAIL") && n != "EXTERNAL" {
			t.Errorf("2 agents: %s selected", n)
		}
	}
}

func TestSelectNamedUnsupportedIsAnError(t *testing.T) {
	cat := Catalogue(DefaultConfig())
	env := env3()
	env.Backends[0] = wire.BackendProxy
	_, _, err := selectCases(cat, []string{"SIGKILL_LEADER", "BLACKHOLE_PEER_PORT_TX_RX_LEADER"}, nil, env)
	if err == nil || !strings.Contains(err.Error(), "BLACKHOLE_PEER_PORT_TX_RX_LEADER cannot run here") || !strings.Contains(err.Error(), "one-way") {
		t.Errorf("named blackhole on the proxy backend: %v", err)
	}
}

func TestSelectNamesAndSchedule(t *testing.T) {
	cat := Catalogue(DefaultConfig())
	names := []string{"SIGKILL_LEADER", "SIGTERM_ALL", "NO_FAIL_WITH_STRESS"}
	sel, _, err := selectCases(cat, names, nil, env3())
	if err != nil || !slices.Equal(CaseNames(sel), names) {
		t.Fatalf("named: %v, %v; want %v in that order", CaseNames(sel), err, names)
	}
	sel, _, err = selectCases(cat, names, []int{2, 0, 0, 1}, env3())
	want := []string{"NO_FAIL_WITH_STRESS", "SIGKILL_LEADER", "SIGKILL_LEADER", "SIGTERM_ALL"}
	if err != nil || !slices.Equal(CaseNames(sel), want) {
		t.Fatalf("scheduled: %v, %v; want %v", CaseNames(sel), err, want)
	}
	// Indices count in the list after skips: with the BLACKHOLE cases
	// skipped, a later case has a smaller index than in the catalogue.
	env := env3()
	env.Hosts = []string{"h", "h", "h"}
	all, _, _ := selectCases(cat, nil, nil, env)
	want = []string{"SIGQUIT_AND_REMOVE_ONE_FOLLOWER", "DELAY_PEER_PORT_TX_RX_ONE_FOLLOWER"}
	var sched []int
	for _, n := range want {
		sched = append(sched, slices.Index(CaseNames(all), n))
	}
	if d := "DELAY_PEER_PORT_TX_RX_ONE_FOLLOWER"; slices.Index(CaseNames(all), d) >= slices.Index(CaseNames(cat), d) {
		t.Fatalf("%s: the skipped cases did not move it up", d)
	}
	sel, _, err = selectCases(cat, nil, sched, env)
	if err != nil || !slices.Equal(CaseNames(sel), want) {
		t.Errorf("schedule %v after skips: %v, %v; want %v", sched, CaseNames(sel), err, want)
	}
}

func TestCaseRandReproducible(t *testing.T) {
	draw := func(seed int64, round, index int) []int {
		r := caseRand(seed, round, index)
		return append(pickQuorum(r, 5), r.IntN(1000))
	}
	if a, b := draw(42, 3, 7), draw(42, 3, 7); !slices.Equal(a, b) {
		t.Errorf("same seed, round and case: %v then %v", a, b)
	}
	differ := false
	for idx := range 10 {
		differ = differ || !slices.Equal(draw(42, 1, idx), draw(42, 2, idx))
	}
	if !differ {
		t.Error("rounds draw the same targets for every case")
	}
	q := pickQuorum(caseRand(1, 1, 1), 5)
	if len(q) != 3 || !slices.IsSorted(q) || q[2] >= 5 {
		t.Errorf("quorum of 5: %v", q)
	}
}

func TestDelays(t *testing.T) {
	el := time.Second
	lat, jit := fixedDelay(el).latency(caseRand(1, 1, 1))
	if lat != 5*el || jit != lat/10 {
		t.Errorf("fixed delay %v ±%v, want 5s ±500ms", lat, jit)
	}
	rd := randomDelay(el)
	seen := map[time.Duration]bool{}
	for i := range 200 {
		l, j := rd.latency(caseRand(7, 1, i))
		if l < el/10 || l > 5*el || j != l/10 {
			t.Fatalf("random delay %v ±%v outside [%v, %v]", l, j, el/10, 5*el)
		}
		seen[l] = true
		if l2, _ := rd.latency(caseRand(7, 1, i)); l2 != l {
			t.Fatalf("same seed drew %v then %v", l, l2)
		}
	}
	if len(seen) < 100 {
		t.Errorf("random delay drew only %d distinct values in 200", len(seen))
	}
	// Never beyond what an agent accepts.
	if l, _ := fixedDelay(50 * time.Second).latency(nil); l > wire.MaxLatency {
		t.Errorf("fixed delay %v over wire.MaxLatency", l)
	}
}

// Targets are drawn from the case's seeded source: the same seed picks the
// same quorum on the same cluster.
func TestQuorumTargetsFollowSeed(t *testing.T) {
	c, _ := fakeCluster(t, 5)
	pick := func(round, index int) []int {
		c.setRand(caseRand(99, round, index))
		m, err := quorum{}.pick(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if a, b := pick(2, 4), pick(2, 4); !slices.Equal(a, b) || len(a) != 3 {
		t.Errorf("quorum of 5 with the same seed: %v then %v", a, b)
	}
}

// A wrapper keeps what it wraps: an until-snapshot case over a case
// without load, with its own hold and stress checker, still runs without
// load, holds its way and judges its load.
func TestWrapperForwardsOptionalInterfaces(t *testing.T) {
	inner := noFail{stress: false}
	u := untilSnapshot{inner: inner, entries: 10}
	if u.Stress() {
		t.Error("Stress: the inner case runs without load")
	}
	if unwrap(u) != Case(inner) {
		t.Errorf("unwrap: %v", unwrap(u))
	}
	withLoad := untilSnapshot{inner: noFail{stress: true, budget: 0.3, qps: 10}}
	if !withLoad.Stress() || withLoad.StressChecker(stresser.Stats{Unexpected: 1}) == nil {
		t.Error("StressChecker: the inner case's is hidden")
	}
	// A fault case has none of them: the defaults apply.
	plain := untilSnapshot{inner: faultCase{sigkill, leader{}}}
	if !plain.Stress() || plain.StressChecker(stresser.Stats{}) != nil {
		t.Error("defaults of a plain fault case")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := plain.Hold(ctx, nil, time.Hour); err == nil {
		t.Error("the default hold ignored its context")
	}
}
