package tester

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// The three figures of a case, each exact to about figureInterval plus
// one probe's round trip (well under 50 ms on a LAN):
//
//   - unavailability: from injection to the first client write that
//     succeeded after the last one that failed (0 if none failed); a
//     write fails when no member commits it within writeProbeTimeout;
//   - recovery: from the end of recovery to every member healthy under
//     one leader;
//   - first write: from the end of recovery to the first write that
//     succeeded.
//
// Probes start every figureInterval whatever the earlier ones are doing:
// each member is probed concurrently, each probe bounded by
// figureProbeTimeout, and probes overlap, so one slow or hung member
// delays no later probe and stretches no figure. A figure is the time a
// probe completed, so it is never early; it is late by at most the
// interval plus a probe's duration.
const (
	figureInterval     = 25 * time.Millisecond
	figureProbeTimeout = memberCallTimeout
	// writeProbeTimeout bounds each probe write. A put sent to a
	// follower while there is no leader waits for the next one and then
	// succeeds: with a long bound, writes begun during an election
	// succeeded after it and the outage measured 0. A write the cluster
	// takes more than this to commit was not available to its client.
	writeProbeTimeout = 500 * time.Millisecond
)

// everyInterval calls tick every interval, from now until ctx ends, each
// in its own goroutine (bounded by figureProbeTimeout in practice), and
// returns when ctx has ended and every tick has returned.
func everyInterval(ctx context.Context, interval time.Duration, tick func(start time.Time)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		start := time.Now()
		wg.Go(func() { tick(start) })
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// writeFigures follows the probe writes of a case: when the last failed
// write started, the earliest-started write that succeeded after it, and
// the earliest-started success after a mark (the end of recovery).
type writeFigures struct {
	mu          sync.Mutex
	lastFail    time.Time
	okAfterFail time.Time // end of the earliest-started success after lastFail
	okStart     time.Time // its start
	mark        time.Time
	markOK      time.Time // end of the earliest-started success since mark
	markStart   time.Time
	lastErr     error
	marked      chan struct{} // closed once markOK is known
}

func newWriteFigures() *writeFigures { return &writeFigures{marked: make(chan struct{})} }

// add accounts for one round of writes that started at start and ended
// at end. Rounds end out of order; starts order them.
func (w *writeFigures) add(start, end time.Time, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.lastErr = err
		if start.After(w.lastFail) {
			w.lastFail = start
			if !w.okStart.After(start) {
				w.okAfterFail, w.okStart = time.Time{}, time.Time{}
			}
		}
		return
	}
	if start.After(w.lastFail) && (w.okStart.IsZero() || start.Before(w.okStart)) {
		w.okAfterFail, w.okStart = end, start
	}
	if !w.mark.IsZero() && !start.Before(w.mark) && (w.markStart.IsZero() || start.Before(w.markStart)) {
		if w.markOK.IsZero() {
			close(w.marked)
		}
		w.markOK, w.markStart = end, start
	}
}

// setMark marks the end of recovery.
func (w *writeFigures) setMark(t time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.mark = t
}

// unavailability is from inject to the first write that succeeded after
// the last failed one; false if no write has succeeded since.
func (w *writeFigures) unavailability(inject time.Time) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.lastFail.IsZero():
		return 0, true
	case w.okAfterFail.IsZero():
		return 0, false
	}
	return max(w.okAfterFail.Sub(inject), 0), true
}

// waitFirstWrite waits for the first write that succeeded after the mark
// and returns when it succeeded.
func (w *writeFigures) waitFirstWrite(ctx context.Context) (time.Time, error) {
	select {
	case <-w.marked:
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.markOK, nil
	case <-ctx.Done():
		w.mu.Lock()
		defer w.mu.Unlock()
		return time.Time{}, fmt.Errorf("no put succeeded: %v (last error: %v)", ctx.Err(), w.lastErr)
	}
}

// probeWrites writes through every member each interval until ctx ends,
// each put bounded by timeout; a round succeeds when the first of its
// puts does, and fails when all have failed. Rounds cut by ctx's end are
// not counted: they say nothing of the cluster.
func probeWrites(ctx context.Context, n int, interval, timeout time.Duration, put func(ctx context.Context, i int) error, w *writeFigures) {
	everyInterval(ctx, interval, func(start time.Time) {
		var mu sync.Mutex
		done, failed := false, 0
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				pctx, cancel := context.WithTimeout(ctx, timeout)
				err := put(pctx, i)
				cancel()
				end := time.Now()
				mu.Lock()
				defer mu.Unlock()
				if done || ctx.Err() != nil {
					return
				}
				if err == nil {
					done = true
					w.add(start, end, nil)
					return
				}
				if failed++; failed == n {
					done = true
					w.add(start, end, err)
				}
			})
		}
		wg.Wait()
	})
}

