package stresser

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/etcd-functional/functional/history"
)

// WatchConfig says which watchers StartWatchers runs and how much they keep.
// Start from DefaultWatchConfig.
type WatchConfig struct {
	// Endpoints are the members' client URLs. Every member gets its own
	// watchers; the cluster-wide ones balance over all and reconnect to
	// another member when theirs fails.
	Endpoints []string
	// Prefix is the key prefix every watcher watches. Every event costs
	// each watcher's stream, and PrevKV a read in etcd, so the default
	// watches a slice of the key stresser's keys, not all of them.
	Prefix string
	// PastRevisions is how far before the current revision the "past"
	// watchers start (never before CompactRevision).
	PastRevisions int64
	// FutureRevisions is how far after the current revision the "future"
	// watcher starts.
	FutureRevisions int64
	// CompactRevision, if > 0, is the cluster's last compaction revision:
	// one watcher starts exactly there, where etcd #18089 lost a delete.
	CompactRevision int64
	// ProgressInterval is how often each watcher asks for a progress
	// notification (RequestProgress).
	ProgressInterval time.Duration
	// MaxEvents caps the events recorded per stream; later ones are
	// counted as dropped. An event takes about 400 bytes (keys and
	// values are shared between streams; a value longer than 64 bytes is
	// kept as a digest).
	MaxEvents int
	// MaxRestarts bounds how often one watcher opens a new stream after
	// its stream ended without being asked to (e.g. canceled by a
	// compaction).
	MaxRestarts int
	// RequestTimeout bounds the requests StartWatchers makes itself.
	RequestTimeout time.Duration
}

// DefaultWatchConfig watches the key stresser's keys that begin with "00":
// suffixes 0..9999, 4% of the default 250000, about 150 events a second at
// the default load. Endpoints must be set.
func DefaultWatchConfig() WatchConfig {
	return WatchConfig{
		Prefix:           keyPrefix + "00",
		PastRevisions:    100,
		FutureRevisions:  50,
		ProgressInterval: 250 * time.Millisecond,
		MaxEvents:        50000,
		MaxRestarts:      5,
		RequestTimeout:   5 * time.Second,
	}
}

// Validate reports every bad field of c at once.
func (c WatchConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(c.Endpoints) == 0 {
		bad("stresser: WatchConfig.Endpoints: none given")
	}
	for _, ep := range c.Endpoints {
		if !validEndpoint(ep) {
			bad("stresser: WatchConfig.Endpoints: %q is not a client endpoint", ep)
		}
	}
	if c.Prefix == "" {
		bad("stresser: WatchConfig.Prefix: empty; give the key prefix to watch")
	}
	if c.PastRevisions < 0 || c.FutureRevisions < 0 || c.CompactRevision < 0 {
		bad("stresser: WatchConfig: PastRevisions %d, FutureRevisions %d, CompactRevision %d; none may be negative",
			c.PastRevisions, c.FutureRevisions, c.CompactRevision)
	}
	if c.ProgressInterval <= 0 {
		bad("stresser: WatchConfig.ProgressInterval: %v; must be > 0", c.ProgressInterval)
	}
	if c.MaxEvents <= 0 {
		bad("stresser: WatchConfig.MaxEvents: %d; must be > 0", c.MaxEvents)
	}
	if c.MaxRestarts < 0 {
		bad("stresser: WatchConfig.MaxRestarts: %d; must be >= 0", c.MaxRestarts)
	}
	if c.RequestTimeout <= 0 {
		bad("stresser: WatchConfig.RequestTimeout: %v; must be > 0", c.RequestTimeout)
	}
	return errors.Join(errs...)
}

// Watchers records watch streams on every member and across the cluster
// until Collect. A case uses them like this (errors handled, elided):
//
//	wcfg := stresser.DefaultWatchConfig()
//	wcfg.Endpoints = endpoints
//	wcfg.CompactRevision = lastCompaction // 0 if none yet
//	w, _ := stresser.StartWatchers(ctx, wcfg) // before the fault
//	// ... inject, recover, wait until healthy ...
//	_ = w.WaitCaughtUp(ctx, currentRevision) // bounded by ctx
//	streams := w.Collect()
//	truth, _ := stresser.WatchTruth(ctx, cli, wcfg.Prefix, w.FirstRevision(), 0, maxEvents)
//	truth = truth.WithWrites(lastTombstone.Truth.Events) // if it compacted on one
//	res := watch.Check(streams, truth) // save streams and truth on fail
//	// Then compact, now and then on a tombstone:
//	ts, _ := stresser.CompactAtTombstone(ctx, pinnedCli, stresser.TombstoneKey)
//	tres := watch.Check([]history.WatchStream{ts.Stream}, ts.Truth)
//	lastCompaction, lastTombstone = ts.Revision, ts
//
// The ground truth must be watched before anything compacts past
// FirstRevision.
type Watchers struct {
	cfg    WatchConfig
	conns  *conns
	cancel context.CancelFunc
	wg     sync.WaitGroup
	first  int64
	specs  []*watcherSpec

	mu      sync.Mutex
	streams []*history.WatchStream // each written only by its watcher goroutine until Collect
	done    bool
}

