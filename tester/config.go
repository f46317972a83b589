package tester

import (
	"cmp"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
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
