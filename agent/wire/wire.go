// Package wire is the RPC contract between etcd-agent and its callers: the
// service and method names, and the argument and reply types that travel over
// Go net/rpc on HTTP. The agent (package agent) serves it and the typed client
// (package agent/client) calls it; neither defines a wire type of its own, so
// the two sides cannot drift apart.
//
// The contract is usable from a plain net/rpc client:
//
//	c, _ := rpc.DialHTTP("tcp", "127.0.0.1:9027")
//	var pid int
//	err := c.Call(wire.MethodStart, []string{"--name", "etcd-0"}, &pid)
package wire

import (
	"fmt"
	"time"
)

// ServiceName is the net/rpc service name the agent registers.
const ServiceName = "Agent"

// DefaultPort is the agent's default listen port.
const DefaultPort = 9027

// Method names, as net/rpc wants them ("Service.Method"). The comment on each
// gives the argument and reply types.
const (
	MethodStart         = ServiceName + ".RPCStart"         // []string (etcd argv without argv[0]) → int (pid)
	MethodStop          = ServiceName + ".RPCStop"          // struct{} → struct{}
	MethodRestart       = ServiceName + ".RPCRestart"       // struct{} → int (pid)
	MethodKill          = ServiceName + ".RPCKill"          // struct{} → struct{}
	MethodPause         = ServiceName + ".RPCPause"         // struct{} → struct{}
	MethodResume        = ServiceName + ".RPCResume"        // struct{} → struct{}
	MethodCleanup       = ServiceName + ".RPCCleanup"       // struct{} → struct{}
	MethodArchive       = ServiceName + ".RPCArchive"       // string (label) → Archive
	MethodTerminate     = ServiceName + ".RPCTerminate"     // struct{} → struct{}
	MethodDropPort      = ServiceName + ".RPCDropPort"      // int (port) → struct{}
	MethodRecoverPort   = ServiceName + ".RPCRecoverPort"   // int (port) → struct{}
	MethodSetLatency    = ServiceName + ".RPCSetLatency"    // []int{ms, rv} → struct{}
	MethodRemoveLatency = ServiceName + ".RPCRemoveLatency" // struct{} → struct{}
	MethodStatus        = ServiceName + ".RPCStatus"        // struct{} → Status
	MethodKeepFaults    = ServiceName + ".RPCKeepFaults"    // time.Duration (lease) → time.Time (its end)
)

// Every fault an agent injects (Stop, Kill, Pause, DropPort, SetLatency)
// is held on a lease: each fault call starts the lease, or lengthens it to
// at least the agent's default (its -fault-lease flag), and
// MethodKeepFaults renews it for the given duration from now (which may
// also shorten it). When the lease ends with a fault in place, the agent
// heals on its own — removes isolation and latency, resumes a paused etcd,
// restarts an etcd that Stop or Kill ended — and reports it in
// Status.FaultsExpiredAt and FaultsExpired. A tester renews the lease
// while it holds faults, so that faults never outlive a tester that died.
//
// Stop counts as a fault: the tester stops members only as one (the
// SIGTERM cases). To stop a member for good, Terminate or Archive it,
// which no lease expiry undoes.
const (
	MinFaultLease = 100 * time.Millisecond
	MaxFaultLease = 24 * time.Hour
)

// Failpoint methods. They work when the agent's etcd binary was built with
// gofail failpoints (`make build FAILPOINTS=1`; Status.Failpoints says so)
// and etcd is running: the agent starts such an etcd with GOFAIL_HTTP on a
// loopback port of its own and relays these calls to it. A failpoint armed
// in one etcd process is gone once that process exits: a restarted etcd
// starts with every failpoint disarmed.
const (
	MethodFailpoints      = ServiceName + ".RPCFailpoints"      // struct{} → []Failpoint (every failpoint of the binary)
	MethodArmFailpoint    = ServiceName + ".RPCArmFailpoint"    // ArmFailpoint → struct{}
	MethodDisarmFailpoint = ServiceName + ".RPCDisarmFailpoint" // string (name) → struct{}; disarming a disarmed failpoint is not an error
	MethodFailpointCount  = ServiceName + ".RPCFailpointCount"  // string (name) → int (times its term acted since it was armed)
)

// State is the lifecycle state of the etcd process an agent manages.
type State string

const (
	StateUninitialized State = "uninitialized" // never started
	StateStarted       State = "started"       // running
	StateStopped       State = "stopped"       // stopped or killed; data kept
	StatePaused        State = "paused"        // SIGSTOPped
	StateTerminated    State = "terminated"    // stopped and data removed
)

// Network-fault backends an agent can use.
const (
	BackendIPTables = "iptables" // kernel packet filter; needs CAP_NET_ADMIN
	BackendProxy    = "proxy"    // the agent's own TCP proxy in front of the peer port
)

// Values of Status.DelayDirections.
const (
	// DelayBoth: latency delays all of the member's peer traffic, on the
	// connections other members dial to it and on those it dials to them,
	// each way, as netem on its interface would.
	DelayBoth = "both"
	// DelayInbound: latency delays only the connections other members dial
	// to the member (each way), not those it dials to them, over which the
	// others send it most of their messages (a leader's heartbeats to a
	// follower among them).
	DelayInbound = "inbound"
)

