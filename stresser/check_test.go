package stresser

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// pausedNop returns a Composite of the nop stresser that has run one
// interval and is paused, ready for Check.
func pausedNop(t *testing.T) *Composite {
	t.Helper()
	cfg := validConfig()
	cfg.Names = []string{NameNop}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Stress(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Pause()
	return s
}

// TestCheckFailsOnUnexpectedErrors: an error no fault explains fails the
// next Check, naming the operation, the error and how often; expected
// errors do not; and what one Check reported is not reported again.
func TestCheckFailsOnUnexpectedErrors(t *testing.T) {
	s := pausedNop(t)
	ctx := context.Background()
	s.rec.finish(ctx, "put", "m0", time.Now(), rpctypes.ErrNoLeader)
	s.rec.finish(ctx, "get-past", "m0", time.Now(), rpctypes.ErrCompacted)
	if err := s.Check(ctx); err != nil {
		t.Fatalf("only expected errors: Check says %v", err)
	}
	for range 3 {
		s.rec.finish(ctx, "txn", "m1", time.Now(), rpctypes.ErrDuplicateKey)
	}
	s.rec.finish(ctx, "get-past", "m2", time.Now(), rpctypes.ErrFutureRev)
	err := s.Check(ctx)
	if err == nil {
		t.Fatal("4 unexpected errors: Check passed")
	}
	for _, want := range []string{"4 unexpected errors", "txn: " + rpctypes.ErrDuplicateKey.Error() + " (3×)",
		"get-past: " + rpctypes.ErrFutureRev.Error() + " (1×)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Check error %q lacks %q", err, want)
		}
	}
	if err := s.Check(ctx); err != nil {
		t.Fatalf("the second Check reports the same errors again: %v", err)
	}
}

// TestCheckNamesFewKindsOfUnexpectedErrors: a storm of distinct messages
// is summed up, not listed.
func TestCheckNamesFewKindsOfUnexpectedErrors(t *testing.T) {
	s := pausedNop(t)
	ctx := context.Background()
	for i := range 8 {
		s.rec.finish(ctx, "put", "m0", time.Now(), fmt.Errorf("odd failure %d", i))
	}
	err := s.Check(ctx)
	if err == nil {
		t.Fatal("8 unexpected errors: Check passed")
	}
	if got := strings.Count(err.Error(), "odd failure"); got != maxUnexpectedKinds {
		t.Errorf("Check names %d kinds, want %d: %v", got, maxUnexpectedKinds, err)
	}
	if !strings.Contains(err.Error(), "and 3 of other kinds") {
		t.Errorf("Check error %q does not count the kinds left out", err)
	}
}

// TestUnexpectedErrorsSurviveIntervals: the errors of every interval since
// the last Check count, not only the last interval's.
func TestUnexpectedErrorsSurviveIntervals(t *testing.T) {
	s := pausedNop(t)
	s.rec.finish(context.Background(), "put", "m0", time.Now(), rpctypes.ErrDuplicateKey)
	s.Resume()
	s.Pause()
	if err := s.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "1 unexpected errors") {
		t.Fatalf("error of an earlier interval: Check says %v", err)
	}
}

func TestCompareLeaseViews(t *testing.T) {
	all := func(ids ...clientv3.LeaseID) map[clientv3.LeaseID]bool {
		m := map[clientv3.LeaseID]bool{}
		for _, id := range ids {
			m[id] = true
		}
		return m
	}
	alive, gone := []clientv3.LeaseID{1, 2}, []clientv3.LeaseID{7}
	good := []memberLeases{{member: "m0", ids: all(1, 2)}, {member: "m1", ids: all(1, 2, 99)}}
	if err := compareLeaseViews(good, alive, gone); err != nil {
		t.Fatalf("every member agrees (an unknown lease 99 is not ours to judge): %v", err)
	}
	for _, tc := range []struct {
		name  string
		views []memberLeases
		want  []string
	}{
		{"follower lacks a live lease", []memberLeases{{member: "m0", ids: all(1, 2)}, {member: "m1", ids: all(1)}},
			[]string{"member m1", "lacks 1 leases", "0000000000000002"}},
		{"follower keeps a revoked lease", []memberLeases{{member: "m0", ids: all(1, 2)}, {member: "m2", ids: all(1, 2, 7)}},
			[]string{"member m2", "still holds 1 leases", "0000000000000007"}},
		{"member cannot list", []memberLeases{{member: "m0", err: rpctypes.ErrNoLeader}},
			[]string{"member m0", "list its leases", rpctypes.ErrNoLeader.Error()}},
	} {
		err := compareLeaseViews(tc.views, alive, gone)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, w)
			}
		}
		if strings.Contains(err.Error(), "member m0: its own") {
			t.Errorf("%s: the agreeing member m0 is blamed: %v", tc.name, err)
		}
	}
}

func TestLostEarly(t *testing.T) {
	s := &leaseStresser{cfg: validConfig()} // RequestTimeout 5s
	l := &leaseRecord{ttl: 120 * time.Second}
	for _, tc := range []struct {
		since time.Duration
		want  bool
	}{
		{0, true}, {time.Second, true}, {109 * time.Second, true},
		// Within two request timeouts of the deadline etcd may rightly
		// have expired it: a slow renewal and a slow keepalive.
		{110 * time.Second, false}, {130 * time.Second, false},
	} {
		if got := s.lostEarly(l, tc.since); got != tc.want {
			t.Errorf("lostEarly(TTL 120s, %v after renewal) = %v; want %v", tc.since, got, tc.want)
		}
	}
}

// TestPastRevStaysInWindow: past reads ask for revisions in
// [max(1, latest-window), latest], reach the window's bottom, and are left
// out entirely with SkipPastReads or before any revision is known.
func TestPastRevStaysInWindow(t *testing.T) {
	cfg := validConfig()
	cfg.PastReadWindow = 100
	s := newKeyStresser(cfg, nil, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	if rev := s.pastRev(rng, 1); rev != 0 {
		t.Fatalf("no revision seen yet: pastRev = %d, want 0 (a read of the present)", rev)
	}
	for _, latest := range []int64{1, 50, 1000} {
		s.latest.Store(latest)
		lo := max(1, latest-cfg.PastReadWindow)
		minSeen, maxSeen := latest, int64(0)
		for range 2000 {
			rev := s.pastRev(rng, 1)
			if rev < lo || rev > latest {
				t.Fatalf("latest %d: pastRev = %d, outside [%d, %d]", latest, rev, lo, latest)
			}
			minSeen, maxSeen = min(minSeen, rev), max(maxSeen, rev)
		}
		if minSeen != lo || maxSeen != latest {
			t.Errorf("latest %d: 2000 draws spanned [%d, %d], want [%d, %d]", latest, minSeen, maxSeen, lo, latest)
		}
	}
	past := 0
	for range 1000 {
		if s.pastRev(rng, pastReadEvery) > 0 {
			past++
		}
	}
	if past < 400 || past > 600 {
		t.Errorf("%d of 1000 reads went to the past, want about 1 in %d", past, pastReadEvery)
	}
	s.cfg.SkipPastReads = true
	for range 100 {
		if rev := s.pastRev(rng, 1); rev != 0 {
			t.Fatalf("SkipPastReads: pastRev = %d, want 0", rev)
		}
	}
}
