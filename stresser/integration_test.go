package stresser

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

// testConfig is a small load for a real cluster on a shared 2-core machine.
func testConfig(endpoints []string, names ...string) Config {
	cfg := DefaultConfig()
	cfg.Endpoints = endpoints
	cfg.Names = names
	cfg.QPS = 300
	cfg.Clients = 12
	cfg.KeySuffixRange = 2000
	// Large puts often enough to show up in a few seconds.
	cfg.KeyWeights.PutLarge = 0.05
	return cfg
}

func mustNew(t *testing.T, cfg Config) *Composite {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitFor polls cond until it holds, for at most 30 s: a loaded machine
// makes fixed sleeps too short, a condition only slower.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// liveSuccesses reads the running interval's successes so far, and how
// many operations have had one.
func liveSuccesses(s *Composite) (n int64, ops int) {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	for _, o := range s.rec.ops {
		n += o.Success
		if o.Success > 0 {
			ops++
		}
	}
	return n, ops
}

// settledRevision returns the cluster's revision once it has not moved for
// 300 ms: requests cut off by a pause or cancel may still commit, and a
// paused load must be judged after they have.
func settledRevision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	const quiet = 300 * time.Millisecond
	rev, since := revision(t, cli), time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for time.Since(since) < quiet {
		if time.Now().After(deadline) {
			t.Fatalf("revision still moving after 30s (now %d)", rev)
		}
		time.Sleep(50 * time.Millisecond)
		if r := revision(t, cli); r != rev {
			rev, since = r, time.Now()
		}
	}
	return rev
}

func revision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/stresser/probe")
	if err != nil {
		t.Fatalf("read revision: %v", err)
	}
	return resp.Header.Revision
}

// checkBelowRate fails if an interval sent more than the limiter allows:
// qps per second plus the one-request burst.
func checkBelowRate(t *testing.T, st Stats, qps int) {
	t.Helper()
	sent := st.Success + st.Failure + st.Canceled
	if limit := int64(float64(qps)*st.Duration.Seconds()) + 2; sent > limit {
		t.Errorf("%d requests in %v: more than %d/s allows (%d)", sent, st.Duration, qps, limit)
	}
}