// Limits on fault arguments.
const (
	MaxLatency = 60 * time.Second
	MinPort    = 1
	MaxPort    = 65535

	// MaxFailpointSleep bounds the ms of a failpoint's sleep(ms) term.
	MaxFailpointSleep = 60 * time.Second
	// MaxFailpointTerm bounds the length of a failpoint term.
	MaxFailpointTerm = 256
)

// CheckPort is the one port-range check of the agent's callers: it
// returns an error naming what (a flag, a field) if p is outside
// MinPort..MaxPort.
func CheckPort(what string, p int) error {
	if p < MinPort || p > MaxPort {
		return fmt.Errorf("%s: port %d out of range %d..%d", what, p, MinPort, MaxPort)
	}
	return nil
}

// Empty is the argument and reply of methods that carry no data. It is
// struct{} so that plain net/rpc callers can pass struct{}{}.
type Empty = struct{}

// Status is the reply of RPCStatus: what the agent knows of its etcd process
// and of the faults it has injected.
type Status struct {
	State State
	Pid   int // 0 when no process runs

	// LastStopSignal is the signal that ended the process on the last stop
	// ("SIGTERM", "SIGINT" or "SIGKILL"), empty if it has never been stopped.
	LastStopSignal string
	// LastStopDuration is how long the last stop took, from the first
	// signal to the process being reaped.
	LastStopDuration time.Duration

	// LastExit says how the last etcd process that ended did, for humans:
	// "exit code 0", "killed by SIGTERM", "killed by SIGABRT (core
	// dumped)", or "unknown (...)" for a process this agent adopted and so
	// cannot reap. Empty if none has ended since the agent started; then
	// LastExitCode and LastExitSignal mean nothing. It is set by every stop
	// or kill and by an exit of etcd's own.
	LastExit string
	// LastExitCode is the exit code, or -1 if a signal killed the process
	// or the status is unknown.
	LastExitCode int
	// LastExitSignal is the signal that killed the process ("SIGTERM",
	// "SIGKILL", ...), empty if it exited. etcd ends a graceful shutdown on
	// SIGTERM or SIGINT by raising the signal again, so a clean stop reads
	// LastStopSignal "SIGTERM" with LastExitSignal "SIGTERM".
	LastExitSignal string

	Args []string // the arguments of the last start

	NetworkBackend string // BackendIPTables or BackendProxy
	PeerProxy      bool   // the agent proxies the member's peer traffic (needed for latency)
	DroppedPorts   []int  // ports currently isolated
	Latency        time.Duration
	LatencyJitter  time.Duration
	// DelayDirections is which of the member's peer traffic Latency
	// reaches: DelayBoth or DelayInbound; empty without the peer proxy
	// (no latency possible).
	DelayDirections string
	// DelayInboundWhy says, for humans, why DelayDirections is
	// DelayInbound (e.g. "member etcd-1 (127.0.0.1) is in this host's
	// network namespace: ..."); empty otherwise.
	DelayInboundWhy string

	LastArchive string // directory of the last Cleanup or Archive, empty if none
	// Adopted is true when the process was started by an earlier agent
	// process that died; this agent found it from its records.
	Adopted bool

	// FaultLeaseUntil is when the fault lease ends (see MethodKeepFaults);
	// zero when no lease runs.
	FaultLeaseUntil time.Time
	// FaultsExpiredAt is when the agent last healed faults because their
	// lease ended, zero if it never did; FaultsExpired says what it
	// healed then, each with the error if healing it failed.
	FaultsExpiredAt time.Time
	FaultsExpired   []string

	// Failpoints is true when the agent's etcd binary was built with gofail
	// failpoints, so that the failpoint methods can work; FailpointsReason
	// says why not when it is false.
	Failpoints       bool
	FailpointsReason string

	// EtcdVersion is the release of the agent's etcd binary as
	// `etcd --version` printed it when the agent started ("3.5.15"; parse
	// it with ParseEtcdVersion), so that the caller can pass only flags
	// that release knows. Empty if it could not be learned; then
	// EtcdVersionError says why.
	EtcdVersion      string
	EtcdVersionError string
}

// Failpoint is one gofail failpoint of the running etcd.
type Failpoint struct {
	Name string // e.g. "raftBeforeSave"
	Term string // the term it is armed with, e.g. "panic"; empty when disarmed
}

// ArmFailpoint is the argument of RPCArmFailpoint: arm the failpoint Name
// with Term. A term is gofail's: an action, "panic" (etcd's log shows
// "panic: failpoint panic: {}"), "panic(\"MESSAGE\")" (the log shows
// "panic: failpoint panic: MESSAGE"), "sleep(ms)" (at most
// MaxFailpointSleep), "return", "return(v)" (v an integer, true, false or a
// quoted string), "print" or "off", optionally preceded by modifiers "N*"
// (act at most N times) and "P.P%" (act with probability P.P percent; gofail
// needs the decimal point: "50%" does not parse, "50.0%" does), and
// terms may be chained with "->" (the first whose modifiers allow acts).
// "break" (which runs gdb) is refused.
type ArmFailpoint struct {
	Name string
	Term string
}

// Archive is the reply of RPCArchive.
type Archive struct {
	Dir string // the directory the data dir and log were moved into
}
