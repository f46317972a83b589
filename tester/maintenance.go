package tester

import (
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-functional/functional/checker/watch"
	"github.com/etcd-functional/functional/history"
	"github.com/etcd-functional/functional/stresser"
)

// Compact compacts the cluster at its revision minus keep, and verifies on
// every member that a read before that revision is refused. It returns the
// compaction revision, 0 if the cluster is too young.
func (c *Cluster) Compact(ctx context.Context, keep int64) (int64, error) {
	lead, err := c.Leader(ctx)
	if err != nil {
		return 0, fmt.Errorf("compact: %w", err)
	}
	m := c.members[lead]
	st, err := memberStatus(ctx, m)
	if err != nil {
		return 0, fmt.Errorf("compact: status of %s: %w", m.Name, err)
	}
	rev := st.Header.Revision - keep
	if rev <= 0 {
		return 0, nil
	}
	cctx, cancel := context.WithTimeout(ctx, agentCallTimeout)
	defer cancel()
	if _, err := m.cli.Compact(cctx, rev, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return rev, fmt.Errorf("compact at revision %d through %s: %w", rev, m.Name, err)
	}
	return rev, c.verifyCompacted(ctx, rev)
}

// verifyCompacted checks that every member refuses a read below rev.
func (c *Cluster) verifyCompacted(ctx context.Context, rev int64) error {
	if rev < 2 {
		return nil
	}
	return c.eachMember(func(i int) error {
		mm := c.members[i]
		gctx, cancel := context.WithTimeout(ctx, 5*memberCallTimeout)
		defer cancel()
		_, err := mm.cli.Get(gctx, healthKey, clientv3.WithRev(rev-1))
		if errors.Is(err, rpctypes.ErrCompacted) {
			return nil
		}
		return fmt.Errorf("%s: get at revision %d after compaction at %d: want %v, got %v", mm.Name, rev-1, rev, rpctypes.ErrCompacted, err)
	})
}

// Defragment defragments every member in turn (each stalls while it runs).
func (c *Cluster) Defragment(ctx context.Context) error {
	var errs []error
	for _, m := range c.members {
		dctx, cancel := context.WithTimeout(ctx, agentStopTimeout)
		_, err := pb.NewMaintenanceClient(m.cli.ActiveConnection()).Defragment(dctx, &pb.DefragmentRequest{})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("defragment %s: %w", m.Name, rpctypes.Error(err)))
		}
	}
	return errors.Join(errs...)
}

// CompactAtTombstone compacts the cluster on purpose at a revision that is
// a delete, through the leader (stresser.CompactAtTombstone), verifies the
// compaction on every member, and checks that a watch from that revision
// starts with the delete: the window of etcd #18089, exercised every time
// rather than by luck.
func (c *Cluster) CompactAtTombstone(ctx context.Context) (*stresser.Tombstone, error) {
	lead, err := c.Leader(ctx)
	if err != nil {
		return nil, fmt.Errorf("compact at a tombstone: %w", err)
	}
	m := c.members[lead]
	ts, err := stresser.CompactAtTombstone(ctx, m.cli, stresser.TombstoneKey)
	if err != nil {
		return nil, fmt.Errorf("through %s: %w", m.Name, err)
	}
	if err := c.verifyCompacted(ctx, ts.Revision); err != nil {
		return &ts, err
	}
	if res := watch.Check([]history.WatchStream{ts.Stream}, ts.Truth); res.Verdict != watch.Pass {
		return &ts, fmt.Errorf("compacted on the delete of %s at revision %d through %s, then watched it from there: %s (etcd #18089)",
			ts.Key, ts.Revision, m.Name, firstLines(res.Errors, 5))
	}
	return &ts, nil
}
