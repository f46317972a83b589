package stresser

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/etcd-functional/functional/checker/watch"
	"github.com/etcd-functional/functional/history"
	"github.com/etcd-functional/functional/internal/etcdtest"
)

// TestWatchTombstoneCompaction is etcd #18089's reproduction: put k three
// times, delete it at r, put it again, compact at r, watch k from r. A
// correct etcd (v3.6.16) starts the watch with the delete at r; v3.5.15
// starts it with the put after, which the checker must call a
// "resumable" and "reliable" failure. Run it on another release with
// ETCD_BIN=/path/to/etcd.
func TestWatchTombstoneCompaction(t *testing.T) {
	c := etcdtest.StartCluster(t, 1)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	ts, err := CompactAtTombstone(ctx, cli, TombstoneKey)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("compacted at the delete's revision %d; the watch from it saw:", ts.Revision)
	for _, r := range ts.Stream.Responses {
		t.Logf("  revision %d created=%v progress=%v events=%v", r.Revision, r.Created, r.ProgressNotify, r.Events)
	}
	res := watch.Check([]history.WatchStream{ts.Stream}, ts.Truth)
	if res.Verdict != watch.Pass {
		t.Fatalf("watch check %s:\n%s", res.Verdict, strings.Join(res.Errors, "\n"))
	}
	if len(ts.Stream.Responses) == 0 {
		t.Fatal("the stream recorded nothing")
	}
	// The check passing must mean the delete was seen, not that nothing
	// was looked at.
	var first *history.WatchEvent
	for _, r := range ts.Stream.Responses {
		if len(r.Events) > 0 {
			first = &r.Events[0]
			break
		}
	}
	if first == nil || first.Type != history.WatchDelete || first.ModRevision != ts.Revision {
		t.Fatalf("watch from %d starts with %v, want the delete at %d", ts.Revision, first, ts.Revision)
	}
}

