package tester

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"
)

// A Finding is something etcd did in a case that the case does not fail
// for, but that a user of etcd would want to know: today, members that
// became ready only after a client write.
type Finding struct {
	What    string    `json:"what"`
	Members []string  `json:"members,omitempty"`
	Time    time.Time `json:"time"` // when it was seen
	Detail  string    `json:"detail,omitempty"`
}

// FindingNeededWrite is the What of a Finding that members became ready
// only after a client write.
const FindingNeededWrite = "ready only after a client write"

// nudgeInterval is how often a nudge writes. A cluster that is not yet
// healthy gets nudgeAfter without any client write, once the first write
// after recovery has succeeded; then the tester writes to it every
// nudgeInterval. Members that become healthy only then are a finding: on
// an idle cluster they would have stayed unready.
const nudgeInterval = time.Second

// nudgeAfter is the quiet time before a nudge: half the recovery
// timeout, so a member that needs a write still has the other half to
// become healthy after it.
func nudgeAfter(recoveryTimeout time.Duration) time.Duration { return recoveryTimeout / 2 }

// nudge is what nudgeIfStuck did: when it first wrote, and why each
// member was unhealthy just before.
type nudge struct {
	quiet   time.Time // when the tester's writes stopped
	at      time.Time // the first nudge
	reasons map[string]string
	writes  int // how many nudges were written
}

// nudgeIfStuck waits for quiet (closed when the tester's own writes have
// stopped), then for after; if the cluster is still not healthy then, it
// writes once through the members every nudgeInterval until ctx ends, and
// returns when and why. It returns a zero nudge if it never wrote.
//
// health is a read-only look at every member (the reasons of the
// unhealthy ones); write is one client write to the cluster.
func nudgeIfStuck(ctx context.Context, quiet <-chan struct{}, after time.Duration,
	health func(ctx context.Context) map[string]string, write func(ctx context.Context) error) nudge {
	select {
	case <-quiet:
	case <-ctx.Done():
		return nudge{}
	}
	quietAt := time.Now()
	if sleep(ctx, after) != nil {
		return nudge{}
	}
	reasons := health(ctx)
	if len(reasons) == 0 || ctx.Err() != nil {
		return nudge{}
	}
	n := nudge{quiet: quietAt, at: time.Now(), reasons: reasons}
	plog.Infof("not healthy %v after the tester's last write (%s); writing to the cluster every %v", after, reasonList(reasons), nudgeInterval)
	for {
		wctx, cancel := context.WithTimeout(ctx, writeProbeTimeout)
		err := write(wctx)
		cancel()
		n.writes++
		if err != nil && ctx.Err() == nil {
			plog.Infof("nudge write: %v", err)
		}
		if sleep(ctx, nudgeInterval) != nil {
			return n
		}
	}
}

// finding says what a nudge that came before the cluster was healthy
// means; nil if there was no nudge or health came first.
func (n nudge) finding(healthy time.Time) *Finding {
	if n.at.IsZero() || healthy.IsZero() || !healthy.After(n.at) {
		return nil
	}
	return &Finding{
		What:    FindingNeededWrite,
		Members: slices.Sorted(maps.Keys(n.reasons)),
		Time:    n.at,
		Detail: fmt.Sprintf("not healthy after %.3fs without a client write (%s); healthy %.3fs after the tester began to write",
			n.at.Sub(n.quiet).Seconds(), reasonList(n.reasons), healthy.Sub(n.at).Seconds()),
	}
}
