package tester

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// restoreCase is upstream's
// SIGQUIT_AND_REMOVE_QUORUM_AND_RESTORE_LEADER_SNAPSHOT_FROM_SCRATCH, the
// recovery an operator runs after a disaster: write marker keys, save a
// snapshot from the leader, destroy a quorum and then the rest (SIGQUIT
// and archive, the followers first), restore the leader's member from
// the snapshot as the seed of a new cluster (etcdutl's restore, run by its
// agent), and add the others back one by one with fresh data. Every
// marker must be read back. It runs without load: what is written after
// the snapshot is lost by design, which the load's checks would call a
// loss.
type restoreCase struct {
	markers int
}

const restoreCaseName = "SIGQUIT_AND_REMOVE_QUORUM_AND_RESTORE_LEADER_SNAPSHOT_FROM_SCRATCH"

var (
	_ requirer      = restoreCase{}
	_ stressChooser = restoreCase{}
)

func (restoreCase) Name() string { return restoreCaseName }
func (r restoreCase) Describe() string {
	return fmt.Sprintf("write %d marker keys, save a snapshot from the leader, SIGQUIT and archive the followers (a quorum is gone with the second) and then the leader, restore the leader from the snapshot as a new one-member cluster, add the others back one by one with fresh data; every marker must be read back (no load)", r.markers)
}
func (restoreCase) Stress() bool { return false }
func (restoreCase) Requires(env Env) error {
	if env.Members < 3 {
		return fmt.Errorf("needs at least 3 members to destroy a quorum and add members back; there are %d agents", env.Members)
	}
	return nil
}

func (r restoreCase) prefix(c *Cluster) string { return "/restore/" + c.token + "/" }

func (r restoreCase) Inject(ctx context.Context, c *Cluster) error {
	lead, err := c.Leader(ctx)
	if err != nil {
		return fmt.Errorf("find the leader: %w", err)
	}
	if err := c.writeMarkers(ctx, r.prefix(c), r.markers); err != nil {
		return err
	}
	m := c.members[lead]
	err = c.agentCall(ctx, lead, agentStopTimeout, "save a snapshot of", func(ctx context.Context, a client.Agent) error {
		s, ok := a.(client.Snapshotter)
		if !ok {
			return errors.New("the agent cannot save snapshots")
		}
		snap, err := s.SaveSnapshot(ctx)
		if err == nil {
			plog.Infof("saved a snapshot of %s on its agent: %s (%d bytes)", m.Name, snap.Path, snap.Size)
		}
		return err
	})
	if err != nil {
		return err
	}
	// The followers first (the second one takes the quorum), the
	// leader last: the ledger heals newest first, so the leader is
	// restored as the seed before the others are added back to it.
	for i := range c.members {
		if i != lead {
			if err := c.Inject(ctx, i, wiped{}); err != nil {
				return err
			}
		}
	}
	return c.Inject(ctx, lead, wipedSeed{})
}

// Recover restores the seed and adds the others back (the ledger's
// undo of the wipes), then reads the markers back.
func (r restoreCase) Recover(ctx context.Context, c *Cluster) error {
	if err := c.Heal(ctx); err != nil {
		return err
	}
	return c.readMarkers(ctx, r.prefix(c), r.markers)
}

// wiped is a member stopped with SIGQUIT and archived, out of a cluster
// that is gone; undone by adding it back, with fresh data, to the cluster
// restored from the snapshot.
type wiped struct{}

func (wiped) String() string { return "wiped (to be added back to the restored cluster)" }
func (wiped) Scope() Scope   { return ScopeProcess }
func (wiped) Inject(ctx context.Context, c *Cluster, i int) error {
	return c.agentCall(ctx, i, agentStopTimeout, "cleanup (SIGQUIT and archive)", func(ctx context.Context, a client.Agent) error { return a.Cleanup(ctx) })
}
func (wiped) Undo(ctx context.Context, c *Cluster, i int) error { return removed{}.Undo(ctx, c, i) }

// Present: a membership cannot be read off an agent's status; the
// record stays until the undo succeeds.
func (wiped) Present(*Cluster, int, wire.Status) bool { return true }

// wipedSeed is the leader wiped; undone by restoring it from the snapshot
// its agent saved, as a new one-member cluster.
type wipedSeed struct{}

func (wipedSeed) String() string { return "wiped (to be restored from the snapshot)" }
func (wipedSeed) Scope() Scope   { return ScopeProcess }
func (wipedSeed) Inject(ctx context.Context, c *Cluster, i int) error {
	return wiped{}.Inject(ctx, c, i)
}
func (wipedSeed) Present(*Cluster, int, wire.Status) bool { return true }
func (wipedSeed) Undo(ctx context.Context, c *Cluster, i int) error {
	m := c.members[i]
	err := c.agentCall(ctx, i, agentStopTimeout, "restore from the snapshot", func(ctx context.Context, a client.Agent) error {
		s, ok := a.(client.Snapshotter)
		if !ok {
			return errors.New("the agent cannot restore snapshots")
		}
		st, err := a.Status(ctx)
		if err != nil {
			return err
		}
		if st.State == wire.StateStarted {
			return nil // restored already (a lost reply)
		}
		_, err = s.RestoreSnapshot(ctx, c.args(m, "new", m.Name+"="+m.PeerURL))
		return err
	})
	if err == nil {
		plog.Infof("restored %s from the snapshot as a new one-member cluster", m.Name)
	}
	return err
}

// writeMarkers puts n keys under prefix, each acknowledged.
func (c *Cluster) writeMarkers(ctx context.Context, prefix string, n int) error {
	return c.withPeers(ctx, -1, func(ctx context.Context, cli *clientv3.Client) error {
		for k := range n {
			if _, err := cli.Put(ctx, prefix+strconv.Itoa(k), strconv.Itoa(k)); err != nil {
				return fmt.Errorf("write marker %d: %w", k, err)
			}
		}
		return nil
	})
}

// readMarkers reads the n markers back, retrying while the new cluster
// settles (bounded), and names the first missing one.
func (c *Cluster) readMarkers(ctx context.Context, prefix string, n int) error {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.ClientURL)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RecoveryTimeout)
	defer cancel()
	for {
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err == nil {
			got := map[string]bool{}
			for _, kv := range resp.Kvs {
				got[string(kv.Key)] = true
			}
			for k := range n {
				if !got[prefix+strconv.Itoa(k)] {
					return fmt.Errorf("marker %s%d, written before the snapshot, is gone after the restore (%d of %d read back)", prefix, k, len(resp.Kvs), n)
				}
			}
			plog.Infof("all %d markers written before the snapshot read back after the restore", n)
			return nil
		}
		if serr := sleep(ctx, 500*time.Millisecond); serr != nil {
			return fmt.Errorf("read the markers back: %w (%v)", serr, err)
		}
	}
}
