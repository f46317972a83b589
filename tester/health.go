package tester

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// UnhealthyError says which members were not healthy when time ran out,
// and why.
type UnhealthyError struct {
	After   time.Duration
	Reasons map[string]string // member name → reason
}

func (e *UnhealthyError) Error() string {
	return fmt.Sprintf("cluster not healthy after %v: %s", e.After.Round(time.Millisecond), reasonList(e.Reasons))
}

// reasonList is "member: reason; …", by member name.
func reasonList(reasons map[string]string) string {
	names := slices.Sorted(maps.Keys(reasons))
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + ": " + reasons[n]
	}
	return strings.Join(parts, "; ")
}

// healthKey is read to prove that a member serves linearizable reads.
const healthKey = "/etcd-tester/health"

// memberStatus asks member m for its status over its own connection (the
// clientv3 Maintenance API would dial a new one every time).
func memberStatus(ctx context.Context, m *Member) (*pb.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, memberCallTimeout)
	defer cancel()
	st, err := pb.NewMaintenanceClient(m.cli.ActiveConnection()).Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return nil, rpctypes.Error(err)
	}
	m.id.Store(st.Header.GetMemberId())
	return st, nil
}

// memberHealth checks that m answers, reports no error, has a leader and
// serves a linearizable read (which needs a quorum and a member caught up
// to the leader's commit index). It returns m's status.
//
// A read, not a write as upstream's tester did: a write is a client
// request that moves the cluster along, so a member that becomes ready
// only after one (etcd v3.6.16 re-adding a member from a snapshot on an
// idle cluster, for one: it refuses to publish itself until an entry is
// applied after the snapshot) would look healthy to a probe that writes.
// The probe must not heal what it measures; caseRun.waitHealthy and
// nudgeIfStuck find and report such a member instead.
func memberHealth(ctx context.Context, m *Member) (*pb.StatusResponse, error) {
	st, err := memberStatus(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if len(st.Errors) > 0 {
		return st, fmt.Errorf("reports errors: %s", strings.Join(st.Errors, "; "))
	}
	if st.Leader == 0 {
		return st, errors.New("no leader")
	}
	gctx, cancel := context.WithTimeout(ctx, memberCallTimeout)
	defer cancel()
	if _, err := m.cli.Get(gctx, healthKey); err != nil {
		return st, fmt.Errorf("linearizable read: %w", err)
	}
	return st, nil
}

// healthOnce checks every member once; it returns the reason of each
// unhealthy member, none if all are healthy and agree on one leader that
// is one of them.
func (c *Cluster) healthOnce(ctx context.Context) map[string]string {
	return c.healthPoll(ctx).reasons
}

// healthPoll is one look at every member: the leader they agree on and
// its term when all are healthy, else why each is not.
type healthPoll struct {
	leader, term uint64
	reasons      map[string]string
}

func (c *Cluster) healthPoll(ctx context.Context) healthPoll {
	sts := make([]*pb.StatusResponse, len(c.members))
	errs := make([]error, len(c.members))
	c.eachMember(func(i int) error {
		sts[i], errs[i] = memberHealth(ctx, c.members[i])
		return nil
	})
	return c.judgeHealth(sts, errs)
}

// judgeHealth judges one look at every member: each member's health
// probe's status and error.
func (c *Cluster) judgeHealth(sts []*pb.StatusResponse, errs []error) healthPoll {
	reasons := map[string]string{}
	for i, err := range errs {
		if err != nil {
			reasons[c.members[i].Name] = err.Error()
		}
	}
	if len(reasons) > 0 {
		return healthPoll{reasons: reasons}
	}
	ids := map[uint64]string{}
	for i, st := range sts {
		ids[st.Header.MemberId] = c.members[i].Name
	}
	lead := sts[0].Leader
	agreed := true
	var term uint64
	for _, st := range sts {
		agreed = agreed && st.Leader == lead
		term = max(term, st.RaftTerm)
	}
	if _, known := ids[lead]; agreed && known {
		return healthPoll{leader: lead, term: term}
	}
	for i, st := range sts {
		who := ids[st.Leader]
		if who == "" {
			who = "not a member"
		}
		reasons[c.members[i].Name] = fmt.Sprintf("sees leader %x (%s); members disagree", st.Leader, who)
	}
	return healthPoll{reasons: reasons}
}

// WaitHealthy polls until every member is healthy and they agree on one
// leader, or timeout has passed: then it returns an *UnhealthyError with
// each unhealthy member and why. Polls are a healthPollInterval apart.
// Clusters can be healthy but not answering in time to the members' poll
// with a timeout of a few milliseconds; such a timeout fails.
func (c *Cluster) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	start := time.Now()
	deadline := start.Add(timeout)
	lastLog := start
	for {
		// A poll is cut at the deadline: healthy means seen healthy in
		// time, not answered in time by a poll begun in time.
		pctx, cancel := context.WithDeadline(ctx, deadline)
		reasons := c.healthOnce(pctx)
		cancel()
		if len(reasons) == 0 {
			return nil
		}
		// A slow recovery says what it waits for now and then.
		if time.Since(lastLog) >= unhealthyLogInterval {
			lastLog = time.Now()
			plog.Infof("waiting for the cluster: %v", &UnhealthyError{time.Since(start), reasons})
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%v)", ctx.Err(), &UnhealthyError{time.Since(start), reasons})
		}
		if time.Now().After(deadline) {
			return &UnhealthyError{time.Since(start), reasons}
		}
		if err := sleep(ctx, healthPollInterval); err != nil {
			return fmt.Errorf("%w (%v)", err, &UnhealthyError{time.Since(start), reasons})
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Leader returns the index of the member a majority of members name as
// leader, waiting up to a few election timeouts for one.
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	deadline := time.Now().Add(max(5*c.cfg.ElectionTimeout, 5*time.Second))
	for {
		lead, err := c.leaderOnce(ctx)
		if err == nil {
			return lead, nil
		}
		if time.Now().After(deadline) {
			return -1, err
		}
		if serr := sleep(ctx, healthPollInterval); serr != nil {
			return -1, fmt.Errorf("%w (%v)", serr, err)
		}
	}
}

func (c *Cluster) leaderOnce(ctx context.Context) (int, error) {
	lv, err := c.leaderViewOnce(ctx)
	return lv.index, err
}

// leaderView is the leader a majority of members named, and the highest
// term those members reported for it.
type leaderView struct {
	index int
	id    uint64
	term  uint64
}

// leaderViewAt looks the leader up as Leader does, with its term.
func (c *Cluster) leaderViewAt(ctx context.Context) (leaderView, error) {
	deadline := time.Now().Add(max(5*c.cfg.ElectionTimeout, 5*time.Second))
	for {
		lv, err := c.leaderViewOnce(ctx)
		if err == nil {
			return lv, nil
		}
		if time.Now().After(deadline) {
			return lv, err
		}
		if serr := sleep(ctx, healthPollInterval); serr != nil {
			return lv, fmt.Errorf("%w (%v)", serr, err)
		}
	}
}

func (c *Cluster) leaderViewOnce(ctx context.Context) (leaderView, error) {
	sts := make([]*pb.StatusResponse, len(c.members))
	errs := make([]error, len(c.members))
	c.eachMember(func(i int) error {
		sts[i], errs[i] = memberStatus(ctx, c.members[i])
		return nil
	})
	votes := map[uint64]int{}
	terms := map[uint64]uint64{}
	index := map[uint64]int{}
	for i, st := range sts {
		if st != nil {
			votes[st.Leader]++
			terms[st.Leader] = max(terms[st.Leader], st.RaftTerm)
			index[st.Header.MemberId] = i
		}
	}
	for id, n := range votes {
		if i, ok := index[id]; ok && id != 0 && n > len(c.members)/2 {
			return leaderView{index: i, id: id, term: terms[id]}, nil
		}
	}
	var said []string
	for i, st := range sts {
		if errs[i] != nil {
			said = append(said, fmt.Sprintf("%s: %v", c.members[i].Name, errs[i]))
		} else {
			said = append(said, fmt.Sprintf("%s: leader %x", c.members[i].Name, st.Leader))
		}
	}
	return leaderView{index: -1}, fmt.Errorf("no leader agreed by a majority: %s", strings.Join(said, "; "))
}

// waitRevisionAdvance polls the members without a fault until their
// revision has moved n past where it was, at most polls times.
func (c *Cluster) waitRevisionAdvance(ctx context.Context, n int64, polls int, interval time.Duration) error {
	revision := func() (int64, error) {
		var errs []error
		for _, i := range c.healthyMembers() {
			st, err := memberStatus(ctx, c.members[i])
			if err == nil {
				return st.Header.Revision, nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", c.members[i].Name, err))
		}
		return 0, fmt.Errorf("no member without a fault answers: %w", errors.Join(errs...))
	}
	start, err := revision()
	if err != nil {
		return err
	}
	moved := int64(0)
	for range polls {
		if err := sleep(ctx, interval); err != nil {
			return err
		}
		rev, err := revision()
		if err != nil {
			continue
		}
		if moved = rev - start; moved >= n {
			return nil
		}
	}
	return fmt.Errorf("cluster too slow: revision moved %d of %d in %v", moved, n, time.Duration(polls)*interval)
}
