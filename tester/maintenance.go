package tester

import (
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
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
	if rev < 2 {
		return rev, nil
	}
	err = c.eachMember(func(i int) error {
		mm := c.members[i]
		gctx, cancel := context.WithTimeout(ctx, 5*memberCallTimeout)
		defer cancel()
		_, err := mm.cli.Get(gctx, healthKey, clientv3.WithRev(rev-1))
		if errors.Is(err, rpctypes.ErrCompacted) {
			return nil
		}
		return fmt.Errorf("%s: get at revision %d after compaction at %d: want %v, got %v", mm.Name, rev-1, rev, rpctypes.ErrCompacted, err)
	})
	return rev, err
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
