package client

import (
	"context"

	"github.com/etcd-functional/functional/agent/wire"
)

// Failpointer is the failpoint part of an agent's client: gofail
// failpoints of an etcd built with them (`make build FAILPOINTS=1`;
// wire.Status.Failpoints says whether the agent's etcd has them). It is
// part of Agent.
//
// A failpoint armed in one etcd process is gone once it exits; a restarted
// etcd starts with every failpoint disarmed.
type Failpointer interface {
	// Failpoints lists every failpoint of the running etcd with the term
	// it is armed with (empty when disarmed), sorted by name.
	Failpoints(ctx context.Context) ([]wire.Failpoint, error)
	// ArmFailpoint arms the failpoint name with a gofail term such as
	// "panic", "sleep(100)", "1*panic" or "50.0%return(true)" (see
	// wire.ArmFailpoint); a bad name or term is refused with the reason.
	ArmFailpoint(ctx context.Context, name, term string) error
	// DisarmFailpoint disarms the failpoint name; disarming one that is
	// not armed is not an error.
	DisarmFailpoint(ctx context.Context, name string) error
	// FailpointCount returns how many times the armed failpoint's term has
	// acted since it was armed; it is an error for a disarmed failpoint
	// (gofail forgets the count on disarm: read it first).
	FailpointCount(ctx context.Context, name string) (int, error)
}

var _ Failpointer = (*agentClient)(nil)

func (a *agentClient) Failpoints(ctx context.Context) ([]wire.Failpoint, error) {
	var fps []wire.Failpoint
	err := a.call(ctx, wire.MethodFailpoints, wire.Empty{}, &fps)
	return fps, err
}

func (a *agentClient) ArmFailpoint(ctx context.Context, name, term string) error {
	return a.call(ctx, wire.MethodArmFailpoint, wire.ArmFailpoint{Name: name, Term: term}, &wire.Empty{})
}

func (a *agentClient) DisarmFailpoint(ctx context.Context, name string) error {
	return a.call(ctx, wire.MethodDisarmFailpoint, name, &wire.Empty{})
}

func (a *agentClient) FailpointCount(ctx context.Context, name string) (int, error) {
	var n int
	err := a.call(ctx, wire.MethodFailpointCount, name, &n)
	return n, err
}

// readOnly reports whether method changes nothing on the agent, so that a
// call of it that may have reached the agent can be sent again.
func readOnly(method string) bool {
	switch method {
	case wire.MethodStatus, wire.MethodFailpoints, wire.MethodFailpointCount, wire.MethodScanLog:
		return true
	}
	return false
}
