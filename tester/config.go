package tester

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/secret"
	"github.com/etcd-functional/functional/stresser"
)

// Config is everything a run needs. Start from DefaultConfig and change
// what you need; Run validates it before it contacts anything.
type Config struct {
	// AgentEndpoints are the etcd-agents, "host:port" without a scheme;
	// each runs one member. The member listens on the agent's host.
	AgentEndpoints []string
	// ClientPorts and PeerPorts hold one port per agent; nil means 2379
	// and 2380 for every agent.
	ClientPorts, PeerPorts []int
	// PeerProxy makes each member listen for peers on PeerPort+1 while
	// advertising PeerPort, which its agent proxies; the agent can then
	// delay peer traffic (DELAY cases need it).
	PeerProxy bool

	// Limit is the number of rounds; -1 runs until interrupted.
	Limit int
	// Cases names the cases to run; empty means every case this
	// environment supports (the others are reported as skipped).
	Cases []string
	// ScheduleCases, if set, is the order of one round: indices into the
	// list of selected cases (as printed at start), repeats allowed.
	ScheduleCases []int

	// Stresser is the load; Endpoints and Seed are filled in by the
	// tester.
	Stresser stresser.Config
	// ConsistencyCheck compares every member's revision and KV hash
	// after each case.
	ConsistencyCheck bool
	// WatchCheck records watches on every member and cluster-wide while
	// each case with load runs, and checks them against the ground truth
	// after recovery (ordered, unique, atomic, bookmarkable, reliable,
	// resumable, PrevKV and IsCreate right).
	WatchCheck bool
	// LinearizabilityTimeout bounds the linearizability check of one
	// case's history; running out of it is an unknown verdict.
	LinearizabilityTimeout time.Duration
	// AllowUnknown passes a case whose checker could not reach a verdict
	// (a history too long to search in time); by default such a case
	// fails, as nothing was proven.
	AllowUnknown bool
	// ExitOnFailure ends the run at the first failed case.
	ExitOnFailure bool
	// RequireAllCases fails the run (exit 1) when a case of the catalogue
	// is skipped because this environment cannot run it: a PASS then
	// means every case ran. The run fails before bootstrapping, naming
	// each skipped case and why.
	RequireAllCases bool

	// HeartbeatInterval and ElectionTimeout are passed to etcd.
	HeartbeatInterval, ElectionTimeout time.Duration
	// RecoveryTimeout bounds how long the cluster may take to be healthy
	// again after a fault is recovered.
	RecoveryTimeout time.Duration
	// CaseDelay is how long a fault is held before it is recovered.
	CaseDelay time.Duration
	// StressWarmup is how long the load runs before the fault, so that
	// the fault hits a busy cluster rather than one still connecting.
	StressWarmup time.Duration
	// EtcdCorruptCheck starts members with etcd's own corruption checks
	// on: the initial check, and the leader's check of the followers'
	// hashes after each compaction (spelled as each release wants).
	EtcdCorruptCheck bool
	// SnapshotCount and SnapshotCatchupEntries are passed to etcd; small
	// values make the UNTIL_TRIGGER_SNAPSHOT cases short.
	SnapshotCount, SnapshotCatchupEntries int
	// DefragInterval defragments every member every that many rounds;
	// 0 never does.
	DefragInterval int
	// ExternalExecPath is the user's program of the EXTERNAL case, run
	// as `PROGRAM enable ROUND` and `PROGRAM disable ROUND`; empty
	// skips the case.
	ExternalExecPath string

	// Seed makes targets, random delays and the load repeatable.
	Seed int64
	// Replay, if set, is a results.json whose rounds to play again: the
	// same cases in the same order on the same members, with its seed
	// (Seed, Cases, ScheduleCases, Limit, CaseDelay and the stressers'
	// names, rate and past reads are taken from it).
	Replay string

	// MetricsAddr is where Prometheus metrics and /status are served;
	// empty turns the server off.
	MetricsAddr string
	// ReportDir receives results.json and summary.txt.
	ReportDir string

	// AgentTokenFile holds the bearer token agents expect. AgentCertFile
	// and AgentKeyFile are the client certificate presented to agents,
	// AgentCAFile the CA that verifies them; any of them turns TLS on.
	AgentTokenFile, AgentCertFile, AgentKeyFile, AgentCAFile string

	// DialAgent, if set, replaces client.New for connecting to an agent
	// (tests use it). The token and TLS files are then not read.
	DialAgent func(endpoint string) (client.Agent, error)
}