// TestKeyStresserLifecycle runs the key stresser on a healthy cluster
// through Stress, Pause, Resume, context cancel and Close, and checks what
// reaches the cluster in each state and that no goroutine outlives Close.
func TestKeyStresserLifecycle(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ignore := goleak.IgnoreCurrent()
	cfg := testConfig(c.ClientURLs(), NameKeys)
	s := mustNew(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	if err := s.Stress(ctx); err != nil {
		t.Fatal(err)
	}
	// At least 2 s, and until a second's worth of requests has succeeded
	// with every operation among them: a loaded machine slows the load,
	// and a fixed window then sees too little.
	start := time.Now()
	waitFor(t, "a second's worth of requests, every op", func() bool {
		n, ops := liveSuccesses(s)
		return time.Since(start) >= 2*time.Second && n >= int64(cfg.QPS) && ops >= len(keyOpNames)
	})
	st := s.Pause()
	if st.Failure != 0 || st.Unexpected != 0 {
		t.Fatalf("healthy cluster: %d failures %v", st.Failure, st.Errors)
	}
	for _, op := range keyOpNames {
		if st.Ops[op].Success == 0 {
			t.Errorf("op %s never succeeded in %v: %+v", op, st.Duration, st.Ops)
		}
	}
	if st.Success < int64(cfg.QPS) {
		t.Errorf("only %d requests in %v at %d/s", st.Success, st.Duration, cfg.QPS)
	}
	checkBelowRate(t, st, cfg.QPS)
	if n, d := len(st.Series), st.Duration.Seconds(); n < int(d) || n > int(math.Ceil(d))+1 {
		t.Errorf("%v interval has %d seconds of series", st.Duration, n)
	}
	if st.Latency.Count != st.Success || st.Latency.P50 <= 0 || st.Latency.P99 < st.Latency.P50 || st.Latency.Max < st.Latency.P99 {
		t.Errorf("latency %+v", st.Latency)
	}
	if s.ModifiedKeys() < st.Ops["put"].Success {
		t.Errorf("ModifiedKeys %d < %d successful puts", s.ModifiedKeys(), st.Ops["put"].Success)
	}

	// Paused: nothing is sent. A request Pause cut off may already have
	// reached etcd and still commit (it is counted as canceled), so the
	// revision is taken once those have settled.
	cli := c.Client(t)
	rev := settledRevision(t, cli)
	modified := s.ModifiedKeys()
	time.Sleep(500 * time.Millisecond) // the window in which nothing may be sent
	if got := revision(t, cli); got != rev || s.ModifiedKeys() != modified {
		t.Fatalf("paused, yet revision %d -> %d, modified keys %d -> %d", rev, got, modified, s.ModifiedKeys())
	}

	// Resumed: load again, counted in a new interval.
	s.Resume()
	waitFor(t, "a write after Resume", func() bool { return s.ModifiedKeys() > modified })
	st2 := s.Pause()
	if st2.Success == 0 || !st2.Start.After(st.Start.Add(st.Duration)) {
		t.Fatalf("after Resume: %d successes, interval starting %v (previous ended %v)", st2.Success, st2.Start, st.Start.Add(st.Duration))
	}
	if got := revision(t, cli); got <= rev {
		t.Fatalf("resumed, yet revision stayed %d", rev)
	}

	// Quick Pause/Resume churn: every interval is its own, in order.
	prevEnd := st2.Start.Add(st2.Duration)
	for i := 0; i < 10; i++ {
		s.Resume()
		time.Sleep(50 * time.Millisecond)
		st := s.Pause()
		if st.Start.Before(prevEnd) || st.Failure != 0 {
			t.Fatalf("churn %d: interval from %v (previous ended %v), %d failures %v", i, st.Start, prevEnd, st.Failure, st.Errors)
		}
		prevEnd = st.Start.Add(st.Duration)
	}

	// The caller's context ends the load too.
	modified = s.ModifiedKeys()
	s.Resume()
	waitFor(t, "a write after the last Resume", func() bool { return s.ModifiedKeys() > modified })
	cancel()
	rev = settledRevision(t, cli)
	time.Sleep(500 * time.Millisecond) // the window in which nothing may be sent
	if got := revision(t, cli); got != rev {
		t.Fatalf("context canceled, yet revision %d -> %d", rev, got)
	}
	st3 := s.Close()
	if st3.Success == 0 || st3.Failure != 0 {
		t.Errorf("last interval: %d successes, %d failures %v", st3.Success, st3.Failure, st3.Errors)
	}
	// The test's own client is not the stresser's: ignore its goroutines.
	cli.Close()
	if err := goleak.Find(ignore); err != nil {
		t.Fatalf("goroutines left after Close: %v", err)
	}
}

// TestPauseCutsOffRequestsInFlight: requests hanging on a member that has
// lost quorum are cut off by Pause and counted as canceled, not as
// failures, and none of them spills into the next interval.
func TestPauseCutsOffRequestsInFlight(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cfg := testConfig([]string{c.Member(0).ClientURL}, NameKeys)
	cfg.RequestTimeout = time.Minute
	cfg.KeyWeights = KeyWeights{Put: 1}
	cfg.Clients = 5
	s := mustNew(t, cfg)
	for _, i := range []int{1, 2} {
		if err := c.Member(i).Kill(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Stress(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Without quorum member 0's puts hang (seen: every one of them) until
	// the request timeout, far beyond the Pause.
	time.Sleep(2500 * time.Millisecond)
	st := s.Pause()
	t.Logf("quorum lost: %d canceled, %d failed %v", st.Canceled, st.Failure, st.Errors)
	if st.Canceled == 0 {
		t.Fatalf("no request in flight at Pause: %+v", st)
	}
	if st.Unexpected != 0 || st.Errors[ClassDeadline] != 0 {
		t.Fatalf("cut-off requests counted as failures: %v", st.Errors)
	}
	for _, i := range []int{1, 2} {
		if err := c.Member(i).Restart(); err != nil {
			t.Fatal(err)
		}
	}
	s.Resume()
	time.Sleep(1500 * time.Millisecond)
	st = s.Close()
	if st.Success == 0 {
		t.Fatalf("no success after quorum came back: %+v", st)
	}
	if st.Unexpected != 0 || st.Errors[ClassDeadline] != 0 || st.Errors[ClassCanceled] != 0 {
		t.Fatalf("errors from before the pause in the next interval: %v", st.Errors)
	}
}

// TestStressersKeepGoingWhenMemberKilled kills a member under key and lease
// load: only expected errors, load goes on through and after the fault,
// and the lease checker passes once the member is back.
func TestStressersKeepGoingWhenMemberKilled(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cfg := testConfig(c.ClientURLs(), NameKeys, NameLease)
	// Requests stuck on a lost leader or a dead member end within 1 s.
	cfg.RequestTimeout = time.Second
	s := mustNew(t, cfg)
	if err := s.Stress(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	killed := time.Now()
	if err := c.Member(0).Kill(); err != nil {
		t.Fatal(err)
	}
	// An election (~1.2 s if member 0 led) and the request timeout, then
	// at least one whole second of load on the two survivors.
	time.Sleep(3500 * time.Millisecond)
	if err := c.Member(0).Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	time.Sleep(time.Second)
	st := s.Pause()

	if st.Unexpected != 0 {
		t.Fatalf("unexpected errors: %v", st.Errors)
	}
	if st.Failure == 0 {
		t.Errorf("a third of the clients lost their member, yet no failure: %+v", st.Ops)
	}
	var during, after int64
	for _, sec := range st.Series {
		switch {
		case sec.Unix >= killed.Unix()+2 && sec.Unix < restarted.Unix():
			during += sec.Success
		case sec.Unix > restarted.Unix():
			after += sec.Success
		}
	}
	if during == 0 || after == 0 {
		t.Errorf("successes while a member was down %d, after restart %d; series %+v", during, after, st.Series)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("lease check after the member came back: %v", err)
	}
}

// TestLeaseChecker runs the lease stresser on a healthy cluster: its checker
// passes, then fails when a live lease is revoked or a live lease's key is
// deleted behind its back, or a revoked lease turns out alive.
func TestLeaseChecker(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cfg := testConfig(c.ClientURLs(), NameLease)
	cfg.LeaseCount = 4
	cfg.KeysPerLease = 3
	s := mustNew(t, cfg)
	if err := s.Stress(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	st := s.Pause()
	for _, op := range []string{"lease-grant", "lease-put", "lease-keepalive", "lease-revoke"} {
		if st.Ops[op].Success == 0 {
			t.Errorf("%s never succeeded: %+v", op, st.Ops)
		}
	}
	if st.Failure != 0 {
		t.Fatalf("healthy cluster: failures %v", st.Errors)
	}
	ls := s.members[0].(*leaseStresser)
	ls.mu.Lock()
	nAlive, nShort := len(ls.alive), len(ls.short)
	nRevoked := len(ls.revoked)
	ls.mu.Unlock()
	if nAlive != cfg.LeaseCount || nShort == 0 || nRevoked == 0 {
		t.Fatalf("%d live leases (want %d), %d short ones, %d revoked", nAlive, cfg.LeaseCount, nShort, nRevoked)
	}
	if want := int64(cfg.KeysPerLease * (nAlive + nShort)); s.ModifiedKeys() < want {
		t.Errorf("ModifiedKeys %d, want at least %d", s.ModifiedKeys(), want)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("healthy cluster: %v", err)
	}
	ls.mu.Lock()
	if len(ls.short) != 0 || len(ls.revoked) != 0 {
		t.Errorf("verified leases not forgotten: %d short, %d revoked", len(ls.short), len(ls.revoked))
	}
	ls.mu.Unlock()

	cli := c.Client(t)
	ids := ls.aliveIDs()
	// A live lease's key deleted behind the stresser's back.
	ls.mu.Lock()
	key := ls.alive[ids[1]].keys[0]
	ls.mu.Unlock()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	err := s.Check(ctx)
	if err == nil || !strings.Contains(err.Error(), key+" is gone") {
		t.Fatalf("key of a live lease deleted: Check says %v", err)
	}
	// A live lease revoked behind its back.
	if _, err := cli.Revoke(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	err = s.Check(ctx)
	if err == nil || !strings.Contains(err.Error(), leaseKeyPrefix(ids[0])[len(leasePrefix):len(leasePrefix)+16]+": kept alive, but etcd says it is gone") {
		t.Fatalf("live lease revoked: Check says %v", err)
	}
	// A lease the stresser revoked that is in fact alive.
	ls.mu.Lock()
	l := ls.alive[ids[2]]
	delete(ls.alive, ids[2])
	ls.revoked = append(ls.revoked, l)
	ls.mu.Unlock()
	err = s.Check(ctx)
	if err == nil || !strings.Contains(err.Error(), "revoked lease") || !strings.Contains(err.Error(), "still alive") {
		t.Fatalf("revoked lease alive: Check says %v", err)
	}
	// A short lease that does not expire: Check waits TTL plus grace,
	// then fails.
	ls.mu.Lock()
	l = ls.alive[ids[3]]
	delete(ls.alive, ids[3])
	ls.short = append(ls.short, &leaseRecord{id: l.id, ttl: time.Second, granted: l.granted, keys: l.keys})
	ls.expiryGrace = 200 * time.Millisecond
	ls.mu.Unlock()
	start := time.Now()
	err = s.Check(ctx)
	if err == nil || !strings.Contains(err.Error(), "short-TTL lease") || !strings.Contains(err.Error(), "still alive") {
		t.Fatalf("short lease alive: Check says %v", err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("Check gave the short lease only %v to expire", waited)
	}
}
