package tester

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/stresser"
)

// Case is one fault scenario. Inject puts the fault on the cluster and
// Recover takes it off; between the two the round holds the fault for
// Config.CaseDelay. Recover must undo whatever Inject did, also when Inject
// failed half-way.
type Case interface {
	Name() string
	Describe() string
	Inject(ctx context.Context, c *Cluster) error
	Recover(ctx context.Context, c *Cluster) error
}

// Env is what the tester knows of where it runs; cases that cannot run in
// it say why through Requires.
type Env struct {
	Members int      // one per agent
	Hosts   []string // member host per agent
	// Backends holds each agent's Status.NetworkBackend; nil until the
	// agents have answered.
	Backends     []string
	PeerProxy    bool // -peer-proxy
	StressWrites bool // the load writes keys
}

// requirer is implemented by cases that cannot run everywhere. The error
// is the reason, shown to the user.
type requirer interface{ Requires(env Env) error }

// stressChooser is implemented by cases that run without load.
type stressChooser interface{ Stress() bool }

// holder is implemented by cases that watch the cluster while the fault is
// held, instead of only waiting.
type holder interface {
	Hold(ctx context.Context, c *Cluster, d time.Duration) error
}

// statsChecker is implemented by cases that judge the load of their round.
type statsChecker interface {
	StressChecker(stats stresser.Stats) Checker
}

// Skip is a case left out of the run, and why.
type Skip struct {
	Case   string `json:"case"`
	Reason string `json:"reason"`
}

// A case is a target selector composed with a fault: SIGKILL × LEADER is
// SIGKILL_LEADER. Recovery needs neither: the Cluster records every fault it
// injects and Heal undoes exactly those.

// target picks the members a fault hits, from the live cluster at
// injection time.
type target interface {
	suffix() string
	describe() string
	minMembers() int
	pick(ctx context.Context, c *Cluster) ([]int, error)
}

// fault is what happens to the targets.
type fault interface {
	prefix() string
	describe() string
	requires(env Env) error
	inject(ctx context.Context, c *Cluster, members []int) error
}

type faultCase struct {
	f fault
	t target
}

func (fc faultCase) Name() string     { return fc.f.prefix() + "_" + fc.t.suffix() }
func (fc faultCase) Describe() string { return fc.f.describe() + " " + fc.t.describe() }

func (fc faultCase) Requires(env Env) error {
	if n := fc.t.minMembers(); env.Members < n {
		return fmt.Errorf("needs at least %d members for a %s target; there are %d agents", n, strings.ToLower(strings.ReplaceAll(fc.t.suffix(), "_", " ")), env.Members)
	}
	return fc.f.requires(env)
}

func (fc faultCase) Inject(ctx context.Context, c *Cluster) error {
	members, err := fc.t.pick(ctx, c)
	if err != nil {
		return fmt.Errorf("pick %s: %w", strings.ToLower(fc.t.suffix()), err)
	}
	return fc.f.inject(ctx, c, members)
}

func (fc faultCase) Recover(ctx context.Context, c *Cluster) error { return c.Heal(ctx) }

// Targets.

type oneFollower struct{}

func (oneFollower) suffix() string   { return "ONE_FOLLOWER" }
func (oneFollower) describe() string { return "on one follower picked at random" }
func (oneFollower) minMembers() int  { return 3 }
func (oneFollower) pick(ctx context.Context, c *Cluster) ([]int, error) {
	lead, err := c.Leader(ctx)
	if err != nil {
		return nil, err
	}
	var followers []int
	for i := range c.members {
		if i != lead {
			followers = append(followers, i)
		}
	}
	return []int{followers[c.rand().IntN(len(followers))]}, nil
}

type leader struct{}

func (leader) suffix() string   { return "LEADER" }
func (leader) describe() string { return "on the current leader" }
func (leader) minMembers() int  { return 3 }
func (leader) pick(ctx context.Context, c *Cluster) ([]int, error) {
	lead, err := c.Leader(ctx)
	if err != nil {
		return nil, err
	}
	return []int{lead}, nil
}

