package tester

import (
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

// The checks of a Config: each names the field (as its flag) and what it
// allows, and all of them run, so that a user sees every mistake at once.

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