// Defaults of the ports and of the recovery timeout's derivation.
const (
	DefaultClientPort = 2379
	DefaultPeerPort   = 2380
	// RecoveryElections is how many election timeouts a cluster gets to
	// recover when no recovery timeout is given.
	RecoveryElections = 30
)

// DefaultRecoveryTimeout is the recovery timeout of a run that gives none:
// RecoveryElections election timeouts.
func (c Config) DefaultRecoveryTimeout() time.Duration {
	return RecoveryElections * c.ElectionTimeout
}

// DefaultConfig returns the configuration of a run against one local agent.
func DefaultConfig() Config {
	c := Config{
		AgentEndpoints:         []string{"localhost:" + strconv.Itoa(wire.DefaultPort)},
		PeerProxy:              true,
		Limit:                  1,
		Stresser:               stresser.DefaultConfig(),
		ConsistencyCheck:       true,
		WatchCheck:             true,
		LinearizabilityTimeout: time.Minute,
		EtcdCorruptCheck:       true,
		HeartbeatInterval:      100 * time.Millisecond,
		ElectionTimeout:        time.Second,
		CaseDelay:              3 * time.Second,
		StressWarmup:           time.Second,
		SnapshotCount:          2000,
		SnapshotCatchupEntries: 500,
		DefragInterval:         10,
		Seed:                   1,
		MetricsAddr:            ":9028",
		ReportDir:              "report",
	}
	c.RecoveryTimeout = c.DefaultRecoveryTimeout()
	return c
}

// SetupError is a run that could not start: bad input, or agents or a
// cluster that could not be set up. Nothing was left running. Exit status 2.
type SetupError struct{ Err error }

func (e *SetupError) Error() string { return e.Err.Error() }
func (e *SetupError) Unwrap() error { return e.Err }

func setupErr(err error) error {
	var se *SetupError
	if err == nil || errors.As(err, &se) {
		return err
	}
	return &SetupError{err}
}

// Validate reports every bad field of c at once, naming the field and what
// it allows. It reads the token and TLS files but contacts nothing.
func (c Config) Validate() error {
	_, err := c.normalize()
	return err
}

// settings is a validated Config with its defaults filled in and what the
// run derives from it.
type settings struct {
	Config
	// minBootstrap is minBootstrapTimeout; tests shorten it.
	minBootstrap time.Duration
	hosts        []string // member host per agent
	replay       []replayRound
	env          Env // what is known before any agent answers
	dial         func(endpoint string) (client.Agent, error)
}

// bootstrapTimeout bounds a wait for health when no fault was just
// recovered: forming a cluster is not what a short -recovery-timeout
// measures.
func (s *settings) bootstrapTimeout() time.Duration {
	return max(s.RecoveryTimeout, s.minBootstrap)
}

// normalize works on its own copy of c: checkAgents fills in the ports.
func (c Config) normalize() (*settings, error) {
	var replay []replayRound
	var errs []error
	if c.Replay != "" {
		var err error
		var rec *Report
		replay, rec, err = readReplay(c.Replay, len(c.AgentEndpoints))
		if err != nil {
			errs = append(errs, err)
		}
		if rec != nil {
			c.applyRecorded(replay, rec)
		}
	}
	hosts, aerrs := c.checkAgents()
	errs = append(errs, aerrs...)
	errs = append(errs, c.checkNumbers()...)
	errs = append(errs, c.checkStresser(hosts)...)
	if err := checkExternalExecPath(c.ExternalExecPath); err != nil {
		errs = append(errs, err)
	}
	dial := c.DialAgent
	if dial == nil {
		acfg, err := c.agentClientConfig()
		if err != nil {
			errs = append(errs, err)
		}
		dial = func(ep string) (client.Agent, error) { return client.New(ep, acfg) }
	}
	s := &settings{Config: c, minBootstrap: minBootstrapTimeout, hosts: hosts, dial: dial, replay: replay}
	s.env = Env{
		Members:      len(hosts),
		Hosts:        hosts,
		PeerPorts:    c.PeerPorts,
		PeerProxy:    c.PeerProxy,
		StressWrites: writes(c.Stresser.Names),
	}
	if len(errs) == 0 {
		// Before any agent answers: named cases that cannot run here,
		// and bad schedules, are bad input. Without names the selection
		// is every case the agents' answers (network backends,
		// failpoints) allow, which can still narrow it: then only a
		// negative index is refused here, and setup checks the rest
		// against the real selection.
		pre := *s
		if len(s.Cases) == 0 {
			pre.ScheduleCases = nil
			for _, i := range s.ScheduleCases {
				if i < 0 {
					errs = append(errs, fmt.Errorf("-schedule-cases: index %d out of range: indices start at 0", i))
				}
			}
		}
		if _, _, err := pre.selectCases(nil); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, setupErr(err)
	}
	return s, nil
}