// TestWatchersUnderLoadAndKill records every watcher over a short load
// during which one member is killed and restarted, checks the streams
// against the ground truth, and reports what recording and checking cost.
func TestWatchersUnderLoadAndKill(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ignore := goleak.IgnoreCurrent()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.ClientURLs()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A compaction on a tombstone first, as the previous case would have
	// left it: one watcher then starts exactly at it.
	pinned, err := clientv3.New(clientv3.Config{Endpoints: c.ClientURLs()[:1]})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := CompactAtTombstone(ctx, pinned, TombstoneKey)
	pinned.Close()
	if err != nil {
		t.Fatal(err)
	}

	load := mustNew(t, testConfig(c.ClientURLs(), NameKeys, NameLease))
	if err := load.Stress(ctx); err != nil {
		t.Fatal(err)
	}
	wcfg := DefaultWatchConfig()
	wcfg.Endpoints = c.ClientURLs()
	// Half of the test load's 2000 keys: enough events to matter.
	wcfg.Prefix = keyPrefix + "0"
	wcfg.CompactRevision = ts.Revision
	wcfg.FutureRevisions = 200
	w, err := StartWatchers(ctx, wcfg)
	if err != nil {
		t.Fatal(err)
	}
	start := revision(t, cli)
	waitRevision(t, ctx, cli, start+300)
	if err := c.Member(1).Kill(); err != nil {
		t.Fatal(err)
	}
	waitRevision(t, ctx, cli, start+900)
	if err := c.Member(1).Restart(); err != nil {
		t.Fatal(err)
	}
	waitRevision(t, ctx, cli, start+1500)
	st := load.Close()
	t.Logf("load beside the watchers: %d requests in %v (%.0f/s of %d asked), %d failed, p99 %v",
		st.Success, st.Duration.Round(time.Millisecond), float64(st.Success)/st.Duration.Seconds(), testConfig(nil).QPS, st.Failure, st.Latency.P99)

	if err := w.WaitCaughtUp(ctx, revision(t, cli)); err != nil {
		t.Fatal(err)
	}
	streams := w.Collect()
	truth, err := WatchTruth(ctx, cli, wcfg.Prefix, w.FirstRevision(), 0, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	// The watchers from the compaction revision are checked against the
	// tombstone's writes too: the truth watch starts there as well.
	truth = truth.WithWrites(ts.Truth.Events)
	res := watch.Check(streams, truth)
	if res.Verdict != watch.Pass {
		t.Fatalf("watch check %s:\n%s", res.Verdict, strings.Join(res.Errors, "\n"))
	}
	if len(streams) != 2*c.Size()+4 {
		t.Errorf("%d streams, want %d", len(streams), 2*c.Size()+4)
	}
	for _, s := range streams {
		var progress, created int
		for _, r := range s.Responses {
			if r.ProgressNotify {
				progress++
			}
			if r.Created {
				created++
			}
		}
		t.Logf("%-20s %-24s from %5d: %5d events, %3d bookmarks, dropped %d %s",
			s.Watcher, s.Member, s.Request.Revision, s.Events(), progress, s.Dropped, s.End)
		if created != 1 || progress == 0 || s.Events() == 0 {
			t.Errorf("%s: %d created, %d progress notifications, %d events; want 1, some, some", s.Watcher, created, progress, s.Events())
		}
	}
	b, _ := json.Marshal(streams)
	t.Logf("checked %d streams, %d events against %d truth events (revisions %d..%d) in %v; streams as JSON: %d KiB",
		res.Streams, res.Events, len(truth.Events), truth.From, truth.To, res.Duration, len(b)/1024)
	t.Logf("streams hold %d KiB of heap", heapOf(func() { streams = nil })/1024)
	cli.Close()
	// The restart of member 1 leaves etcdtest's own goroutines: its
	// process waiter and its health probe's idle HTTP connection.
	if err := goleak.Find(ignore,
		goleak.IgnoreAnyFunction("github.com/etcd-functional/functional/internal/etcdtest.(*Member).launch.func1"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop")); err != nil {
		t.Fatalf("goroutines left after Collect: %v", err)
	}
}

// heapOf returns how much live heap drop frees.
func heapOf(drop func()) int64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	drop()
	runtime.GC()
	runtime.ReadMemStats(&after)
	return int64(before.HeapAlloc) - int64(after.HeapAlloc)
}

// TestWatchersCapEvents keeps at most MaxEvents per stream, at a response
// boundary, counts the rest as dropped, and what it kept still checks.
func TestWatchersCapEvents(t *testing.T) {
	c := etcdtest.StartCluster(t, 1)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := DefaultWatchConfig()
	cfg.Endpoints = c.ClientURLs()
	cfg.Prefix = "/cap/"
	cfg.MaxEvents = 20
	cfg.FutureRevisions = 1
	w, err := StartWatchers(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Collect()
	// 20 revisions of 3 events each.
	var last int64
	for i := range 20 {
		resp, err := cli.Txn(ctx).Then(
			clientv3.OpPut("/cap/a", fmt.Sprint(i)), clientv3.OpPut("/cap/b", fmt.Sprint(i)), clientv3.OpPut("/cap/c", fmt.Sprint(i)),
		).Commit()
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	if err := w.WaitCaughtUp(ctx, last); err != nil {
		t.Fatal(err)
	}
	streams := w.Collect()
	for _, s := range streams {
		if n := s.Events(); n > cfg.MaxEvents || n%3 != 0 || s.Dropped == 0 {
			t.Errorf("%s: kept %d events (cap %d), dropped %d: want at most the cap, whole revisions, some dropped", s.Watcher, n, cfg.MaxEvents, s.Dropped)
		}
	}
	truth, err := WatchTruth(ctx, cli, cfg.Prefix, w.FirstRevision(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if res := watch.Check(streams, truth); res.Verdict != watch.Pass || res.Dropped == 0 {
		t.Fatalf("capped streams: %s, %d dropped: %s", res.Verdict, res.Dropped, strings.Join(res.Errors, "\n"))
	}
	if _, err := WatchTruth(ctx, cli, cfg.Prefix, w.FirstRevision(), 0, 10); err == nil || !strings.Contains(err.Error(), "more than 10 events") {
		t.Fatalf("a truth over its cap: %v, want an error", err)
	}
}

// waitRevision waits until the cluster's revision reaches rev.
func waitRevision(t *testing.T, ctx context.Context, cli *clientv3.Client, rev int64) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := cli.Get(rctx, "/stresser/probe")
		cancel()
		if err == nil && resp.Header.Revision >= rev {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("revision did not reach %d: %v (last error %v)", rev, ctx.Err(), err)
		case <-tick.C:
		}
	}
}
