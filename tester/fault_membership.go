package tester

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// Membership faults: a member stopped, its data archived and the member
// removed from the cluster; undone by adding it back with fresh data.

// removed is member i stopped with SIGQUIT (a stack dump), its data
// archived, and removed from the membership.
type removed struct{}

func (removed) prefix() string { return "SIGQUIT_AND_REMOVE" }
func (removed) describe() string {
	return "stop etcd with SIGQUIT (stack dump) and archive its data, remove it from the cluster; then add it back with fresh data,"
}
func (removed) requires(Env) error      { return nil }
func (r removed) draw(*rand.Rand) Fault { return r }
func (removed) String() string          { return "removed from the cluster" }
func (removed) Scope() Scope            { return ScopeProcess }

// Present: the agent's status cannot show a membership, and even a
// half-done removal needs the member re-added with fresh data, so the
// record stays until Undo succeeds.
func (removed) Present(*Cluster, int, wire.Status) bool { return true }

func (removed) Inject(ctx context.Context, c *Cluster, i int) error {
	m := c.members[i]
	if err := c.agentCall(ctx, i, agentStopTimeout, "cleanup (SIGQUIT and archive)", func(ctx context.Context, a client.Agent) error { return a.Cleanup(ctx) }); err != nil {
		return err
	}
	return c.withPeers(ctx, i, func(ctx context.Context, cli *clientv3.Client) error {
		id, _, err := findMember(ctx, cli, m.PeerURL)
		if err != nil {
			return err
		}
		if id == 0 {
			return nil // already gone
		}
		if _, err := cli.MemberRemove(ctx, id); err != nil {
			return fmt.Errorf("remove %s (id %x) from the cluster: %w", m.Name, id, err)
		}
		plog.Infof("removed %s (id %x) from the cluster", m.Name, id)
		return nil
	})
}

// Undo adds member i back with fresh data: MemberAdd with its peer URL,
// then start it with --initial-cluster-state existing and the current
// membership.
func (removed) Undo(ctx context.Context, c *Cluster, i int) error {
	m := c.members[i]
	// A removal that failed half-way may have left etcd running or the
	// old member in the membership; neither can come back as it was.
	var st wire.Status
	if err := c.agentCall(ctx, i, agentCallTimeout, "status of", func(ctx context.Context, a client.Agent) error {
		var err error
		st, err = a.Status(ctx)
		return err
	}); err != nil {
		return err
	}
	if st.State == wire.StateStarted || st.State == wire.StatePaused {
		if err := c.agentCall(ctx, i, agentStopTimeout, "cleanup before rejoining", func(ctx context.Context, a client.Agent) error { return a.Cleanup(ctx) }); err != nil {
			return err
		}
	}
	var initial []string
	err := c.withPeers(ctx, i, func(ctx context.Context, cli *clientv3.Client) error {
		members, err := readd(ctx, cli, m)
		if err != nil {
			return err
		}
		for _, mem := range members {
			name := mem.Name
			if slices.Contains(mem.PeerURLs, m.PeerURL) {
				name = m.Name
			}
			for _, u := range mem.PeerURLs {
				initial = append(initial, name+"="+u)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rejoin %s: %w", m.Name, err)
	}
	return c.agentCall(ctx, i, agentCallTimeout, "start (rejoining)", func(ctx context.Context, a client.Agent) error {
		_, err := a.Start(ctx, c.args(m, "existing", strings.Join(initial, ",")))
		return err
	})
}

// readd makes m a member again, added but not started, and returns the
// membership. An old m that had started is removed first: it cannot come
// back with fresh data under its old ID.
func readd(ctx context.Context, cli *clientv3.Client, m *Member) ([]*pb.Member, error) {
	id, name, err := findMember(ctx, cli, m.PeerURL)
	if err != nil {
		return nil, err
	}
	if id != 0 && name != "" {
		if _, err := cli.MemberRemove(ctx, id); err != nil {
			return nil, fmt.Errorf("remove the old %s (id %x) before re-adding it: %w", m.Name, id, err)
		}
		id = 0
	}
	if id != 0 {
		list, err := cli.MemberList(ctx)
		if err != nil {
			return nil, fmt.Errorf("member list: %w", err)
		}
		return list.Members, nil
	}
	// etcd refuses to add a member until the leader has been connected
	// to a quorum for a while; retry that, within ctx.
	for {
		resp, err := cli.MemberAdd(ctx, []string{m.PeerURL})
		if err == nil {
			plog.Infof("added %s back as member %x", m.Name, resp.Member.ID)
			return resp.Members, nil
		}
		if !errors.Is(err, rpctypes.ErrUnhealthy) && !errors.Is(err, rpctypes.ErrMemberNotEnoughStarted) {
			return nil, fmt.Errorf("add %s with peer URL %s: %w", m.Name, m.PeerURL, err)
		}
		if serr := sleep(ctx, 500*time.Millisecond); serr != nil {
			return nil, fmt.Errorf("add %s with peer URL %s: %w (%v)", m.Name, m.PeerURL, serr, err)
		}
	}
}

// withPeers runs f with a client of every member but i, bounded.
func (c *Cluster) withPeers(ctx context.Context, i int, f func(context.Context, *clientv3.Client) error) error {
	var eps []string
	for k, m := range c.members {
		if k != i {
			eps = append(eps, m.ClientURL)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("client for %v: %w", eps, err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, agentCallTimeout)
	defer cancel()
	return f(ctx, cli)
}

// findMember returns the ID and name of the member advertising peerURL,
// 0 if there is none.
func findMember(ctx context.Context, cli *clientv3.Client, peerURL string) (uint64, string, error) {
	list, err := cli.MemberList(ctx)
	if err != nil {
		return 0, "", fmt.Errorf("member list: %w", err)
	}
	for _, mem := range list.Members {
		if slices.Contains(mem.PeerURLs, peerURL) {
			return mem.ID, mem.Name, nil
		}
	}
	return 0, "", nil
}
