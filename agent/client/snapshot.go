package client

import (
	"context"

	"github.com/etcd-functional/functional/agent/wire"
)

// Snapshotter saves a snapshot of the agent's etcd and restores a new
// seed member from it (wire.MethodSaveSnapshot, MethodRestoreSnapshot).
// It is not part of Agent: a caller asks for it with a type assertion.
type Snapshotter interface {
	SaveSnapshot(ctx context.Context) (wire.Snapshot, error)
	RestoreSnapshot(ctx context.Context, args []string) (pid int, err error)
}

var _ Snapshotter = (*agentClient)(nil)

func (a *agentClient) SaveSnapshot(ctx context.Context) (wire.Snapshot, error) {
	var s wire.Snapshot
	err := a.call(ctx, wire.MethodSaveSnapshot, wire.Empty{}, &s)
	return s, err
}

func (a *agentClient) RestoreSnapshot(ctx context.Context, args []string) (int, error) {
	var pid int
	err := a.call(ctx, wire.MethodRestoreSnapshot, args, &pid)
	return pid, err
}