type watcherSpec struct {
	id     string
	member string
	cli    *clientv3.Client
	rev    int64
	prevKV bool
	seen   atomic.Int64 // highest revision any of its streams has seen
}

// StartWatchers connects and starts the watchers; it returns once they are
// started, not once etcd has confirmed them (their Created responses say
// when). The watchers run until Collect or the end of ctx.
//
// Per member: one from now, one from PastRevisions back (with PrevKV).
// Cluster-wide, with PrevKV: one from now, one from the past, one from
// FutureRevisions ahead, and one from CompactRevision if set.
func StartWatchers(ctx context.Context, cfg WatchConfig) (*Watchers, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cs, err := dial(cfg.Endpoints)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
	resp, err := cs.all.Get(rctx, cfg.Prefix, clientv3.WithCountOnly())
	cancel()
	if err != nil {
		cs.close()
		return nil, fmt.Errorf("stresser: read the current revision to start watchers from: %w", err)
	}
	cur := resp.Header.Revision
	past := max(cur-cfg.PastRevisions, cfg.CompactRevision, 1)
	var specs []*watcherSpec
	for i, ep := range cfg.Endpoints {
		cli := cs.perEndpoint[i]
		specs = append(specs,
			&watcherSpec{id: fmt.Sprintf("m%d/current", i), member: ep, cli: cli},
			&watcherSpec{id: fmt.Sprintf("m%d/past", i), member: ep, cli: cli, rev: past, prevKV: true})
	}
	specs = append(specs,
		&watcherSpec{id: "cluster/current", member: history.WatchMemberCluster, cli: cs.all, prevKV: true},
		&watcherSpec{id: "cluster/past", member: history.WatchMemberCluster, cli: cs.all, rev: past, prevKV: true},
		&watcherSpec{id: "cluster/future", member: history.WatchMemberCluster, cli: cs.all, rev: cur + max(cfg.FutureRevisions, 1), prevKV: true})
	first := past
	if cfg.CompactRevision > 0 {
		specs = append(specs, &watcherSpec{id: "cluster/compacted", member: history.WatchMemberCluster, cli: cs.all, rev: cfg.CompactRevision, prevKV: true})
		first = min(first, cfg.CompactRevision)
	}
	wctx, wcancel := context.WithCancel(ctx)
	w := &Watchers{cfg: cfg, conns: cs, cancel: wcancel, first: first, specs: specs}
	for _, sp := range specs {
		// Nothing before its start revision is a watcher's to see (and a
		// watcher of the future gets no progress notification until the
		// cluster reaches its start).
		sp.seen.Store(max(sp.rev-1, 0))
		w.wg.Go(func() { w.run(wctx, sp) })
	}
	return w, nil
}

// FirstRevision is the lowest revision any stream may start from: the
// ground truth must be watched from it (or earlier).
func (w *Watchers) FirstRevision() int64 { return w.first }

// WaitCaughtUp waits until every watcher has seen revision rev, in an event
// or a progress notification, so that streams collected next cover
// everything up to rev. Call it after the fault has healed, with the
// current revision. It returns an error naming the watchers that have not
// caught up when ctx ends.
func (w *Watchers) WaitCaughtUp(ctx context.Context, rev int64) error {
	tick := time.NewTicker(max(w.cfg.ProgressInterval/2, time.Millisecond))
	defer tick.Stop()
	for {
		var behind []string
		for _, sp := range w.specs {
			if seen := sp.seen.Load(); seen < rev {
				behind = append(behind, fmt.Sprintf("%s at %d", sp.id, seen))
			}
		}
		if len(behind) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stresser: watchers behind revision %d: %s: %w", rev, strings.Join(behind, ", "), ctx.Err())
		case <-tick.C:
		}
	}
}

// Collect stops every watcher, closes the clients and returns the streams
// in watcher order. Every goroutine of w has ended when it returns; a
// second call returns nil.
func (w *Watchers) Collect() []history.WatchStream {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return nil
	}
	w.done = true
	if err := w.conns.close(); err != nil {
		plog.Warningf("close watch clients: %v", err)
	}
	out := make([]history.WatchStream, len(w.streams))
	for i, s := range w.streams {
		out[i] = *s
	}
	slices.SortStableFunc(out, func(a, b history.WatchStream) int { return cmp.Compare(a.Watcher, b.Watcher) })
	w.streams = nil
	return out
}

