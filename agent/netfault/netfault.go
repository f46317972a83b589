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
