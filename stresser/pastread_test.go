package stresser

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/internal/etcdtest"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// pastTrafficConfig is key load rich in reads of the past: gets, ranges
// and txns only (txns put one key each in their past-read form), so that a
// few seconds hold hundreds of them.
func pastTrafficConfig(endpoints []string) Config {
	cfg := testConfig(endpoints, NameKeys)
	cfg.KeySuffixRange = 50
	cfg.KeyWeights = KeyWeights{Put: 0.3, Get: 0.2, Range: 0.2, Txn: 0.3}
	cfg.KeyTxnOps = 2
	return cfg
}

// compactNow compacts the cluster at its current revision, so that every
// read of an older revision meets "compacted".
func compactNow(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rev := revision(t, cli)
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("compact at %d: %v", rev, err)
	}
	return rev
}

// TestKeyStresserReadsThePast runs the key stresser across a compaction:
// its gets, ranges and txns read old revisions, some of them compacted,
// which is an expected error; with SkipPastReads none does.
func TestKeyStresserReadsThePast(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cli := c.Client(t)
	cfg := pastTrafficConfig(c.ClientURLs())
	s := mustNew(t, cfg)
	if err := s.Stress(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	first := s.Pause()
	compacted := compactNow(t, cli)
	s.Resume()
	time.Sleep(1500 * time.Millisecond)
	second := s.Pause()

	for _, op := range []string{"get-past", "range-past", "txn-past"} {
		if first.Ops[op].Success == 0 {
			t.Errorf("before compaction: %s never succeeded: %+v", op, first.Ops)
		}
		if second.Ops[op].Failure == 0 {
			t.Errorf("after compaction at %d: no %s met an error, so none read below it: %+v", compacted, op, second.Ops)
		}
	}
	if first.Failure != 0 {
		t.Errorf("before compaction: failures %v", first.Errors)
	}
	if second.Errors[ClassCompacted] == 0 || second.Unexpected != 0 {
		t.Errorf("after compaction: errors %v, %d unexpected; want compacted ones only", second.Errors, second.Unexpected)
	}
	if s.members[0].(*keyStresser).latest.Load() <= compacted {
		t.Errorf("latest revision seen %d, not past the compaction at %d", s.members[0].(*keyStresser).latest.Load(), compacted)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Check(ctx); err != nil {
		t.Errorf("compacted reads are expected, yet Check says %v", err)
	}

	// Leaving the traffic out leaves out exactly it.
	cfg.SkipPastReads = true
	cfg.Seed = 2
	s2 := mustNew(t, cfg)
	if err := s2.Stress(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	st := s2.Pause()
	for op, o := range st.Ops {
		if strings.HasSuffix(op, "-past") {
			t.Errorf("SkipPastReads: %s ran %+v", op, o)
		}
	}
	for _, op := range []string{"get", "range", "txn"} {
		if st.Ops[op].Success == 0 {
			t.Errorf("SkipPastReads: %s never succeeded: %+v", op, st.Ops)
		}
	}
	if st.Failure != 0 {
		t.Errorf("SkipPastReads: failures %v", st.Errors)
	}
}

// TestLeaseCheckerFailsOnLostKeptAliveLease: a lease the stresser keeps
// alive that etcd reports missing long before its TTL fails the lease
// check (before, the stresser quietly stopped tracking it), and the
// keepalive's error is one no fault explains.
func TestLeaseCheckerFailsOnLostKeptAliveLease(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cfg := testConfig(c.ClientURLs(), NameLease)
	cfg.LeaseCount = 2
	cfg.KeysPerLease = 1
	cfg.LeaseKeepAliveInterval = 200 * time.Millisecond
	s := mustNew(t, cfg)
	if err := s.Stress(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	s.Pause()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("healthy cluster: %v", err)
	}
	ls := s.members[0].(*leaseStresser)
	ids := ls.aliveIDs()
	if len(ids) == 0 {
		t.Fatal("no live lease")
	}
	// Revoked behind the stresser's back: its next keepalive finds it gone.
	if _, err := c.Client(t).Revoke(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	s.Resume()
	time.Sleep(time.Second)
	s.Pause()
	err := s.Check(ctx)
	lost := fmt.Sprintf("lease %016x: kept alive, but a keepalive", int64(ids[0]))
	if err == nil || !strings.Contains(err.Error(), lost) {
		t.Fatalf("kept-alive lease lost: Check says %v; want %q", err, lost)
	}
	if !strings.Contains(err.Error(), "lease-keepalive: "+rpctypes.ErrLeaseNotFound.Error()) {
		t.Errorf("the keepalive's error is not reported as unexpected: %v", err)
	}
	// Reported once: the next check, with nothing new lost, passes.
	if err := s.Check(ctx); err != nil {
		t.Fatalf("second Check after the loss was reported: %v", err)
	}
}
