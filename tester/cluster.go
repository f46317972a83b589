package tester

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// Bounds on calls, so that an agent or member that does not answer fails
// the case with its name instead of hanging the run.
const (
	// agentCallTimeout bounds an agent call that does not stop etcd.
	agentCallTimeout = 30 * time.Second
	// agentStopTimeout bounds calls that stop etcd (Stop, Cleanup,
	// Archive, Terminate): the agent's SIGTERM and SIGINT waits, plus a
	// member without quorum taking ~6 s to exit on SIGTERM, plus margin.
	agentStopTimeout = 60 * time.Second
	// agentProbeTimeout bounds the Status every agent must answer before
	// a run starts.
	agentProbeTimeout = 5 * time.Second
	// memberCallTimeout bounds one request to one etcd member while
	// polling its health.
	memberCallTimeout = 2 * time.Second
	// healthPollInterval is the granularity of measured recovery times.
	healthPollInterval = 100 * time.Millisecond
	// minBootstrapTimeout is the least a new cluster gets to become
	// healthy: forming one is not what a short -recovery-timeout measures.
	minBootstrapTimeout = 30 * time.Second
	// unhealthyLogInterval is how often WaitHealthy logs what it waits
	// for.
	unhealthyLogInterval = 2 * time.Second
)

// Member is one etcd member and the agent that runs it.
type Member struct {
	Name       string
	Host       string
	ClientPort int
	PeerPort   int
	// ClientURL is listened on and advertised; PeerURL is advertised to
	// peers, ListenPeerURL listened on (PeerURL's port + 1 behind the
	// agent's proxy with -peer-proxy, else PeerURL).
	ClientURL, PeerURL, ListenPeerURL string

	agent client.Agent
	cli   *clientv3.Client // pinned to ClientURL alone
}

// Cluster is the etcd cluster under test: its agents, its members' specs
// and a client per member. It records every fault it injects until it has
// healed it, so that a failed case or an interrupted run can undo exactly
// what was done.
type Cluster struct {
	cfg     *settings
	members []*Member
	token   string // --initial-cluster-token of the current bootstrap
	boots   int

	mu     sync.Mutex
	rnd    *rand.Rand
	faults []injection // injected and not healed, oldest first
}

// faultKind is a fault as the Cluster undoes it.
type faultKind string

const (
	faultStopped faultKind = "stopped"           // undo: Restart
	faultPaused  faultKind = "paused"            // undo: Resume
	faultDropped faultKind = "peer port dropped" // undo: RecoverPort
	faultDelayed faultKind = "peer traffic delayed"
	faultRemoved faultKind = "removed from the cluster" // undo: MemberAdd and Start
)

type injection struct {
	member int
	kind   faultKind
}

func newCluster(s *settings, agents []client.Agent) (*Cluster, error) {
	c := &Cluster{cfg: s, rnd: rand.New(rand.NewPCG(uint64(s.Seed), 0))}
	for i, a := range agents {
		host := s.hosts[i]
		m := &Member{
			Name:       memberName(i),
			Host:       host,
			ClientPort: s.ClientPorts[i],
			PeerPort:   s.PeerPorts[i],
			ClientURL:  "http://" + net.JoinHostPort(host, strconv.Itoa(s.ClientPorts[i])),
			PeerURL:    "http://" + net.JoinHostPort(host, strconv.Itoa(s.PeerPorts[i])),
			agent:      a,
		}
		m.ListenPeerURL = m.PeerURL
		if s.PeerProxy {
			m.ListenPeerURL = "http://" + net.JoinHostPort(host, strconv.Itoa(s.PeerPorts[i]+1))
		}
		// The dial does not block: a member that is down costs failed
		// requests, which is what the health checks want to see. gRPC's
		// default reconnect backoff grows to minutes; a member back up
		// must be seen within a poll, or recovery times measure the
		// backoff.
		cli, err := clientv3.New(clientv3.Config{
			Endpoints: []string{m.ClientURL},
			Logger:    zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: healthPollInterval},
				MinConnectTimeout: memberCallTimeout,
			})},
		})
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("client for %s at %s: %w", m.Name, m.ClientURL, err)
		}
		m.cli = cli
		c.members = append(c.members, m)
	}
	return c, nil
}

