package tester

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	// EtcdVersion is the release of the agent's etcd binary, learned from
	// its Status before the first start; it decides the member's flags.
	EtcdVersion wire.EtcdVersion

	agent client.Agent
	cli   *clientv3.Client // pinned to ClientURL alone
	// id is the member's raft ID as its last status said, to name the
	// leaders other members report.
	id atomic.Uint64
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
	// gone holds, per member, the error of the call that found its agent
	// unreachable for the client's whole retry window; later calls to it
	// fail at once with that error, so that an agent gone for good costs
	// the run one retry window, not one per step.
	gone map[int]error
	// pin holds the members a replayed case must hit.
	pin pinned
	// drawn records the faults the running case drew.
	drawn []string
	// logPos is where the logs checker last read each member's log.
	logPos logPositions
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
	m := c.members[i]
	if err := c.goneErr(i); err != nil {
		return fmt.Errorf("%s %s (agent %s): gone: %w", what, m.Name, m.agent.Endpoint(), err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := f(ctx, m.agent); err != nil {
		if errors.Is(err, client.ErrUnreachable) {
			c.mu.Lock()
			if c.gone == nil {
				c.gone = map[int]error{}
			}
			c.gone[i] = err
			c.mu.Unlock()
		}
		return fmt.Errorf("%s %s (agent %s): %w", what, m.Name, m.agent.Endpoint(), err)
	}
	return nil
}

func (c *Cluster) goneErr(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gone[i]
}

// Gone returns an error naming every agent found unreachable for a whole
// retry window, nil if there is none: the run cannot go on without them.
func (c *Cluster) Gone() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for i, m := range c.members {
		if err := c.gone[i]; err != nil {
			errs = append(errs, fmt.Errorf("%s's agent %s is gone: %w", m.Name, m.agent.Endpoint(), err))
		}
	}
	return errors.Join(errs...)
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
			if err == nil {
				// The member's flags depend on its binary's release.
				c.members[i].EtcdVersion, err = StatusEtcdVersion(a.Endpoint(), st)
			}
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
	return append([]string{
		"--name", m.Name,
		"--listen-client-urls", m.ClientURL,
		"--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.ListenPeerURL,
		"--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", initialCluster,
		"--initial-cluster-token", c.token,
		"--initial-cluster-state", state,
	}, EtcdFlags(m.EtcdVersion, c.etcdSettings())...)
}

// etcdSettings are the tuning settings every member gets, whatever its
// release calls them.
func (c *Cluster) etcdSettings() EtcdSettings {
	return EtcdSettings{
		HeartbeatInterval:      c.cfg.HeartbeatInterval,
		ElectionTimeout:        c.cfg.ElectionTimeout,
		SnapshotCount:          c.cfg.SnapshotCount,
		SnapshotCatchupEntries: c.cfg.SnapshotCatchupEntries,
		CorruptCheck:           c.cfg.EtcdCorruptCheck,
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
	c.markLogs(ctx)
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
	if err := c.WaitHealthy(ctx, c.cfg.bootstrapTimeout()); err != nil {
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

// agents returns every member's agent, in member order.
func (c *Cluster) agents() []client.Agent {
	out := make([]client.Agent, len(c.members))
	for i, m := range c.members {
		out[i] = m.agent
	}
	return out
}
