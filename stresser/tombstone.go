package stresser

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-functional/functional/history"
)

// Tombstone is what CompactAtTombstone did and saw.
type Tombstone struct {
	Key string
	// Revision is the revision of the delete; the cluster is compacted at
	// it and the watch starts from it.
	Revision int64
	// Stream is the watch on Key from Revision.
	Stream history.WatchStream
	// Truth is what CompactAtTombstone wrote to Key, the ground truth for
	// Stream, provided nobody else writes Key. Add its events to the next
	// case's ground truth (WatchTruth.WithWrites): a watch from Revision,
	// the ground-truth watch too, is what etcd #18089 got wrong.
	Truth history.WatchTruth
}

// TombstoneKey is a key for CompactAtTombstone that no stresser writes
// ("-" sorts before every digit, so no range of the key stresser holds it),
// inside DefaultWatchConfig's prefix.
const TombstoneKey = keyPrefix + "00-tombstone"

// tombstoneTimeout bounds CompactAtTombstone when ctx has no deadline.
const tombstoneTimeout = 30 * time.Second

// CompactAtTombstone compacts the cluster at a revision that is a delete,
// on purpose, so the window of etcd #18089 (a watch from the compaction
// revision lost the delete at it) is exercised every time it is called
// rather than by luck: it puts key three times, deletes it at revision r,
// puts it again, compacts at r, and watches key from r until the watch has
// passed the last put. Check Tombstone.Stream against Tombstone.Truth:
// a correct etcd starts the stream with the delete at r.
//
// key must be written by nobody else. The compaction is physical on the
// member that served it; give a client pinned to one member so the watch
// is served by that member too. Compacting at r makes every revision
// before r unreadable: collect the ground truth of a case before calling
// it.
func CompactAtTombstone(ctx context.Context, cli *clientv3.Client, key string) (Tombstone, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, tombstoneTimeout)
		defer cancel()
	}
	ts := Tombstone{Key: key}
	fail := func(format string, args ...any) (Tombstone, error) {
		return ts, fmt.Errorf("stresser: compact at a tombstone of %q: "+format, append([]any{key}, args...)...)
	}
	// Each write carries the key's state before it, as a watch with
	// PrevKV would, so the writes can join a truth that has PrevKV.
	var written []history.WatchEvent
	var create, version int64
	var prev *history.WatchKeyValue
	for i := range 3 {
		value := fmt.Sprintf("tombstone-%d-%d", time.Now().UnixNano(), i)
		resp, err := cli.Put(ctx, key, value, clientv3.WithPrevKV())
		if err != nil {
			return fail("put %d: %w", i+1, err)
		}
		rev := resp.Header.Revision
		switch {
		case i > 0:
			version++
		case resp.PrevKv != nil:
			p := resp.PrevKv
			prev = &history.WatchKeyValue{Value: recordedValue(p.Value), ModRevision: p.ModRevision, CreateRevision: p.CreateRevision, Version: p.Version}
			create, version = p.CreateRevision, p.Version+1
		default:
			create, version = rev, 1
		}
		e := history.WatchEvent{Type: history.WatchPut, Key: key, Value: recordedValue([]byte(value)),
			ModRevision: rev, CreateRevision: create, Version: version, PrevKV: prev}
		written = append(written, e)
		prev = &history.WatchKeyValue{Value: e.Value, ModRevision: rev, CreateRevision: create, Version: version}
	}
	del, err := cli.Delete(ctx, key)
	if err != nil {
		return fail("delete: %w", err)
	}
	if del.Deleted != 1 {
		return fail("delete at revision %d deleted %d keys, want 1: is someone else writing it?", del.Header.Revision, del.Deleted)
	}
	ts.Revision = del.Header.Revision
	written = append(written, history.WatchEvent{Type: history.WatchDelete, Key: key, ModRevision: ts.Revision, PrevKV: prev})
	value := fmt.Sprintf("tombstone-%d-after", time.Now().UnixNano())
	put, err := cli.Put(ctx, key, value)
	if err != nil {
		return fail("put after the delete at %d: %w", ts.Revision, err)
	}
	last := put.Header.Revision
	written = append(written, history.WatchEvent{Type: history.WatchPut, Key: key, Value: recordedValue([]byte(value)),
		ModRevision: last, CreateRevision: last, Version: 1})
	if _, err := cli.Compact(ctx, ts.Revision, clientv3.WithCompactPhysical()); err != nil {
		return fail("compact at the delete's revision %d: %w", ts.Revision, err)
	}
	ts.Truth = history.WatchTruth{Key: key, From: ts.Revision, To: last, Events: written, PrevKV: true}

	member := history.WatchMemberCluster
	if eps := cli.Endpoints(); len(eps) == 1 {
		member = eps[0]
	}
	ts.Stream = history.WatchStream{
		Watcher: fmt.Sprintf("tombstone@%d", ts.Revision), Member: member,
		Request: history.WatchRequest{Key: key, Revision: ts.Revision, ProgressNotify: true, PrevKV: true},
	}
	// The watch has told all it will once it sent the last put, or a
	// progress notification at or past it (then the put is missing).
	passed := func(r history.WatchResponse) bool {
		return (r.ProgressNotify && r.Revision >= last) || (len(r.Events) > 0 && r.Events[len(r.Events)-1].ModRevision >= last)
	}
	end := streamRecorder{interval: 100 * time.Millisecond, maxEvents: 100, stop: passed}.record(ctx, cli, &ts.Stream)
	switch {
	case end != "":
		return fail("watch from revision %d: %s", ts.Revision, end)
	case ctx.Err() != nil:
		return fail("watch from revision %d did not reach revision %d: %w", ts.Revision, last, ctx.Err())
	}
	return ts, nil
}