// Members returns the members in agent order.
func (c *Cluster) Members() []*Member { return c.members }

// ClientURLs returns every member's client URL.
func (c *Cluster) ClientURLs() []string {
	urls := make([]string, len(c.members))
	for i, m := range c.members {
		urls[i] = m.ClientURL
	}
	return urls
}

// Close closes the member clients; it leaves etcd and the agents as they
// are.
func (c *Cluster) Close() error {
	var errs []error
	for _, m := range c.members {
		if m.cli != nil {
			if err := m.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("close client of %s: %w", m.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (c *Cluster) setRand(r *rand.Rand) {
	c.mu.Lock()
	c.rnd = r
	c.mu.Unlock()
}

// rand is the seeded source of the running case.
func (c *Cluster) rand() *rand.Rand {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rnd
}

// agentCall runs f on member i's agent with a bounded context and names
// the member and agent in its error.
func (c *Cluster) agentCall(ctx context.Context, i int, timeout time.Duration, what string, f func(context.Context, client.Agent) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m := c.members[i]
	if err := f(ctx, m.agent); err != nil {
		return fmt.Errorf("%s %s (agent %s): %w", what, m.Name, m.agent.Endpoint(), err)
	}
	return nil
}

// eachMember runs f on every member at once and joins their errors.
func (c *Cluster) eachMember(f func(i int) error) error {
	errs := make([]error, len(c.members))
	var wg sync.WaitGroup
	for i := range c.members {
		wg.Go(func() { errs[i] = f(i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// AgentStatuses asks every agent for its status within timeout.
func (c *Cluster) AgentStatuses(ctx context.Context, timeout time.Duration) ([]wire.Status, error) {
	sts := make([]wire.Status, len(c.members))
	err := c.eachMember(func(i int) error {
		return c.agentCall(ctx, i, timeout, "status of", func(ctx context.Context, a client.Agent) error {
			st, err := a.Status(ctx)
			sts[i] = st
			return err
		})
	})
	return sts, err
}

// ClearLeftovers undoes what an earlier run may have left on the agents,
// given their statuses: isolated ports, latency, and etcd with its data.
func (c *Cluster) ClearLeftovers(ctx context.Context, sts []wire.Status) error {
	return c.eachMember(func(i int) error {
		var errs []error
		for _, p := range sts[i].DroppedPorts {
			errs = append(errs, c.agentCall(ctx, i, agentCallTimeout, fmt.Sprintf("recover port %d left dropped on", p), func(ctx context.Context, a client.Agent) error {
				return a.RecoverPort(ctx, p)
			}))
		}
		if sts[i].Latency > 0 || sts[i].LatencyJitter > 0 {
			errs = append(errs, c.agentCall(ctx, i, agentCallTimeout, "remove latency left on", func(ctx context.Context, a client.Agent) error {
				return a.RemoveLatency(ctx)
			}))
		}
		errs = append(errs, c.agentCall(ctx, i, agentStopTimeout, "terminate leftovers of", func(ctx context.Context, a client.Agent) error {
			return a.Terminate(ctx)
		}))
		return errors.Join(errs...)
	})
}

// Terminate stops every member and removes its data.
func (c *Cluster) Terminate(ctx context.Context) error {
	// One member at a time: stopped all at once, a leader hands its
	// leadership to a member that is itself stopping and etcd waits ~7 s
	// for a transfer that cannot happen.
	var errs []error
	for i := range c.members {
		err := c.agentCall(ctx, i, agentStopTimeout, "terminate", func(ctx context.Context, a client.Agent) error { return a.Terminate(ctx) })
		if err != nil {
			// Its faults stay on record: the report must not call a
			// member healed that an unreachable agent left down.
			errs = append(errs, err)
			continue
		}
		c.forgetProcessFaults(i)
	}
	return errors.Join(errs...)
}

// Archive stops every member and has its agent move its data and log to an
// archive directory named after label. It returns the directory of each
// member that was archived, by member name.
func (c *Cluster) Archive(ctx context.Context, label string) (map[string]string, error) {
	dirs := make([]string, len(c.members))
	err := c.eachMember(func(i int) error {
		return c.agentCall(ctx, i, agentStopTimeout, "archive", func(ctx context.Context, a client.Agent) error {
			d, err := a.Archive(ctx, label)
			dirs[i] = d
			if err == nil {
				c.forgetProcessFaults(i)
			}
			return err
		})
	})
	out := map[string]string{}
	for i, d := range dirs {
		if d != "" {
			out[c.members[i].Name] = d
		}
	}
	return out, err
}

// args is member m's etcd command line; the agent adds --data-dir.
func (c *Cluster) args(m *Member, state, initialCluster string) []string {
	return []string{
		"--name", m.Name,
		"--listen-client-urls", m.ClientURL,
		"--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.ListenPeerURL,
		"--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", initialCluster,
		"--initial-cluster-token", c.token,
		"--initial-cluster-state", state,
		"--heartbeat-interval", strconv.FormatInt(c.cfg.HeartbeatInterval.Milliseconds(), 10),
		"--election-timeout", strconv.FormatInt(c.cfg.ElectionTimeout.Milliseconds(), 10),
		"--snapshot-count", strconv.Itoa(c.cfg.SnapshotCount),
		"--snapshot-catchup-entries", strconv.Itoa(c.cfg.SnapshotCatchupEntries),
	}
}

// Bootstrap starts a new cluster, one member per agent, with a fresh
// cluster token, and waits until it is healthy. If a member cannot start,
// the members already started are terminated; if the cluster does not
// become healthy, every member is archived for a post-mortem.
func (c *Cluster) Bootstrap(ctx context.Context) error {
	if err := c.healNetwork(ctx); err != nil {
		return fmt.Errorf("bootstrap: faults of the previous cluster: %w", err)
	}
	for i := range c.members {
		c.forgetProcessFaults(i)
	}
	c.boots++
	c.token = fmt.Sprintf("etcd-tester-%d-%d-%d", c.cfg.Seed, c.boots, time.Now().UnixNano())
	var initial []string
	for _, m := range c.members {
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	ic := strings.Join(initial, ",")
	for i, m := range c.members {
		var pid int
		err := c.agentCall(ctx, i, agentCallTimeout, "start", func(ctx context.Context, a client.Agent) error {
			var err error
			pid, err = a.Start(ctx, c.args(m, "new", ic))
			return err
		})
		if err != nil {
			var errs []error
			for k := range i {
				errs = append(errs, c.agentCall(context.WithoutCancel(ctx), k, agentStopTimeout, "terminate", func(ctx context.Context, a client.Agent) error { return a.Terminate(ctx) }))
			}
			if terr := errors.Join(errs...); terr != nil {
				return fmt.Errorf("bootstrap: %w; terminating the members started before it: %v", err, terr)
			}
			return fmt.Errorf("bootstrap: %w", err)
		}
		plog.Infof("started %s (pid %d) on agent %s: client %s, peer %s (listening on %s)", m.Name, pid, m.agent.Endpoint(), m.ClientURL, m.PeerURL, m.ListenPeerURL)
	}
	if err := c.WaitHealthy(ctx, max(c.cfg.RecoveryTimeout, minBootstrapTimeout)); err != nil {
		dirs, aerr := c.Archive(context.WithoutCancel(ctx), fmt.Sprintf("bootstrap%d_unhealthy", c.boots))
		return fmt.Errorf("bootstrap: %w (member data archived: %v%s)", err, dirs, errSuffix(aerr))
	}
	return nil
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return "; " + err.Error()
}

// UnhealthyError says which members were not healthy when time ran out,
// and why.
type UnhealthyError struct {
	After   time.Duration
	Reasons map[string]string // member name → reason
}

func (e *UnhealthyError) Error() string {
	names := make([]string, 0, len(e.Reasons))
	for n := range e.Reasons {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + ": " + e.Reasons[n]
	}
	return fmt.Sprintf("cluster not healthy after %v: %s", e.After.Round(time.Millisecond), strings.Join(parts, "; "))
}

// healthKey is written to prove that a member takes writes.
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
	return st, nil
}

// memberHealth checks that m answers, reports no error, has a leader and
// takes a write (which needs a quorum). It returns m's status.
//
// A write, not a read, as upstream's tester did, and for a reason found
// here: etcd v3.6.16 does not update a member's applied index when it
// applies a snapshot, so a member re-added from a snapshot on an idle
// cluster refuses to publish itself ("too many requests": commit runs
// more than 5000 ahead of the stale applied index) until some entry is
// applied after the snapshot. A probe that only reads would wait for ever
// on a cluster that any client write would heal.
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
	if _, err := m.cli.Put(gctx, healthKey, m.Name); err != nil {
		return st, fmt.Errorf("write: %w", err)
	}
	return st, nil
}

// healthOnce checks every member once; it returns the reason of each
// unhealthy member, none if all are healthy and agree on one leader that
// is one of them.
func (c *Cluster) healthOnce(ctx context.Context) map[string]string {
	sts := make([]*pb.StatusResponse, len(c.members))
	reasons := map[string]string{}
	var mu sync.Mutex
	c.eachMember(func(i int) error {
		st, err := memberHealth(ctx, c.members[i])
		mu.Lock()
		defer mu.Unlock()
		sts[i] = st
		if err != nil {
			reasons[c.members[i].Name] = err.Error()
		}
		return nil
	})
	if len(reasons) > 0 {
		return reasons
	}
	ids := map[uint64]string{}
	for i, st := range sts {
		ids[st.Header.MemberId] = c.members[i].Name
	}
	lead := sts[0].Leader
	agreed := true
	for _, st := range sts {
		agreed = agreed && st.Leader == lead
	}
	if _, known := ids[lead]; agreed && known {
		return nil
	}
	for i, st := range sts {
		who := ids[st.Leader]
		if who == "" {
			who = "not a member"
		}
		reasons[c.members[i].Name] = fmt.Sprintf("sees leader %x (%s); members disagree", st.Leader, who)
	}
	return reasons
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
	sts := make([]*pb.StatusResponse, len(c.members))
	errs := make([]error, len(c.members))
	c.eachMember(func(i int) error {
		sts[i], errs[i] = memberStatus(ctx, c.members[i])
		return nil
	})
	votes := map[uint64]int{}
	index := map[uint64]int{}
	for i, st := range sts {
		if st != nil {
			votes[st.Leader]++
			index[st.Header.MemberId] = i
		}
	}
	for id, n := range votes {
		if i, ok := index[id]; ok && id != 0 && n > len(c.members)/2 {
			return i, nil
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
	return -1, fmt.Errorf("no leader agreed by a majority: %s", strings.Join(said, "; "))
}

// firstWrite puts a key through every member at once, again and again,
// and returns when the first put succeeds: how soon the cluster took a
// write again.
func (c *Cluster) firstWrite(ctx context.Context) (time.Time, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		first time.Time
		last  = map[string]error{}
	)
	var wg sync.WaitGroup
	for _, m := range c.members {
		wg.Go(func() {
			for ctx.Err() == nil {
				pctx, pcancel := context.WithTimeout(ctx, memberCallTimeout)
				_, err := m.cli.Put(pctx, "/etcd-tester/first-write", m.Name)
				pcancel()
				mu.Lock()
				if err == nil {
					if first.IsZero() {
						first = time.Now()
					}
					mu.Unlock()
					cancel()
					return
				}
				last[m.Name] = err
				mu.Unlock()
				sleep(ctx, 20*time.Millisecond)
			}
		})
	}
	wg.Wait()
	if first.IsZero() {
		return first, fmt.Errorf("no put succeeded: %v (last errors: %v)", ctx.Err(), last)
	}
	return first, nil
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

// healthyMembers are the members without a recorded fault.
func (c *Cluster) healthyMembers() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for i := range c.members {
		if !slices.ContainsFunc(c.faults, func(f injection) bool { return f.member == i }) {
			out = append(out, i)
		}
	}
	return out
}

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

// Faults. Each primitive records the fault once it may have taken effect:
// on success, or on an error after which the agent's status shows it (a
// call whose reply was lost may still have acted).

func (c *Cluster) record(i int, k faultKind) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.faults {
		if f == (injection{i, k}) {
			return
		}
	}
	c.faults = append(c.faults, injection{i, k})
}

func (c *Cluster) injected(ctx context.Context, i int, k faultKind, err error) error {
	if err == nil || c.present(ctx, i, k) {
		c.record(i, k)
	}
	return err
}

// present asks member i's agent whether fault k is in place.
func (c *Cluster) present(ctx context.Context, i int, k faultKind) bool {
	var st wire.Status
	err := c.agentCall(context.WithoutCancel(ctx), i, agentProbeTimeout, "status of", func(ctx context.Context, a client.Agent) error {
		var err error
		st, err = a.Status(ctx)
		return err
	})
	if err != nil {
		// Cannot tell: assume it is, so that healing tries.
		return k != faultRemoved
	}
	switch k {
	case faultStopped:
		return st.State != wire.StateStarted && st.State != wire.StatePaused
	case faultPaused:
		return st.State == wire.StatePaused
	case faultDropped:
		return slices.Contains(st.DroppedPorts, c.members[i].PeerPort)
	case faultDelayed:
		return st.Latency > 0 || st.LatencyJitter > 0
	}
	return false
}

func (c *Cluster) stopMember(ctx context.Context, i int) error {
	err := c.agentCall(ctx, i, agentStopTimeout, "stop (SIGTERM)", func(ctx context.Context, a client.Agent) error { return a.Stop(ctx) })
	return c.injected(ctx, i, faultStopped, err)
}

func (c *Cluster) killMember(ctx context.Context, i int) error {
	err := c.agentCall(ctx, i, agentCallTimeout, "kill", func(ctx context.Context, a client.Agent) error { return a.Kill(ctx) })
	return c.injected(ctx, i, faultStopped, err)
}

func (c *Cluster) pauseMember(ctx context.Context, i int) error {
	err := c.agentCall(ctx, i, agentCallTimeout, "pause (SIGSTOP)", func(ctx context.Context, a client.Agent) error { return a.Pause(ctx) })
	return c.injected(ctx, i, faultPaused, err)
}

func (c *Cluster) dropPeerPort(ctx context.Context, i int) error {
	p := c.members[i].PeerPort
	err := c.agentCall(ctx, i, agentCallTimeout, fmt.Sprintf("drop peer port %d of", p), func(ctx context.Context, a client.Agent) error { return a.DropPort(ctx, p) })
	return c.injected(ctx, i, faultDropped, err)
}

func (c *Cluster) delayPeer(ctx context.Context, i int, lat, jitter time.Duration) error {
	err := c.agentCall(ctx, i, agentCallTimeout, fmt.Sprintf("delay peer traffic by %v±%v of", lat, jitter), func(ctx context.Context, a client.Agent) error {
		st, err := a.Status(ctx)
		if err != nil {
			return err
		}
		if !st.PeerProxy {
			return errors.New("the agent does not proxy this member's peer traffic (started without -peer-proxy?), so it cannot delay it")
		}
		return a.SetLatency(ctx, lat, jitter)
	})
	return c.injected(ctx, i, faultDelayed, err)
}

// removeMember stops member i with SIGQUIT, archiving its data, and
// removes it from the membership. The fault is recorded first: even a
// half-done removal needs the member re-added with fresh data.
func (c *Cluster) removeMember(ctx context.Context, i int) error {
	c.record(i, faultRemoved)
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

// rejoin adds member i back with fresh data: MemberAdd with its peer URL,
// then start it with --initial-cluster-state existing and the current
// membership.
func (c *Cluster) rejoin(ctx context.Context, i int) error {
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
		id, name, err := findMember(ctx, cli, m.PeerURL)
		if err != nil {
			return err
		}
		if id != 0 && name != "" {
			if _, err := cli.MemberRemove(ctx, id); err != nil {
				return fmt.Errorf("remove the old %s (id %x) before re-adding it: %w", m.Name, id, err)
			}
			id = 0
		}
		var members []*pb.Member
		if id == 0 {
			// etcd refuses to add a member until the leader has been
			// connected to a quorum for a while; retry that.
			for {
				resp, err := cli.MemberAdd(ctx, []string{m.PeerURL})
				if err == nil {
					members = resp.Members
					plog.Infof("added %s back as member %x", m.Name, resp.Member.ID)
					break
				}
				if !errors.Is(err, rpctypes.ErrUnhealthy) && !errors.Is(err, rpctypes.ErrMemberNotEnoughStarted) {
					return fmt.Errorf("add %s with peer URL %s: %w", m.Name, m.PeerURL, err)
				}
				if serr := sleep(ctx, 500*time.Millisecond); serr != nil {
					return fmt.Errorf("add %s with peer URL %s: %w (%v)", m.Name, m.PeerURL, serr, err)
				}
			}
		} else {
			list, err := cli.MemberList(ctx)
			if err != nil {
				return fmt.Errorf("member list: %w", err)
			}
			members = list.Members
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

// undo heals one fault.
func (c *Cluster) undo(ctx context.Context, f injection) error {
	i := f.member
	switch f.kind {
	case faultStopped:
		return c.agentCall(ctx, i, agentCallTimeout, "restart", func(ctx context.Context, a client.Agent) error {
			_, err := a.Restart(ctx)
			return err
		})
	case faultPaused:
		return c.agentCall(ctx, i, agentCallTimeout, "resume (SIGCONT)", func(ctx context.Context, a client.Agent) error { return a.Resume(ctx) })
	case faultDropped:
		p := c.members[i].PeerPort
		return c.agentCall(ctx, i, agentCallTimeout, fmt.Sprintf("recover peer port %d of", p), func(ctx context.Context, a client.Agent) error { return a.RecoverPort(ctx, p) })
	case faultDelayed:
		return c.agentCall(ctx, i, agentCallTimeout, "remove latency of", func(ctx context.Context, a client.Agent) error { return a.RemoveLatency(ctx) })
	case faultRemoved:
		return c.rejoin(ctx, i)
	}
	return fmt.Errorf("unknown fault %q", f.kind)
}

// Heal undoes every recorded fault, newest first. A fault whose undoing
// fails stays recorded (unless the agent shows it gone) and the others are
// still healed; the error names each.
func (c *Cluster) Heal(ctx context.Context) error {
	return c.heal(ctx, func(injection) bool { return true })
}

func (c *Cluster) heal(ctx context.Context, which func(injection) bool) error {
	c.mu.Lock()
	fs := slices.Clone(c.faults)
	c.mu.Unlock()
	var errs []error
	for k := len(fs) - 1; k >= 0; k-- {
		f := fs[k]
		if !which(f) {
			continue
		}
		if err := c.undo(ctx, f); err != nil && (f.kind == faultRemoved || c.present(ctx, f.member, f.kind)) {
			errs = append(errs, fmt.Errorf("heal %s of %s: %w", f.kind, c.members[f.member].Name, err))
			continue
		}
		c.forget(f)
	}
	return errors.Join(errs...)
}

func (c *Cluster) forget(f injection) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = slices.DeleteFunc(c.faults, func(g injection) bool { return g == f })
}

// healNetwork undoes the network faults: the agents keep them across
// etcd restarts.
func (c *Cluster) healNetwork(ctx context.Context) error {
	return c.heal(ctx, func(f injection) bool { return f.kind == faultDropped || f.kind == faultDelayed })
}

// forgetProcessFaults drops member i's records that ended with its process
// (Terminate, Archive, a new bootstrap): a stopped, paused or removed etcd
// is no longer there.
func (c *Cluster) forgetProcessFaults(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = slices.DeleteFunc(c.faults, func(f injection) bool {
		return f.member == i && (f.kind == faultStopped || f.kind == faultPaused || f.kind == faultRemoved)
	})
}

// Faults describes the faults injected and not healed, oldest first, as
// "etcd-1: stopped".
func (c *Cluster) Faults() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.faults))
	for k, f := range c.faults {
		out[k] = c.members[f.member].Name + ": " + string(f.kind)
	}
	return out
}

// Targets names the members with a fault injected and not healed.
func (c *Cluster) Targets() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, f := range c.faults {
		if n := c.members[f.member].Name; !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}