// selectCases selects the cases of the run in the environment known so
// far and the agents' network backends (nil until they have answered).
func (s *settings) selectCases(sts []wire.Status) ([]Case, []Skip, error) {
	env := s.env
	for i, st := range sts {
		env.Backends = append(env.Backends, st.NetworkBackend)
		if !st.Failpoints && env.NoFailpoints == "" {
			env.NoFailpoints = fmt.Sprintf("the etcd of agent %s has no failpoints: %s", s.AgentEndpoints[i], cmp.Or(st.FailpointsReason, "unknown why"))
		}
	}
	return selectCases(Catalogue(s.Config), s.Cases, s.ScheduleCases, env)
}

// checkAgents checks the endpoints and ports, filling in the default
// ports, and returns each agent's member host.
func (c *Config) checkAgents() ([]string, []error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	n := len(c.AgentEndpoints)
	if n == 0 {
		bad("-agent-endpoints: none given; want a comma list of host:port")
	}
	hosts := make([]string, n)
	seenEP := map[string]bool{}
	for i, ep := range c.AgentEndpoints {
		if err := client.ValidateEndpoint(ep); err != nil {
			bad("-agent-endpoints: %w", err)
			continue
		}
		if seenEP[ep] {
			bad("-agent-endpoints: %q given twice", ep)
		}
		seenEP[ep] = true
		hosts[i] = memberHost(ep)
	}
	c.ClientPorts = defaultPorts(c.ClientPorts, n, DefaultClientPort)
	c.PeerPorts = defaultPorts(c.PeerPorts, n, DefaultPeerPort)
	if len(c.ClientPorts) != n {
		bad("-client-ports: %d ports for %d agents; give one per agent, in the order of -agent-endpoints", len(c.ClientPorts), n)
	}
	if len(c.PeerPorts) != n {
		bad("-peer-ports: %d ports for %d agents; give one per agent, in the order of -agent-endpoints", len(c.PeerPorts), n)
	}
	if len(errs) == 0 {
		errs = append(errs, c.checkPorts(hosts)...)
	}
	return hosts, errs
}

// checkNumbers checks the counts and durations.
func (c *Config) checkNumbers() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Limit == 0 || c.Limit < -1 {
		bad("-limit: %d; want a number of rounds >= 1, or -1 to run until interrupted", c.Limit)
	}
	if c.HeartbeatInterval <= 0 {
		bad("-heartbeat-interval: %v; must be > 0", c.HeartbeatInterval)
	}
	if c.LinearizabilityTimeout <= 0 {
		bad("-linearizability-timeout: %v; must be > 0", c.LinearizabilityTimeout)
	}
	// etcd refuses an election timeout below 5 heartbeats or above 50 s.
	if c.ElectionTimeout < 5*c.HeartbeatInterval || c.ElectionTimeout > 50*time.Second {
		bad("-election-timeout: %v; etcd wants at least 5 × -heartbeat-interval (%v) and at most 50s", c.ElectionTimeout, 5*c.HeartbeatInterval)
	}
	if c.RecoveryTimeout <= 0 {
		bad("-recovery-timeout: %v; must be > 0", c.RecoveryTimeout)
	}
	if c.CaseDelay < 0 {
		bad("-case-delay: %v; must be >= 0", c.CaseDelay)
	}
	if c.StressWarmup < 0 {
		bad("-stress-warmup: %v; must be >= 0", c.StressWarmup)
	}
	if c.SnapshotCount <= 0 {
		bad("-snapshot-count: %d; must be > 0", c.SnapshotCount)
	}
	if c.SnapshotCatchupEntries <= 0 {
		bad("snapshot catch-up entries: %d; must be > 0", c.SnapshotCatchupEntries)
	}
	if c.DefragInterval < 0 {
		bad("-defrag-interval: %d; want a number of rounds, or 0 for never", c.DefragInterval)
	}
	if c.ReportDir == "" {
		bad("-report-dir: empty; want a directory for results.json and summary.txt")
	}
	return errs
}