// waitHealthyFine probes every member's health each interval until all
// are healthy under one leader (judge returns no reasons), and returns
// when the probes that showed it completed. After timeout it returns an
// *UnhealthyError with the reasons of the latest round that completed.
func waitHealthyFine(ctx context.Context, n int, interval, timeout time.Duration,
	probe func(ctx context.Context, i int) (*pb.StatusResponse, error),
	judge func(sts []*pb.StatusResponse, errs []error) map[string]string) (time.Time, error) {
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		mu      sync.Mutex
		healthy time.Time
		last    map[string]string
		lastAt  time.Time
		// each member's latest probe error, for a timeout before any
		// round completed (a member whose probes hang)
		memberErr = make([]error, n)
		memberAt  = make([]time.Time, n)
	)
	found := make(chan struct{})
	go func() {
		defer close(found)
		everyInterval(wctx, interval, func(tickStart time.Time) {
			sts := make([]*pb.StatusResponse, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					pctx, pcancel := context.WithTimeout(wctx, figureProbeTimeout)
					defer pcancel()
					sts[i], errs[i] = probe(pctx, i)
					if errs[i] != nil {
						mu.Lock()
						if !tickStart.Before(memberAt[i]) {
							memberErr[i], memberAt[i] = errs[i], tickStart
						}
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			end := time.Now()
			if wctx.Err() != nil {
				return
			}
			reasons := judge(sts, errs)
			mu.Lock()
			defer mu.Unlock()
			if len(reasons) == 0 {
				if healthy.IsZero() || end.Before(healthy) {
					healthy = end
				}
				cancel()
				return
			}
			if tickStart.After(lastAt) {
				last, lastAt = reasons, tickStart
			}
		})
	}()
	<-found
	mu.Lock()
	defer mu.Unlock()
	if !healthy.IsZero() {
		return healthy, nil
	}
	if last == nil {
		last = map[string]string{}
		for i, err := range memberErr {
			if err != nil {
				last[memberName(i)] = err.Error()
			}
		}
	}
	ue := &UnhealthyError{time.Since(start), last}
	if ctx.Err() != nil {
		return time.Time{}, fmt.Errorf("%w (%v)", ctx.Err(), ue)
	}
	return time.Time{}, ue
}

// figureWriteKey is what the probe writes of the figures put.
const figureWriteKey = "/etcd-tester/first-write"

// startWriteFigures starts writing through every member of c every
// figureInterval; stop ends it and waits for it.
func (c *Cluster) startWriteFigures(ctx context.Context) (w *writeFigures, stop func()) {
	w = newWriteFigures()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		probeWrites(ctx, len(c.members), figureInterval, writeProbeTimeout, func(ctx context.Context, i int) error {
			_, err := c.members[i].cli.Put(ctx, figureWriteKey, c.members[i].Name)
			return err
		}, w)
	}()
	return w, func() { cancel(); <-done }
}

// nudgeKey is what a nudge writes (see nudgeIfStuck).
const nudgeKey = "/etcd-tester/nudge"

// nudgeWrite writes once through every member at the same time; it
// succeeds if any member took the write.
func (c *Cluster) nudgeWrite(ctx context.Context) error {
	errs := make([]error, len(c.members))
	c.eachMember(func(i int) error {
		_, errs[i] = c.members[i].cli.Put(ctx, nudgeKey, c.members[i].Name)
		return nil
	})
	for _, err := range errs {
		if err == nil {
			return nil
		}
	}
	return errors.Join(errs...)
}

// waitHealthyFine is WaitHealthy at the figures' resolution: it returns
// when every member was seen healthy under one leader.
func (c *Cluster) waitHealthyFine(ctx context.Context, timeout time.Duration) (time.Time, error) {
	return waitHealthyFine(ctx, len(c.members), figureInterval, timeout,
		func(ctx context.Context, i int) (*pb.StatusResponse, error) { return memberHealth(ctx, c.members[i]) },
		func(sts []*pb.StatusResponse, errs []error) map[string]string {
			return c.judgeHealth(sts, errs).reasons
		})
}
