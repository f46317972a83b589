package tester

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/etcd-functional/functional/agent/wire"
)

// A case is a target selector composed with a fault family: SIGKILL ×
// LEADER is SIGKILL_LEADER. A family draws one Fault per injection and the
// Cluster puts that Fault on every target, recording it in its ledger
// until Heal undoes it. Recovery needs no code of its own: the ledger
// undoes exactly what was injected.

// Fault is one fault on one member, with everything the ledger needs to
// heal it: inject and undo are the agent calls, present reads the agent's
// status to tell whether the fault is in place (after a lost reply), and
// scope says what ends it besides undo. Because the ledger records Faults,
// a fault without an undo or a presence test does not compile.
type Fault interface {
	// String names the fault as the report shows it ("etcd-1: stopped").
	// Two faults with one name on one member are one record.
	String() string
	// Inject puts the fault on member i.
	Inject(ctx context.Context, c *Cluster, i int) error
	// Undo takes it off member i.
	Undo(ctx context.Context, c *Cluster, i int) error
	// Present reports whether st, member i's agent status, shows the
	// fault in place. A fault that status cannot show (a removal)
	// answers true: its record then stays until Undo succeeds.
	Present(c *Cluster, i int, st wire.Status) bool
	// Scope says what else ends the fault.
	Scope() Scope
}

// Scope is what ends a fault besides its undo.
type Scope int

const (
	// ScopeProcess faults end with the etcd process: Terminate, Archive
	// and a new bootstrap forget them.
	ScopeProcess Scope = iota
	// ScopeAgent faults are the agent's (packet filters, proxy latency):
	// they outlive etcd restarts, and a new bootstrap heals them first.
	ScopeAgent
)

// family is a kind of fault as the catalogue composes it with targets.
type family interface {
	prefix() string // the case name's prefix: "SIGKILL"
	describe() string
	requires(env Env) error
	// draw returns the Fault of one injection, the same for every
	// target; random parameters come from r, the case's seeded source.
	draw(r *rand.Rand) Fault
}

type faultCase struct {
	f family
	t target
}

func (fc faultCase) Name() string { return fc.f.prefix() + "_" + fc.t.suffix() }
func (fc faultCase) Describe() string {
	d := fc.f.describe() + " " + fc.t.describe()
	if c, ok := fc.f.(compounding); ok && hitsSeveral(fc.t) {
		d += "; " + c.between()
	}
	return d
}

// compounding is a family whose fault adds up on a link between two of
// its targets (a delay applied at both ends); a case that hits several
// members says what that makes of it.
type compounding interface{ between() string }

// hitsSeveral reports whether t picks more than one member.
func hitsSeveral(t target) bool {
	switch t.(type) {
	case quorum, all:
		return true
	}
	return false
}

func (fc faultCase) Requires(env Env) error {
	if n := fc.t.minMembers(); env.Members < n {
		return fmt.Errorf("needs at least %d members for a %s target; there are %d agents", n, strings.ToLower(strings.ReplaceAll(fc.t.suffix(), "_", " ")), env.Members)
	}
	return fc.f.requires(env)
}

// Inject hits all targets at once, as a real correlated failure would,
// and returns every member's error.
func (fc faultCase) Inject(ctx context.Context, c *Cluster) error {
	// The fault is drawn before the targets are picked, so that a
	// replay, which takes its targets from the record and draws none,
	// draws the same fault from the same seed.
	f := fc.f.draw(c.rand())
	c.recordDrawn(f)
	if members, ok := c.takePin(); ok {
		return c.injectPinned(ctx, fc.t, members, f)
	}
	if _, ok := fc.t.(leader); ok {
		return c.injectLeader(ctx, f)
	}
	members, err := fc.t.pick(ctx, c)
	if err != nil {
		return fmt.Errorf("pick %s: %w", strings.ToLower(fc.t.suffix()), err)
	}
	return c.injectOn(ctx, members, f)
}

func (fc faultCase) Recover(ctx context.Context, c *Cluster) error { return c.Heal(ctx) }
