package stresser

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"
)

// watchRunner writes keys under one prefix, numbered in order, while
// watchers watch the prefix from the interval's start: every watcher must
// get every key whose put etcd acknowledged, in the order written. Keys
// whose put failed may or may not show. The check catches the watchers up
// first (a watch resumed from the last revision it saw, as a client
// reconnects), so that a watcher cut off by the end of the interval is not
// counted as having missed what it had no time to get.
type watchRunner struct {
	timeout time.Duration
	lim     *rate.Limiter
	v       violations

	mu       sync.Mutex
	prefix   string  // of the current interval
	start    int64   // revision the watchers start from
	acked    []int64 // numbers of the keys whose put succeeded, in order
	lastRev  int64   // revision of the last acknowledged put
	watchers []*runnerWatcher
	// drop makes watchers lose every dropEvery-th event: the broken
	// watcher of the tests. 0: none.
	dropEvery int
}

// runnerWatcher is what one watcher saw.
type runnerWatcher struct {
	id   int
	mu   sync.Mutex
	seen []int64 // key numbers, in the order received
	rev  int64   // revision of the last event
	bad  string  // the first out-of-order event, if any
	n    int     // events received, dropped ones included
}

func newWatchRunner(cfg Config) *watchRunner {
	return &watchRunner{timeout: cfg.RequestTimeout, lim: newRunnerLimiter()}
}

func (r *watchRunner) name() string { return NameWatchRunner }
func (r *watchRunner) modifiedKeys() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return int64(len(r.acked))
}

func (r *watchRunner) run(ctx context.Context, c *conns, interval uint64) {
	prefix := fmt.Sprintf("/runner/watch/%d/%d/", time.Now().UnixNano(), interval)
	// The watchers start at the revision now, so that they see every
	// put of the interval however late they connect.
	var start int64
	for start == 0 {
		if r.lim.Wait(ctx) != nil {
			return
		}
		gctx, cancel := reqCtx(ctx, r.timeout)
		resp, err := c.all.Get(gctx, "/runner/watch/", clientv3.WithCountOnly())
		cancel()
		if err == nil {
			start = resp.Header.Revision + 1
		}
	}
	ws := make([]*runnerWatcher, runnerWorkers)
	for i := range ws {
		ws[i] = &runnerWatcher{id: i, rev: start - 1}
	}
	r.mu.Lock()
	r.prefix, r.start, r.acked, r.lastRev, r.watchers = prefix, start, nil, 0, ws
	r.mu.Unlock()
	var wg sync.WaitGroup
	for i, w := range ws {
		cli := c.perEndpoint[i%len(c.perEndpoint)]
		wg.Go(func() { r.watch(ctx, cli, w, prefix) })
	}
	wg.Go(func() { r.write(ctx, c.all, prefix) })
	wg.Wait()
}

func (r *watchRunner) write(ctx context.Context, cli *clientv3.Client, prefix string) {
	for k := int64(1); ctx.Err() == nil; k++ {
		if r.lim.Wait(ctx) != nil {
			return
		}
		pctx, cancel := reqCtx(ctx, r.timeout)
		resp, err := cli.Put(pctx, fmt.Sprintf("%s%08d", prefix, k), "")
		cancel()
		if err != nil {
			continue // may or may not have been written: either is fine
		}
		r.mu.Lock()
		r.acked = append(r.acked, k)
		r.lastRev = resp.Header.Revision
		r.mu.Unlock()
	}
}

// watch receives events from rev on until ctx ends, and again after a
// watch is cut off, from the last revision it saw.
func (r *watchRunner) watch(ctx context.Context, cli *clientv3.Client, w *runnerWatcher, prefix string) {
	for ctx.Err() == nil {
		r.watchOnce(ctx, cli, w, prefix, 0)
		if r.lim.Wait(ctx) != nil {
			return
		}
	}
}

// watchOnce watches prefix from after w's last revision until ctx ends,
// the watch fails, or (until > 0) w has reached revision until.
func (r *watchRunner) watchOnce(ctx context.Context, cli *clientv3.Client, w *runnerWatcher, prefix string, until int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	w.mu.Lock()
	from := w.rev + 1
	w.mu.Unlock()
	for resp := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from)) {
		if err := resp.Err(); err != nil {
			return err
		}
		for _, ev := range resp.Events {
			r.saw(w, ev.Kv.Key, ev.Kv.ModRevision, prefix)
		}
		if until > 0 {
			w.mu.Lock()
			reached := w.rev >= until
			w.mu.Unlock()
			if reached {
				return nil
			}
		}
	}
	return ctx.Err()
}

func (r *watchRunner) saw(w *runnerWatcher, key []byte, rev int64, prefix string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n++
	k, err := strconv.ParseInt(strings.TrimPrefix(string(key), prefix), 10, 64)
	if r.dropEvery > 0 && w.n%r.dropEvery == 0 {
		w.rev = rev
		return
	}
	switch {
	case err != nil:
		w.bad = cmp.Or(w.bad, fmt.Sprintf("key %q not of the runner", key))
	case rev <= w.rev:
		w.bad = cmp.Or(w.bad, fmt.Sprintf("key %d at revision %d after revision %d", k, rev, w.rev))
	case len(w.seen) > 0 && k <= w.seen[len(w.seen)-1]:
		w.bad = cmp.Or(w.bad, fmt.Sprintf("key %d after key %d", k, w.seen[len(w.seen)-1]))
	}
	w.seen = append(w.seen, k)
	w.rev = rev
}

// check catches every watcher up to the last acknowledged put, then
// compares what each saw with what was written.
func (r *watchRunner) check(ctx context.Context, c *conns) error {
	r.mu.Lock()
	prefix, acked, lastRev, ws := r.prefix, r.acked, r.lastRev, r.watchers
	r.watchers = nil
	r.mu.Unlock()
	for _, w := range ws {
		w.mu.Lock()
		behind := w.rev < lastRev
		w.mu.Unlock()
		if behind && c != nil {
			cctx, cancel := context.WithTimeout(ctx, 2*r.timeout)
			err := r.watchOnce(cctx, c.all, w, prefix, lastRev)
			cancel()
			if errors.Is(err, rpctypes.ErrCompacted) {
				continue // the past is gone: nothing to say
			}
		}
		w.mu.Lock()
		seen, rev, bad := w.seen, w.rev, w.bad
		w.mu.Unlock()
		if bad != "" {
			r.v.add("watcher %d of %s: out of order: %s", w.id, prefix, bad)
			continue
		}
		if rev < lastRev {
			continue // could not catch up (the cluster is not answering): unknown, not a violation
		}
		if k, ok := missing(acked, seen); ok {
			r.v.add("watcher %d of %s never got key %d, whose put etcd acknowledged (it saw %d events up to revision %d)", w.id, prefix, k, len(seen), rev)
		}
	}
	return r.v.take()
}

// missing returns the first of acked (ascending) not in seen (ascending).
func missing(acked, seen []int64) (int64, bool) {
	j := 0
	for _, k := range acked {
		for j < len(seen) && seen[j] < k {
			j++
		}
		if j == len(seen) || seen[j] != k {
			return k, true
		}
	}
	return 0, false
}
