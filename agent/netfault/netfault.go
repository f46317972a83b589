// Package netfault injects network faults on an etcd member's peer traffic:
// isolation (every packet to and from a port dropped) and latency. Two
// backends stand behind one interface: the kernel packet filter (iptables,
// needs CAP_NET_ADMIN) and a TCP proxy of the agent's own in front of the
// member's peer port (no privileges needed).
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
	SetLatency(latency, jitter time.Duration) error
	RemoveLatency() error
}
