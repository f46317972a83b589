package tester

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// Network faults: the member's peer traffic dropped or delayed. They are
// the agent's and outlive etcd restarts.

// blackhole drops all peer traffic to and from the member's peer port.
type blackhole struct{}

func (blackhole) prefix() string { return "BLACKHOLE_PEER_PORT_TX_RX" }
func (blackhole) describe() string {
	return "drop all peer traffic to and from the member's peer port, then let it through again,"
}

// requires: a packet filter cuts a member off both ways only if it runs
// in its own network namespace; agents sharing a host share one, and the
// proxy backend sees only inbound connections.
func (blackhole) requires(env Env) error {
	seen := map[string]bool{}
	for _, h := range env.Hosts {
		if seen[h] {
			return fmt.Errorf("agents share host %s: with a shared host a member's outbound connections to the others cannot be cut, so isolation would be one-way; give every agent its own host (network namespace)", h)
		}
		seen[h] = true
	}
	// The filter drops the member's own peer port both ways: its
	// connections to another member's peer port are cut only if that
	// port is the same number.
	for i, p := range env.PeerPorts {
		if p != env.PeerPorts[0] {
			return fmt.Errorf("%s's peer port %d differs from %s's %d: dropping a member's peer port cuts its connections to the others only if they use the same port, so isolation would be one-way; give every member the same peer port (one host each)", memberName(i), p, memberName(0), env.PeerPorts[0])
		}
	}
	for i, b := range env.Backends {
		if b != wire.BackendIPTables {
			return fmt.Errorf("agent of %s uses the %q network backend: with the proxy backend a member's outbound connections to the others cannot be cut, so isolation would be one-way; run the agents with iptables (CAP_NET_ADMIN)", memberName(i), b)
		}
	}
	return nil
}

func (b blackhole) draw(*rand.Rand) Fault { return b }
func (blackhole) String() string          { return "peer port dropped" }
func (blackhole) Scope() Scope            { return ScopeAgent }

func (blackhole) Inject(ctx context.Context, c *Cluster, i int) error {
	p := c.members[i].PeerPort
	return c.agentCall(ctx, i, agentCallTimeout, fmt.Sprintf("drop peer port %d of", p), func(ctx context.Context, a client.Agent) error { return a.DropPort(ctx, p) })
}
func (blackhole) Undo(ctx context.Context, c *Cluster, i int) error {
	p := c.members[i].PeerPort
	return c.agentCall(ctx, i, agentCallTimeout, fmt.Sprintf("recover peer port %d of", p), func(ctx context.Context, a client.Agent) error { return a.RecoverPort(ctx, p) })
}
func (blackhole) Present(c *Cluster, i int, st wire.Status) bool {
	return slices.Contains(st.DroppedPorts, c.members[i].PeerPort)
}

// delay adds latency to the targets' peer traffic; latency draws the
// delay of one injection.
type delay struct {
	random  bool
	latency func(r *rand.Rand) (lat, jitter time.Duration)
	text    string
}

func (d delay) prefix() string {
	if d.random {
		return "RANDOM_DELAY_PEER_PORT_TX_RX"
	}
	return "DELAY_PEER_PORT_TX_RX"
}
func (d delay) describe() string { return d.text }

// between: where agents delay their member's peer traffic both ways
// (Status.DelayDirections), a byte from one target to another crosses
// both targets' delays.
func (d delay) between() string {
	return "between two of the targets the delay is twice that where agents delay both directions (a byte crosses both agents' proxies)"
}
func (d delay) requires(env Env) error {
	if !env.PeerProxy {
		return errors.New("needs -peer-proxy: only the agent's peer proxy can delay traffic (this kernel has no netem)")
	}
	return nil
}
func (d delay) draw(r *rand.Rand) Fault {
	lat, jitter := d.latency(r)
	return delayed{lat, jitter}
}

// fixedDelay returns 5 election timeouts ±10%: long enough that heartbeats
// miss and followers start elections.
func fixedDelay(election time.Duration) delay {
	lat := min(5*election, wire.MaxLatency)
	return delay{
		latency: func(*rand.Rand) (time.Duration, time.Duration) { return lat, lat / 10 },
		text:    fmt.Sprintf("delay peer traffic by %v ±10%% (5 election timeouts), then remove the delay,", lat),
	}
}

// randomDelay draws the latency per injection, uniform in
// [election/10, 5 × election], from the case's seeded source.
func randomDelay(election time.Duration) delay {
	lo, hi := election/10, min(5*election, wire.MaxLatency)
	return delay{
		random: true,
		latency: func(r *rand.Rand) (time.Duration, time.Duration) {
			lat := lo + time.Duration(r.Int64N(int64(hi-lo)+1))
			return lat, lat / 10
		},
		text: fmt.Sprintf("delay peer traffic by a random %v..%v ±10%%, then remove the delay,", lo, hi),
	}
}

// delayed is the peer traffic of a member delayed by lat ± jitter.
type delayed struct{ lat, jitter time.Duration }

func (delayed) String() string { return "peer traffic delayed" }
func (delayed) Scope() Scope   { return ScopeAgent }

func (d delayed) Inject(ctx context.Context, c *Cluster, i int) error {
	return c.agentCall(ctx, i, agentCallTimeout, fmt.Sprintf("delay peer traffic by %v±%v of", d.lat, d.jitter), func(ctx context.Context, a client.Agent) error {
		st, err := a.Status(ctx)
		if err != nil {
			return err
		}
		if !st.PeerProxy {
			return errors.New("the agent does not proxy this member's peer traffic (started without -peer-proxy?), so it cannot delay it")
		}
		return a.SetLatency(ctx, d.lat, d.jitter)
	})
}
func (delayed) Undo(ctx context.Context, c *Cluster, i int) error {
	return c.agentCall(ctx, i, agentCallTimeout, "remove latency of", func(ctx context.Context, a client.Agent) error { return a.RemoveLatency(ctx) })
}
func (delayed) Present(_ *Cluster, _ int, st wire.Status) bool {
	return st.Latency > 0 || st.LatencyJitter > 0
}