// checkStresser has the stresser validate its own fields; it needs
// endpoints to do so, known only when the agents' are good.
func (c *Config) checkStresser(hosts []string) []error {
	n := len(hosts)
	sc := c.Stresser
	sc.Endpoints = nil
	for i := range n {
		if len(c.ClientPorts) == n && hosts[i] != "" {
			sc.Endpoints = append(sc.Endpoints, "http://"+net.JoinHostPort(hosts[i], strconv.Itoa(c.ClientPorts[i])))
		}
	}
	if n == 0 || len(sc.Endpoints) != n {
		return nil
	}
	if err := sc.Validate(); err != nil {
		return []error{fmt.Errorf("-stresser and -stress-*: %w", err)}
	}
	return nil
}

// checkPorts finds ports out of range and ports used twice on one host,
// counting each agent's own port and, with the peer proxy, the member's
// listen peer port (peer port + 1).
func (c Config) checkPorts(hosts []string) []error {
	var errs []error
	used := map[string]string{} // host:port → who uses it
	claim := func(host string, port int, who string) {
		if err := wire.CheckPort(who, port); err != nil {
			errs = append(errs, err)
			return
		}
		k := net.JoinHostPort(host, strconv.Itoa(port))
		if prev, ok := used[k]; ok {
			errs = append(errs, fmt.Errorf("%s: port %d on host %s is already used by %s; every port on one host must be distinct", who, port, host, prev))
			return
		}
		used[k] = who
	}
	for i, ep := range c.AgentEndpoints {
		_, p, _ := net.SplitHostPort(ep)
		port, _ := strconv.Atoi(p)
		claim(hosts[i], port, fmt.Sprintf("agent %s", ep))
	}
	for i := range c.AgentEndpoints {
		name := memberName(i)
		claim(hosts[i], c.ClientPorts[i], fmt.Sprintf("-client-ports[%d] (%s)", i, name))
		claim(hosts[i], c.PeerPorts[i], fmt.Sprintf("-peer-ports[%d] (%s)", i, name))
		if c.PeerProxy {
			claim(hosts[i], c.PeerPorts[i]+1, fmt.Sprintf("listen peer port (-peer-ports[%d]+1, %s, -peer-proxy)", i, name))
		}
	}
	return errs
}

func defaultPorts(ports []int, n, def int) []int {
	if len(ports) > 0 {
		return ports
	}
	out := make([]int, n)
	for i := range out {
		out[i] = def
	}
	return out
}

// memberHost is the host part of an agent endpoint, the address its member
// listens on. "localhost" becomes 127.0.0.1 so that the URLs etcd
// advertises name one address, not whatever localhost resolves to first.
func memberHost(endpoint string) string {
	h, _, err := net.SplitHostPort(endpoint)
	if err != nil {
		return ""
	}
	if strings.EqualFold(h, "localhost") {
		return "127.0.0.1"
	}
	return h
}

func memberName(i int) string { return "etcd-" + strconv.Itoa(i) }

// writes reports whether the named stressers write keys (the
// UNTIL_TRIGGER_SNAPSHOT cases need the revision to move).
func writes(names []string) bool {
	return slices.Contains(names, stresser.NameKeys) || slices.Contains(names, stresser.NameLease)
}

// agentClientConfig reads the token and TLS files through internal/secret,
// as the agent reads its own: both sides accept the same files.
func (c Config) agentClientConfig() (client.Config, error) {
	var cfg client.Config
	var errs []error
	tok, err := secret.ReadToken(c.AgentTokenFile)
	if err != nil {
		errs = append(errs, fmt.Errorf("-agent-token-file: %w", err))
	}
	cfg.Token = tok
	if (c.AgentCertFile == "") != (c.AgentKeyFile == "") {
		errs = append(errs, errors.New("-agent-cert-file and -agent-key-file: give both or neither"))
		return cfg, errors.Join(errs...)
	}
	tc, err := secret.ClientTLS(c.AgentCertFile, c.AgentKeyFile, c.AgentCAFile)
	if err != nil {
		errs = append(errs, fmt.Errorf("-agent-cert-file, -agent-key-file, -agent-ca-file: %w", err))
	}
	cfg.TLS = tc
	return cfg, errors.Join(errs...)
}
