package tester

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// A leader case must hit the leader. The leader is looked up from the
// members' statuses; leadership may move before the fault lands, and a
// case that then kills a follower must not be reported as a leader case.
// So injection is bracketed: just before it, the target itself must say
// it leads at the term looked up (else the case looks the leader up again,
// once); right after it, no other member may report a later term that the
// fault cannot have caused yet.

// leadershipMover is implemented by faults that hand leadership over by
// themselves as they land (etcd transfers leadership when stopped
// gracefully): a new term right after them proves nothing.
type leadershipMover interface{ movesLeadership() bool }

// leaderProbeTimeout bounds each status read that brackets an injection:
// it must be short for "just before" to mean something.
const leaderProbeTimeout = 500 * time.Millisecond

// injectLeader puts f on the current leader, verified as described above.
func (c *Cluster) injectLeader(ctx context.Context, f Fault) error {
	var moved []string
	for range 2 {
		lv, err := c.leaderViewAt(ctx)
		if err != nil {
			return fmt.Errorf("pick leader: %w", err)
		}
		if err := c.confirmLeader(ctx, lv); err != nil {
			plog.Noticef("re-targeting: %v", err)
			moved = append(moved, err.Error())
			continue
		}
		hit := time.Now()
		if err := c.Inject(ctx, lv.index, f); err != nil {
			return err
		}
		return c.verifyLeaderHit(ctx, lv, hit, f)
	}
	return fmt.Errorf("leadership moved between the lookup and the injection twice, so nothing was injected (a follower is not a leader target): %s", strings.Join(moved, "; "))
}

// confirmLeader asks the looked-up leader itself, just before the fault,
// whether it still leads at the term looked up.
func (c *Cluster) confirmLeader(ctx context.Context, lv leaderView) error {
	m := c.members[lv.index]
	pctx, cancel := context.WithTimeout(ctx, leaderProbeTimeout)
	defer cancel()
	st, err := memberStatus(pctx, m)
	if err != nil {
		return fmt.Errorf("%s, looked up as leader at term %d, does not answer just before the fault: %w", m.Name, lv.term, err)
	}
	if st.Leader != st.Header.MemberId || st.RaftTerm != lv.term {
		return fmt.Errorf("%s was looked up as leader at term %d, but just before the fault it sees leader %s at term %d",
			m.Name, lv.term, c.memberNameByID(st.Leader), st.RaftTerm)
	}
	return nil
}

// verifyLeaderHit reads every member's status right after the fault hit
// lv's leader. A member at a later term means an election completed after
// the lookup. The fault cannot have caused it before an election timeout
// less a heartbeat has passed since it landed (followers wait that long
// without heartbeats), unless it hands leadership over itself; a later
// term seen sooner means leadership moved before the fault landed: the
// case hit a follower, and fails saying so. Members that do not answer in
// time are not asked again: the check is what was seen at once.
func (c *Cluster) verifyLeaderHit(ctx context.Context, lv leaderView, hit time.Time, f Fault) error {
	if m, ok := f.(leadershipMover); ok && m.movesLeadership() {
		return nil
	}
	bound := hit.Add(c.cfg.ElectionTimeout - c.cfg.HeartbeatInterval)
	type seen struct {
		st *pb.StatusResponse
		at time.Time
	}
	got := make([]seen, len(c.members))
	var wg sync.WaitGroup
	for i, m := range c.members {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, leaderProbeTimeout)
			defer cancel()
			if st, err := memberStatus(pctx, m); err == nil {
				got[i] = seen{st, time.Now()}
			}
		})
	}
	wg.Wait()
	var errs []error
	for i, s := range got {
		if s.st == nil || s.st.RaftTerm <= lv.term || !s.at.Before(bound) {
			continue
		}
		errs = append(errs, fmt.Errorf("%s saw leader %s at term %d %v after the fault hit %s (looked up as leader at term %d); no election the fault causes ends that soon",
			c.members[i].Name, c.memberNameByID(s.st.Leader), s.st.RaftTerm, s.at.Sub(hit).Round(time.Millisecond), c.members[lv.index].Name, lv.term))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("leadership moved before the fault landed: the case hit %s as a follower, not the leader: %w", c.members[lv.index].Name, err)
	}
	return nil
}

// memberNameByID names the member with raft ID id, as far as the
// members' statuses told ("none" for 0).
func (c *Cluster) memberNameByID(id uint64) string {
	if id == 0 {
		return "none"
	}
	for _, m := range c.members {
		if m.id.Load() == id {
			return m.Name
		}
	}
	return fmt.Sprintf("%x", id)
}
