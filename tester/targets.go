package tester

import (
	"context"
	"math/rand/v2"
	"sort"
)

// target picks the members a fault hits, from the live cluster at
// injection time.
type target interface {
	suffix() string // the case name's suffix: "LEADER"
	describe() string
	minMembers() int
	pick(ctx context.Context, c *Cluster) ([]int, error)
}

type oneFollower struct{}

func (oneFollower) suffix() string   { return "ONE_FOLLOWER" }
func (oneFollower) describe() string { return "on one follower picked at random" }
func (oneFollower) minMembers() int  { return 3 }
func (oneFollower) pick(ctx context.Context, c *Cluster) ([]int, error) {
	lead, err := c.Leader(ctx)
	if err != nil {
		return nil, err
	}
	var followers []int
	for i := range c.members {
		if i != lead {
			followers = append(followers, i)
		}
	}
	return []int{followers[c.rand().IntN(len(followers))]}, nil
}

type leader struct{}

func (leader) suffix() string   { return "LEADER" }
func (leader) describe() string { return "on the current leader" }
func (leader) minMembers() int  { return 3 }
func (leader) pick(ctx context.Context, c *Cluster) ([]int, error) {
	lead, err := c.Leader(ctx)
	if err != nil {
		return nil, err
	}
	return []int{lead}, nil
}

type quorum struct{}

func (quorum) suffix() string   { return "QUORUM" }
func (quorum) describe() string { return "on a quorum ((n/2)+1 members) picked at random" }
func (quorum) minMembers() int  { return 3 }
func (quorum) pick(_ context.Context, c *Cluster) ([]int, error) {
	n := len(c.members)
	return pickQuorum(c.rand(), n), nil
}

func pickQuorum(r *rand.Rand, n int) []int {
	m := r.Perm(n)[:n/2+1]
	sort.Ints(m)
	return m
}

type all struct{}

func (all) suffix() string   { return "ALL" }
func (all) describe() string { return "on every member at once" }
func (all) minMembers() int  { return 1 }
func (all) pick(_ context.Context, c *Cluster) ([]int, error) {
	m := make([]int, len(c.members))
	for i := range m {
		m[i] = i
	}
	return m, nil
}
