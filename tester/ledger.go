package tester

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// The ledger: every fault the Cluster injects is recorded once it may have
// taken effect — on success, or on an error after which the agent's status
// shows it (a call whose reply was lost may still have acted) — and stays
// recorded until its Undo succeeds or its Scope ends it. Heal undoes
// exactly what is recorded.

// injection is one recorded fault.
type injection struct {
	member int
	fault  Fault
}

// same reports whether g records the fault f records: one name on one
// member is one record (SIGTERM then SIGKILL leave one stopped member).
func (f injection) same(g injection) bool {
	return f.member == g.member && f.fault.String() == g.fault.String()
}

// Inject puts f on member i and records it if it may have taken effect.
func (c *Cluster) Inject(ctx context.Context, i int, f Fault) error {
	err := f.Inject(ctx, c, i)
	if err == nil || c.present(ctx, i, f) {
		c.record(injection{i, f})
	}
	return err
}

// injectOn puts f on every member of members at once (Inject each).
func (c *Cluster) injectOn(ctx context.Context, members []int, f Fault) error {
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for k, i := range members {
		wg.Go(func() { errs[k] = c.Inject(ctx, i, f) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Cluster) record(in injection) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !slices.ContainsFunc(c.faults, in.same) {
		c.faults = append(c.faults, in)
	}
}

func (c *Cluster) forget(in injection) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = slices.DeleteFunc(c.faults, in.same)
}

// present asks member i's agent whether f is in place. An agent that does
// not answer cannot tell: assume it is, so that healing tries.
func (c *Cluster) present(ctx context.Context, i int, f Fault) bool {
	var st wire.Status
	err := c.agentCall(context.WithoutCancel(ctx), i, agentProbeTimeout, "status of", func(ctx context.Context, a client.Agent) error {
		var err error
		st, err = a.Status(ctx)
		return err
	})
	return err != nil || f.Present(c, i, st)
}

// Heal undoes every recorded fault, newest first. A fault whose undoing
// fails stays recorded (unless the agent shows it gone) and the others are
// still healed; the error names each.
func (c *Cluster) Heal(ctx context.Context) error {
	return c.heal(ctx, func(injection) bool { return true })
}

// healNetwork undoes the faults the agents keep across etcd restarts.
func (c *Cluster) healNetwork(ctx context.Context) error {
	return c.heal(ctx, func(in injection) bool { return in.fault.Scope() == ScopeAgent })
}

func (c *Cluster) heal(ctx context.Context, which func(injection) bool) error {
	c.mu.Lock()
	fs := slices.Clone(c.faults)
	c.mu.Unlock()
	var errs []error
	for k := len(fs) - 1; k >= 0; k-- {
		in := fs[k]
		if !which(in) {
			continue
		}
		if err := in.fault.Undo(ctx, c, in.member); err != nil && c.present(ctx, in.member, in.fault) {
			errs = append(errs, fmt.Errorf("heal %s of %s: %w", in.fault, c.members[in.member].Name, err))
			continue
		}
		c.forget(in)
	}
	return errors.Join(errs...)
}

// forgetProcessFaults drops member i's records that ended with its process
// (Terminate, Archive, a new bootstrap).
func (c *Cluster) forgetProcessFaults(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = slices.DeleteFunc(c.faults, func(in injection) bool {
		return in.member == i && in.fault.Scope() == ScopeProcess
	})
}

// Faults describes the faults injected and not healed, oldest first, as
// "etcd-1: stopped".
func (c *Cluster) Faults() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.faults))
	for k, in := range c.faults {
		out[k] = c.members[in.member].Name + ": " + in.fault.String()
	}
	return out
}

// Targets names the members with a fault injected and not healed.
func (c *Cluster) Targets() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, in := range c.faults {
		if n := c.members[in.member].Name; !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// healthyMembers are the members without a recorded fault.
func (c *Cluster) healthyMembers() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for i := range c.members {
		if !slices.ContainsFunc(c.faults, func(in injection) bool { return in.member == i }) {
			out = append(out, i)
		}
	}
	return out
}