type quorum struct{}

func (quorum) suffix() string   { return "QUORUM" }
func (quorum) describe() string { return "on a quorum ((n/2)+1 members) picked at random" }
func (quorum) minMembers() int  { return 3 }
func (quorum) pick(_ context.Context, c *Cluster) ([]int, error) {
	n := len(c.members)
	return pickQuorum(c.rand(), n), nil
}

func pickQuorum(r *rand.Rand, n int) []int {
	m := r.Perm(n)[:n/2+1]
	sort.Ints(m)
	return m
}

type all struct{}

func (all) suffix() string   { return "ALL" }
func (all) describe() string { return "on every member at once" }
func (all) minMembers() int  { return 1 }
func (all) pick(_ context.Context, c *Cluster) ([]int, error) {
	m := make([]int, len(c.members))
	for i := range m {
		m[i] = i
	}
	return m, nil
}

// Faults. Each injects on all targets at once, as a real correlated
// failure would hit them, and returns every member's error.

func injectEach(ctx context.Context, members []int, f func(ctx context.Context, i int) error) error {
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for k, i := range members {
		wg.Go(func() { errs[k] = f(ctx, i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

type sigterm struct{}

func (sigterm) prefix() string     { return "SIGTERM" }
func (sigterm) describe() string   { return "stop etcd gracefully (SIGTERM), then restart it," }
func (sigterm) requires(Env) error { return nil }
func (sigterm) inject(ctx context.Context, c *Cluster, m []int) error {
	return injectEach(ctx, m, c.stopMember)
}

type sigkill struct{}

func (sigkill) prefix() string     { return "SIGKILL" }
func (sigkill) describe() string   { return "kill etcd (SIGKILL), then restart it," }
func (sigkill) requires(Env) error { return nil }
func (sigkill) inject(ctx context.Context, c *Cluster, m []int) error {
	return injectEach(ctx, m, c.killMember)
}

type sigstop struct{}

func (sigstop) prefix() string     { return "SIGSTOP" }
func (sigstop) describe() string   { return "freeze etcd (SIGSTOP), then resume it (SIGCONT)," }
func (sigstop) requires(Env) error { return nil }
func (sigstop) inject(ctx context.Context, c *Cluster, m []int) error {
	return injectEach(ctx, m, c.pauseMember)
}

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
	for i, b := range env.Backends {
		if b != wire.BackendIPTables {
			return fmt.Errorf("agent of %s uses the %q network backend: with the proxy backend a member's outbound connections to the others cannot be cut, so isolation would be one-way; run the agents with iptables (CAP_NET_ADMIN)", memberName(i), b)
		}
	}
	return nil
}

func (blackhole) inject(ctx context.Context, c *Cluster, m []int) error {
	return injectEach(ctx, m, c.dropPeerPort)
}

// delay adds latency to the targets' peer traffic; latency returns the
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
func (d delay) requires(env Env) error {
	if !env.PeerProxy {
		return errors.New("needs -peer-proxy: only the agent's peer proxy can delay traffic (this kernel has no netem)")
	}
	return nil
}
func (d delay) inject(ctx context.Context, c *Cluster, m []int) error {
	lat, jitter := d.latency(c.rand())
	return injectEach(ctx, m, func(ctx context.Context, i int) error { return c.delayPeer(ctx, i, lat, jitter) })
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

type sigquitRemove struct{}

func (sigquitRemove) prefix() string { return "SIGQUIT_AND_REMOVE" }
func (sigquitRemove) describe() string {
	return "stop etcd with SIGQUIT (stack dump) and archive its data, remove it from the cluster; then add it back with fresh data,"
}
func (sigquitRemove) requires(Env) error { return nil }
func (sigquitRemove) inject(ctx context.Context, c *Cluster, m []int) error {
	return injectEach(ctx, m, c.removeMember)
}

// untilSnapshot keeps the fault of a case on until the rest of the cluster
// has committed enough entries to snapshot and compact its log past the
// targets, so they must catch up from a snapshot.
type untilSnapshot struct {
	Case
	entries int64 // snapshot count + catch-up entries
}

func (u untilSnapshot) Name() string { return u.Case.Name() + "_UNTIL_TRIGGER_SNAPSHOT" }
func (u untilSnapshot) Describe() string {
	return u.Case.Describe() + fmt.Sprintf("; the fault is held until the others have moved %d revisions (snapshot count + catch-up entries)", u.entries)
}
func (u untilSnapshot) Requires(env Env) error {
	if r, ok := u.Case.(requirer); ok {
		if err := r.Requires(env); err != nil {
			return err
		}
	}
	if !env.StressWrites {
		return errors.New("needs a stresser that writes (keys or lease) to move the revision; -stresser is nop")
	}
	return nil
}
func (u untilSnapshot) Inject(ctx context.Context, c *Cluster) error {
	if err := u.Case.Inject(ctx, c); err != nil {
		return err
	}
	return c.waitRevisionAdvance(ctx, u.entries, snapshotPolls, snapshotPollInterval)
}

// The wait for a snapshot is bounded: a cluster that cannot commit that
// much in this time is too slow for the case to mean anything.
const (
	snapshotPolls        = 60
	snapshotPollInterval = 500 * time.Millisecond
)

// noFail injects nothing: it measures the cluster itself, with or without
// load.
type noFail struct {
	stress bool
	budget float64 // failures allowed, as a fraction of qps × seconds
	qps    int
}

func (n noFail) Name() string {
	if n.stress {
		return "NO_FAIL_WITH_STRESS"
	}
	return "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS"
}
func (n noFail) Describe() string {
	if n.stress {
		return fmt.Sprintf("no fault, load only; the cluster must stay healthy throughout, with no unexpected stress error and failures under %.0f%% of the requests asked", n.budget*100)
	}
	return "no fault, no load; the cluster must stay healthy throughout (polled every 500ms)"
}
func (n noFail) Stress() bool { return n.stress }

// Hold watches the cluster while nothing is injected: it must stay
// healthy. Two unhealthy polls in a row fail the case; one may be a slow
// disk under the poll's short timeout.
func (n noFail) Hold(ctx context.Context, c *Cluster, d time.Duration) error {
	deadline := time.Now().Add(d)
	bad := 0
	for time.Now().Before(deadline) {
		if reasons := c.healthOnce(ctx); len(reasons) > 0 && ctx.Err() == nil {
			if bad++; bad >= 2 {
				return fmt.Errorf("unhealthy with no fault injected: %v", &UnhealthyError{d - time.Until(deadline), reasons})
			}
		} else {
			bad = 0
		}
		if err := sleep(ctx, min(livenessPollInterval, max(time.Until(deadline), 0))); err != nil {
			return err
		}
	}
	return nil
}

// livenessPollInterval is how often the no-fault cases look at the cluster.
const livenessPollInterval = 500 * time.Millisecond

func (n noFail) Inject(context.Context, *Cluster) error        { return nil }
func (n noFail) Recover(ctx context.Context, c *Cluster) error { return c.Heal(ctx) }
func (n noFail) StressChecker(s stresser.Stats) Checker {
	if !n.stress {
		return nil
	}
	return stressBudget{stats: s, qps: n.qps, fraction: n.budget}
}

// stressFailureBudget is upstream's: NO_FAIL_WITH_STRESS fails when errors
// exceed 30% of the requests the rate asked for.
const stressFailureBudget = 0.3

// Catalogue returns every case, in the default order of a round.
func Catalogue(cfg Config) []Case {
	entries := int64(cfg.SnapshotCount + cfg.SnapshotCatchupEntries)
	var cs []Case
	add := func(f fault, ts ...target) {
		for _, t := range ts {
			cs = append(cs, faultCase{f, t})
		}
	}
	snap := func(f fault, t target) { cs = append(cs, untilSnapshot{faultCase{f, t}, entries}) }

	add(sigterm{}, oneFollower{})
	snap(sigterm{}, oneFollower{})
	add(sigterm{}, leader{})
	snap(sigterm{}, leader{})
	add(sigterm{}, quorum{}, all{})
	add(sigkill{}, oneFollower{}, leader{}, quorum{}, all{})
	add(sigstop{}, oneFollower{}, leader{}, quorum{})
	add(sigquitRemove{}, oneFollower{})
	add(blackhole{}, oneFollower{})
	snap(blackhole{}, oneFollower{})
	add(blackhole{}, leader{}, quorum{}, all{})
	add(fixedDelay(cfg.ElectionTimeout), oneFollower{}, leader{}, quorum{}, all{})
	add(randomDelay(cfg.ElectionTimeout), oneFollower{}, leader{}, quorum{}, all{})
	cs = append(cs,
		noFail{stress: true, budget: stressFailureBudget, qps: cfg.Stresser.QPS},
		noFail{stress: false})
	return cs
}

// CaseNames returns the names of cs in order.
func CaseNames(cs []Case) []string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.Name()
	}
	return names
}

// selectCases picks the cases of a run from the catalogue. With no names,
// every case runs whose requirements env meets; the others are skipped.
// A named case that cannot run is an error: the user asked for it. The
// schedule, if any, orders the selected cases by index.
func selectCases(cat []Case, names []string, schedule []int, env Env) ([]Case, []Skip, error) {
	var selected []Case
	var skipped []Skip
	if len(names) == 0 {
		for _, c := range cat {
			if r, ok := c.(requirer); ok {
				if err := r.Requires(env); err != nil {
					skipped = append(skipped, Skip{c.Name(), err.Error()})
					continue
				}
			}
			selected = append(selected, c)
		}
	} else {
		byName := map[string]Case{}
		for _, c := range cat {
			byName[c.Name()] = c
		}
		var errs []error
		seen := map[string]bool{}
		for _, n := range names {
			c, ok := byName[n]
			switch {
			case !ok:
				errs = append(errs, fmt.Errorf("-cases: unknown case %q; valid cases: %s", n, strings.Join(CaseNames(cat), ", ")))
				continue
			case seen[n]:
				errs = append(errs, fmt.Errorf("-cases: %s given twice; use -schedule-cases to repeat a case", n))
				continue
			}
			seen[n] = true
			if r, ok := c.(requirer); ok {
				if err := r.Requires(env); err != nil {
					errs = append(errs, fmt.Errorf("-cases: %s cannot run here: %w", n, err))
					continue
				}
			}
			selected = append(selected, c)
		}
		if err := errors.Join(errs...); err != nil {
			return nil, nil, err
		}
	}
	if len(selected) == 0 {
		return nil, skipped, errors.New("-cases: no case can run in this environment; see the skipped cases")
	}
	if len(schedule) == 0 {
		return selected, skipped, nil
	}
	var scheduled []Case
	var errs []error
	for _, i := range schedule {
		if i < 0 || i >= len(selected) {
			errs = append(errs, fmt.Errorf("-schedule-cases: index %d out of range 0..%d (the %d selected cases: %s)", i, len(selected)-1, len(selected), strings.Join(CaseNames(selected), ", ")))
			continue
		}
		scheduled = append(scheduled, selected[i])
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	return scheduled, skipped, nil
}

// ListCases writes the catalogue, one case a line with its description.
func ListCases(cfg Config) []string {
	cat := Catalogue(cfg)
	w := 0
	for _, c := range cat {
		w = max(w, len(c.Name()))
	}
	lines := make([]string, len(cat))
	for i, c := range cat {
		lines[i] = fmt.Sprintf("%-*s  %s", w, c.Name(), c.Describe())
	}
	return lines
}

// caseRand is the random source of one case of one round: derived from the
// seed and the case's place only, so a replay with the same seed draws the
// same targets and delays even when an earlier case went differently.
func caseRand(seed int64, round, index int) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), uint64(round)<<32|uint64(index)))
}