// run keeps one watcher recording: a stream that ends before ctx does is
// followed by a new one from the current revision, at most MaxRestarts
// times.
func (w *Watchers) run(ctx context.Context, sp *watcherSpec) {
	rev := sp.rev
	for n := 0; n <= w.cfg.MaxRestarts; n++ {
		req := history.WatchRequest{
			Key: w.cfg.Prefix, RangeEnd: clientv3.GetPrefixRangeEnd(w.cfg.Prefix),
			Revision: rev, ProgressNotify: true, PrevKV: sp.prevKV,
		}
		s := &history.WatchStream{Watcher: fmt.Sprintf("%s#%d", sp.id, n+1), Member: sp.member, Request: req}
		w.mu.Lock()
		w.streams = append(w.streams, s)
		w.mu.Unlock()
		s.End = streamRecorder{interval: w.cfg.ProgressInterval, maxEvents: w.cfg.MaxEvents, seen: &sp.seen}.record(ctx, sp.cli, s)
		if ctx.Err() != nil {
			s.End = ""
			return
		}
		plog.Warningf("watcher %s on %s ended: %s; opening a new stream from the current revision", s.Watcher, s.Member, s.End)
		rev = 0
		// Back off a little so a stream that ends at once cannot spin.
		t := time.NewTimer(time.Duration(n+1) * 100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// streamRecorder records one watch stream.
type streamRecorder struct {
	// interval is how often to ask for a progress notification.
	interval time.Duration
	// maxEvents caps the events kept.
	maxEvents int
	// stop, if set, is asked after every kept response whether the
	// stream has told enough; it makes recording all or nothing.
	stop func(history.WatchResponse) bool
	// seen, if set, is raised to every revision the stream has seen
	// (events and progress notifications, kept or not).
	seen *atomic.Int64
}

// record opens s.Request on cli and appends what arrives to s until the
// stream ends, stop says so, or ctx is done. It returns why the stream
// ended by itself, or "" when ctx or stop ended it.
func (sr streamRecorder) record(ctx context.Context, cli *clientv3.Client, s *history.WatchStream) string {
	interval, maxEvents, done := sr.interval, sr.maxEvents, sr.stop
	// Metadata unique to the stream gives it a gRPC stream of its own, so
	// RequestProgress reaches it alone and one watcher's trouble stays its
	// own.
	sctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, "functional-watcher", s.Watcher))
	var progress sync.WaitGroup
	defer func() {
		cancel()
		progress.Wait()
	}()
	opts := []clientv3.OpOption{clientv3.WithCreatedNotify()}
	if s.Request.RangeEnd != "" {
		opts = append(opts, clientv3.WithRange(s.Request.RangeEnd))
	}
	if s.Request.Revision > 0 {
		opts = append(opts, clientv3.WithRev(s.Request.Revision))
	}
	if s.Request.ProgressNotify {
		opts = append(opts, clientv3.WithProgressNotify())
	}
	if s.Request.PrevKV {
		opts = append(opts, clientv3.WithPrevKV())
	}
	wch := cli.Watch(sctx, s.Request.Key, opts...)
	progress.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
			// Blocks while the client reconnects; sctx ends it.
			cli.RequestProgress(sctx)
		}
	})
	n, full := 0, false
	for resp := range wch {
		if sr.seen != nil {
			rev := int64(0)
			if resp.IsProgressNotify() {
				rev = resp.Header.Revision
			} else if k := len(resp.Events); k > 0 {
				rev = resp.Events[k-1].Kv.ModRevision
			}
			for cur := sr.seen.Load(); rev > cur && !sr.seen.CompareAndSwap(cur, rev); cur = sr.seen.Load() {
			}
		}
		if !full && n+len(resp.Events) > maxEvents {
			// Stop at a response boundary, which is a revision
			// boundary: what is kept is a whole prefix of the stream.
			full = true
		}
		if full {
			s.Dropped += len(resp.Events)
		} else {
			n += len(resp.Events)
			s.Responses = append(s.Responses, toResponse(resp))
		}
		if resp.Canceled {
			if sctx.Err() != nil {
				return ""
			}
			return fmt.Sprintf("canceled: %v (compact revision %d)", resp.Err(), resp.CompactRevision)
		}
		// A caller that asks when to stop wants all or nothing.
		if done != nil && (full || done(s.Responses[len(s.Responses)-1])) {
			return ""
		}
	}
	if sctx.Err() != nil {
		return ""
	}
	return "watch channel closed"
}

