package tester

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/etcd-functional/functional/checker/watch"
	"github.com/etcd-functional/functional/history"
	"github.com/etcd-functional/functional/stresser"
)

// The watch check records watches on every member and cluster-wide while a
// case runs under load (from now, from the past, from the future, and from
// the last compaction revision), and judges them after recovery against
// the ground truth: a full watch, on the healed cluster, from the first
// revision any of them started at, plus what the last compaction on a
// tombstone wrote (which etcd #18089 hid from that full watch too).
// -watch-check=false turns it off.

// watchCaughtUpTimeout bounds the wait for the watchers to see the
// cluster's current revision after recovery.
const watchCaughtUpTimeout = 30 * time.Second

// startWatchers starts the case's watchers; nil when the check is off.
func (t *tester) startWatchers(ctx context.Context) (*stresser.Watchers, error) {
	if !t.s.WatchCheck {
		return nil, nil
	}
	cfg := stresser.DefaultWatchConfig()
	cfg.Endpoints = t.cluster.ClientURLs()
	cfg.CompactRevision = t.compaction.revision
	return stresser.StartWatchers(ctx, cfg)
}

// newWatchCheck is the "watch" checker, for a case that recorded watches.
func newWatchCheck(cc *CheckContext) Checker {
	if cc.Watchers == nil {
		return nil
	}
	return &watchCheck{cc: cc}
}

type watchCheck struct{ cc *CheckContext }

func (w *watchCheck) Check(ctx context.Context) error {
	cc, ws := w.cc, w.cc.Watchers
	lead, err := cc.Cluster.Leader(ctx)
	if err != nil {
		return fmt.Errorf("find a member to read the truth from: %w", err)
	}
	cli := cc.Cluster.members[lead].cli
	st, err := memberStatus(ctx, cc.Cluster.members[lead])
	if err != nil {
		return fmt.Errorf("current revision: %w", err)
	}
	rev := st.Header.Revision
	wctx, cancel := context.WithTimeout(ctx, watchCaughtUpTimeout)
	caughtUp := ws.WaitCaughtUp(wctx, rev)
	cancel()
	streams := ws.Collect()
	// The watchers ran on until Collect, and the cluster did not stand
	// still (leases expire, other checkers wait on them): the truth must
	// reach as far as any stream saw.
	for _, s := range streams {
		for _, r := range s.Responses {
			rev = max(rev, r.Revision)
		}
	}
	cfg := stresser.DefaultWatchConfig()
	truth, err := stresser.WatchTruth(ctx, cli, cfg.Prefix, ws.FirstRevision(), rev, cfg.MaxEvents*4)
	if err != nil {
		return fmt.Errorf("%w: ground truth: %v", ErrCheckUnknown, err)
	}
	if ts := cc.tombstone; ts != nil {
		truth = truth.WithWrites(ts.Truth.Events)
	}
	res := watch.Check(streams, truth)
	cc.Figure("streams", float64(res.Streams))
	cc.Figure("events", float64(res.Events))
	cc.Figure("dropped", float64(res.Dropped))
	cc.Figure("check_seconds", res.Duration.Seconds())
	if res.Verdict == watch.Pass && caughtUp == nil {
		return nil
	}
	if file, err := saveWatches(cc, streams, truth); err == nil {
		cc.File(file)
	} else {
		plog.Warningf("saving the watch streams: %v", err)
	}
	switch {
	case res.Verdict == watch.Fail:
		return fmt.Errorf("%d watch rule violations: %s", len(res.Errors), firstLines(res.Errors, 5))
	case res.Verdict == watch.Unknown:
		return fmt.Errorf("%w: %s", ErrCheckUnknown, firstLines(res.Errors, 5))
	default:
		// Every stream it saw was right, but not every watcher reached
		// the cluster's revision: events may be missing at their end.
		return fmt.Errorf("%w: %v", ErrCheckUnknown, caughtUp)
	}
}

// saveWatches writes the streams and their truth beside the case, for the
// post-mortem.
func saveWatches(cc *CheckContext, streams []history.WatchStream, truth history.WatchTruth) (string, error) {
	dir, err := cc.MkDir()
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(struct {
		Truth   history.WatchTruth    `json:"truth"`
		Streams []history.WatchStream `json:"streams"`
	}{truth, streams})
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "watch.json")
	return path, os.WriteFile(path, b, 0o644)
}

// firstLines joins the first n of lines and says how many more there are.
func firstLines(lines []string, n int) string {
	if len(lines) <= n {
		return strings.Join(lines, "; ")
	}
	return fmt.Sprintf("%s; and %d more", strings.Join(lines[:n], "; "), len(lines)-n)
}
