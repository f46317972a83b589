package tester

import (
	"context"
	"fmt"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// newHashCheck is the "hash" checker: every member's key space must be
// the same at one revision. -consistency-check=false turns it off.
func newHashCheck(cc *CheckContext) Checker {
	if !cc.Config.ConsistencyCheck {
		return nil
	}
	return newHashChecker(cc.Cluster.kvMembers())
}

// kvMember is what the hash checker needs of one member.
type kvMember interface {
	Name() string
	// Status returns the member's current revision, the leader it sees
	// and its own ID.
	Status(ctx context.Context) (rev int64, leader, id uint64, err error)
	// HashKV returns the hash of the key space up to rev, and the
	// compaction revision the hash starts from.
	HashKV(ctx context.Context, rev int64) (hash uint32, compactRev int64, err error)
}

// hashChecker compares the members' key spaces. It reads every member's
// revision, takes the leader's as R, and compares every member's hash of
// the key space at R: one point of history for all, so writes that land
// between the reads (short leases expiring) cannot make equal stores look
// different. Members still catching up make it retry.
type hashChecker struct {
	members  []kvMember
	tries    int
	interval time.Duration
}

// Upstream's bounds: 7 tries, 1 s apart.
const (
	hashCheckTries    = 7
	hashCheckInterval = time.Second
)

func newHashChecker(ms []kvMember) hashChecker {
	return hashChecker{members: ms, tries: hashCheckTries, interval: hashCheckInterval}
}

func (h hashChecker) Check(ctx context.Context) error {
	var last error
	for try := range h.tries {
		if try > 0 {
			if err := sleep(ctx, h.interval); err != nil {
				return fmt.Errorf("%w (last: %v)", err, last)
			}
		}
		if last = h.once(ctx); last == nil {
			return nil
		}
	}
	return fmt.Errorf("members differ after %d tries %v apart: %w", h.tries, h.interval, last)
}

type memberKV struct {
	rev        int64
	leader, id uint64
	hash       uint32
	compactRev int64
	err        error
}

func (h hashChecker) once(ctx context.Context) error {
	kvs := make([]memberKV, len(h.members))
	for i, m := range h.members {
		kvs[i].rev, kvs[i].leader, kvs[i].id, kvs[i].err = m.Status(ctx)
	}
	// R is the revision of the member that the others (and it) call
	// leader.
	r := int64(-1)
	for i := range kvs {
		if kvs[i].err == nil && kvs[i].leader != 0 && kvs[i].id == kvs[i].leader {
			r = kvs[i].rev
		}
	}
	if r < 0 {
		return fmt.Errorf("no member is the leader: %s", h.describe(kvs, false))
	}
	for i := range kvs {
		if kvs[i].err != nil || kvs[i].rev != r {
			return fmt.Errorf("revisions differ (leader's is %d): %s", r, h.describe(kvs, false))
		}
	}
	for i, m := range h.members {
		kvs[i].hash, kvs[i].compactRev, kvs[i].err = m.HashKV(ctx, r)
	}
	for i := range kvs {
		if kvs[i].err != nil || kvs[i].hash != kvs[0].hash || kvs[i].compactRev != kvs[0].compactRev {
			return fmt.Errorf("hashes at revision %d differ: %s", r, h.describe(kvs, true))
		}
	}
	return nil
}

func (h hashChecker) describe(kvs []memberKV, hashes bool) string {
	parts := make([]string, len(kvs))
	for i, kv := range kvs {
		s := h.members[i].Name() + " "
		switch {
		case kv.err != nil:
			s += "error: " + kv.err.Error()
		case hashes:
			s += fmt.Sprintf("revision %d hash %08x compact revision %d", kv.rev, kv.hash, kv.compactRev)
		default:
			s += fmt.Sprintf("revision %d", kv.rev)
			if kv.id == kv.leader {
				s += " (leader)"
			}
		}
		parts[i] = s
	}
	return strings.Join(parts, "; ")
}

// memberKV adapts a Member to kvMember over its own connection.
type liveKV struct{ m *Member }

func (l liveKV) Name() string { return l.m.Name }

func (l liveKV) Status(ctx context.Context) (int64, uint64, uint64, error) {
	st, err := memberStatus(ctx, l.m)
	if err != nil {
		return 0, 0, 0, err
	}
	return st.Header.Revision, st.Leader, st.Header.MemberId, nil
}

func (l liveKV) HashKV(ctx context.Context, rev int64) (uint32, int64, error) {
	// Hashing a large store takes a while; allow more than a status.
	ctx, cancel := context.WithTimeout(ctx, 10*memberCallTimeout)
	defer cancel()
	resp, err := pb.NewMaintenanceClient(l.m.cli.ActiveConnection()).HashKV(ctx, &pb.HashKVRequest{Revision: rev})
	if err != nil {
		return 0, 0, rpctypes.Error(err)
	}
	return resp.Hash, resp.CompactRevision, nil
}

func (c *Cluster) kvMembers() []kvMember {
	out := make([]kvMember, len(c.members))
	for i, m := range c.members {
		out[i] = liveKV{m}
	}
	return out
}