func toResponse(resp clientv3.WatchResponse) history.WatchResponse {
	r := history.WatchResponse{
		Time:            time.Now(),
		Revision:        resp.Header.Revision,
		Created:         resp.Created,
		ProgressNotify:  resp.IsProgressNotify(),
		CompactRevision: resp.CompactRevision,
		Canceled:        resp.Canceled,
	}
	if resp.Canceled {
		if err := resp.Err(); err != nil {
			r.CancelReason = err.Error()
		}
	}
	if len(resp.Events) > 0 {
		r.Events = make([]history.WatchEvent, len(resp.Events))
		for i, ev := range resp.Events {
			r.Events[i] = toEvent(ev)
		}
	}
	return r
}

func toEvent(ev *clientv3.Event) history.WatchEvent {
	// Every stream sees the same keys and, mostly, the same values:
	// canonical strings keep one copy of each (unique drops those no
	// recording uses any more).
	e := history.WatchEvent{Type: history.WatchPut, Key: unique.Make(string(ev.Kv.Key)).Value()}
	if ev.Type == mvccpb.DELETE {
		e.Type = history.WatchDelete
	}
	e.Value = recordedValue(ev.Kv.Value)
	e.ModRevision, e.CreateRevision, e.Version = ev.Kv.ModRevision, ev.Kv.CreateRevision, ev.Kv.Version
	if p := ev.PrevKv; p != nil {
		e.PrevKV = &history.WatchKeyValue{Value: recordedValue(p.Value), ModRevision: p.ModRevision, CreateRevision: p.CreateRevision, Version: p.Version}
	}
	return e
}

// maxRecordedValue is the longest value recorded as is; a longer one is
// recorded as a digest, so that 32 KiB values do not fill memory and still
// compare equal exactly when they are.
const maxRecordedValue = 64

func recordedValue(v []byte) string {
	if len(v) <= maxRecordedValue {
		return unique.Make(string(v)).Value()
	}
	sum := sha256.Sum256(v)
	return unique.Make(fmt.Sprintf("sha256:%x/%d", sum[:12], len(v))).Value()
}

// WatchTruth watches prefix on cli from revision from up to revision to (0:
// the current revision) and returns every event, with PrevKV, as the
// ground truth for checking streams. Call it on the healed cluster after
// Collect and before compacting past from. It fails rather than return a
// partial truth: when the watch is canceled (from is compacted), when more
// than maxEvents events arrive, or when ctx ends first.
func WatchTruth(ctx context.Context, cli *clientv3.Client, prefix string, from, to int64, maxEvents int) (history.WatchTruth, error) {
	t := history.WatchTruth{Key: prefix, RangeEnd: clientv3.GetPrefixRangeEnd(prefix), From: from, PrevKV: true}
	if to == 0 {
		resp, err := cli.Get(ctx, prefix, clientv3.WithCountOnly())
		if err != nil {
			return t, fmt.Errorf("stresser: ground truth: read the current revision: %w", err)
		}
		to = resp.Header.Revision
	}
	t.To = to
	if to < from {
		return t, fmt.Errorf("stresser: ground truth: revisions %d..%d: empty range", from, to)
	}
	s := &history.WatchStream{Watcher: "truth", Member: history.WatchMemberCluster,
		Request: history.WatchRequest{Key: t.Key, RangeEnd: t.RangeEnd, Revision: from, PrevKV: true}}
	reached := func(r history.WatchResponse) bool {
		return (r.ProgressNotify && r.Revision >= to) || (len(r.Events) > 0 && r.Events[len(r.Events)-1].ModRevision >= to)
	}
	// The progress requests end the watch once it has caught up with to
	// even when no event of the prefix is at to.
	end := streamRecorder{interval: 100 * time.Millisecond, maxEvents: maxEvents, stop: reached}.record(ctx, cli, s)
	switch {
	case s.Dropped > 0:
		return t, fmt.Errorf("stresser: ground truth: more than %d events in revisions %d..%d", maxEvents, from, to)
	case end != "":
		return t, fmt.Errorf("stresser: ground truth: watch from revision %d: %s", from, end)
	case ctx.Err() != nil:
		return t, fmt.Errorf("stresser: ground truth: watch from revision %d did not reach %d: %w", from, to, ctx.Err())
	}
	for _, r := range s.Responses {
		for _, e := range r.Events {
			if e.ModRevision <= to {
				t.Events = append(t.Events, e)
			}
		}
	}
	return t, nil
}
