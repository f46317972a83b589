package tester

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// Process faults: the member's etcd stopped (SIGTERM, SIGKILL) or frozen
// (SIGSTOP). They end with the process.

// stopped is etcd stopped with its data kept; Restart undoes it. The
// family says how it was stopped.
type stopped struct{ sig string }

var (
	sigterm = stopped{"SIGTERM"}
	sigkill = stopped{"SIGKILL"}
)

func (s stopped) prefix() string { return s.sig }
func (s stopped) describe() string {
	if s.sig == "SIGKILL" {
		return "kill etcd (SIGKILL), then restart it,"
	}
	return "stop etcd gracefully (SIGTERM), then restart it,"
}
func (stopped) requires(Env) error { return nil }

// movesLeadership: etcd stopped by SIGTERM hands its leadership over.
func (s stopped) movesLeadership() bool { return s.sig == "SIGTERM" }
func (s stopped) draw(*rand.Rand) Fault { return s }
func (stopped) String() string          { return "stopped" }
func (stopped) Scope() Scope            { return ScopeProcess }
func (s stopped) Inject(ctx context.Context, c *Cluster, i int) error {
	if s.sig == "SIGKILL" {
		return c.agentCall(ctx, i, agentCallTimeout, "kill", func(ctx context.Context, a client.Agent) error { return a.Kill(ctx) })
	}
	// A graceful stop must be one: an etcd that needed SIGINT or SIGKILL,
	// or exited with an error, fails the case, whatever the recovery.
	return c.agentCall(ctx, i, agentStopTimeout, "stop (SIGTERM)", func(ctx context.Context, a client.Agent) error {
		if err := a.Stop(ctx); err != nil {
			return err
		}
		st, err := a.Status(ctx)
		if err != nil {
			return fmt.Errorf("status after the stop: %w", err)
		}
		return st.GracefulStopError()
	})
}
func (stopped) Undo(ctx context.Context, c *Cluster, i int) error {
	return c.agentCall(ctx, i, agentCallTimeout, "restart", func(ctx context.Context, a client.Agent) error {
		_, err := a.Restart(ctx)
		return err
	})
}
func (stopped) Present(_ *Cluster, _ int, st wire.Status) bool {
	return st.State != wire.StateStarted && st.State != wire.StatePaused
}

// paused is etcd frozen with SIGSTOP; SIGCONT undoes it.
type paused struct{}

func (paused) prefix() string          { return "SIGSTOP" }
func (paused) describe() string        { return "freeze etcd (SIGSTOP), then resume it (SIGCONT)," }
func (paused) requires(Env) error      { return nil }
func (p paused) draw(*rand.Rand) Fault { return p }
func (paused) String() string          { return "paused" }
func (paused) Scope() Scope            { return ScopeProcess }
func (paused) Inject(ctx context.Context, c *Cluster, i int) error {
	return c.agentCall(ctx, i, agentCallTimeout, "pause (SIGSTOP)", func(ctx context.Context, a client.Agent) error { return a.Pause(ctx) })
}
func (paused) Undo(ctx context.Context, c *Cluster, i int) error {
	return c.agentCall(ctx, i, agentCallTimeout, "resume (SIGCONT)", func(ctx context.Context, a client.Agent) error { return a.Resume(ctx) })
}
func (paused) Present(_ *Cluster, _ int, st wire.Status) bool { return st.State == wire.StatePaused }
