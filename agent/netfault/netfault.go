// Package netfault injects network faults on an etcd member's peer traffic:
// isolation (every packet to and from a port dropped) and latency. Two
// backends stand behind one interface: the kernel packet filter (iptables,
// needs CAP_NET_ADMIN) and a TCP proxy of the agent's own in front of the
// member's peer port (no privileges needed).
//
// Only the proxy implements Delayer: latency in the kernel would need the
// netem qdisc, which not every kernel has, while the proxy delays in user
// space anywhere. The backends also isolate differently. IPTables drops
// packets to and from the port in both directions, so every connection
// that uses the port stalls: those dialled to the member and, when every
// member listens on the same port number (one network namespace or host
// each), those it dialled to the others. The proxy sees only connections
// dialled to its own listen port; the connections the member dials to
// other members go through their proxies and keep working while it is
// blackholed, so the proxy's isolation is one-sided.
//
// IPTables isolates IPv6 too: every rule it adds with iptables it also adds
// with ip6tables (the same flavour: iptables-legacy → ip6tables-legacy),
// whenever ip6tables works here, whatever addresses the member has. Its
// rules match ports, not addresses, so they cost nothing where no IPv6
// traffic flows, while a member reached over IPv6 — an address added later,
// a peer URL naming a host that resolves to one, a listener on [::] — would
// otherwise slip through a partition. Where ip6tables is missing or does
// not work, Available says so in the log and isolation stays IPv4 only:
// hosts without IPv6 need no ip6tables.
//
// Latency, likewise, reaches only what crosses a proxy. The peer proxy
// (NewProxy) sits on the member's advertised port and sees the connections
// other members dial to it; but etcd sends messages to a member over the
// stream that member dialled to the sender, so a delay there slows the
// member's replies and not, say, the leader's heartbeats to it. Where the
// agent shares the member's network namespace and iptables works (a
// namespace, container or machine of its own), the member's own outbound
// peer connections go through the agent too: an OutboundRedirect rule in
// the nat table sends every new connection to the other members' peer
// ports to an outbound proxy (NewOutboundProxy) on 127.0.0.1, which finds
// the original destination (SO_ORIGINAL_DST) and dials it with a socket
// mark the rules let pass. Both proxies delay by the same chunk queues, so
// every peer byte to and from the member is delayed, as netem on its
// interface would. Where the proxy runs without that (members sharing one
// namespace, as on loopback, where the rule could not tell this member's
// connections from the others'), only the inbound connections are
// delayed, and the agent says so (wire.Status.DelayDirections).
//
// The redirect is installed whenever the peer proxy is, before etcd
// starts, and stays while it runs, latency or not (zero latency passes
// data straight through): the nat table only acts on a connection's first
// packet, and etcd's peer streams live as long as the members do, so a
// rule added only when a delay is set would miss every stream already
// open, and a delay would wait for etcd to reconnect. The rules are not a
// fault: healing removes the latency, not the redirect; the agent removes
// the redirect when it closes the proxy. A dead agent's rule would send
// the member's new connections to a port no one serves, so the next agent
// deals with it at start: if it adopts the member it replaces the rule in
// place (new redirect first, then the stale one goes, so that etcd cannot
// connect around the proxy in between), and otherwise it removes it.
//
// With the redirect, isolation still holds: the proxy's own dials carry
// the other members' peer port, which the DROP rules match. A connection
// etcd opens while isolated reaches the local proxy, and is closed when the
// proxy's dial times out, instead of timing out itself.
package netfault

import "time"

// Isolator cuts a port off the network and heals it again.
type Isolator interface {
	// Name is wire.BackendIPTables or wire.BackendProxy.
	Name() string
	// DropPort drops all TCP traffic to and from port, in and out.
	DropPort(port int) error
	// RecoverPort removes what DropPort added for port.
	RecoverPort(port int) error
	// Reset removes every fault this backend owns, including those an
	// earlier agent process left behind when it died.
	Reset() error
}

// Delayer adds latency to a member's peer traffic.
type Delayer interface {
	// SetLatency delays data by latency ± jitter (uniformly random), with
	// 0 ≤ jitter ≤ latency ≤ wire.MaxLatency, without reordering it.
	SetLatency(latency, jitter time.Duration) error
	// RemoveLatency stops delaying data.
	RemoveLatency() error
}
