// Package client is the typed client of etcd-agent. It hides the net/rpc
// method strings of package wire behind a Go interface, so that the tester
// never spells "Agent.RPCStart", and it adds what a controller needs on an
// unreliable network: contexts, authentication, TLS, and reconnection.
package client

import (
	"context"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
)

// Agent is one etcd-agent as its caller sees it. Every method honours ctx.
type Agent interface {
	Endpoint() string
	Start(ctx context.Context, args []string) (pid int, err error)
	Stop(ctx context.Context) error
	Restart(ctx context.Context) (pid int, err error)
	Kill(ctx context.Context) error
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	Cleanup(ctx context.Context) error
	// Archive is Cleanup with a label (e.g. "round3_SIGKILL_LEADER") that
	// names the archive directory; it returns that directory.
	Archive(ctx context.Context, label string) (dir string, err error)
	Terminate(ctx context.Context) error
	DropPort(ctx context.Context, port int) error
	RecoverPort(ctx context.Context, port int) error
	SetLatency(ctx context.Context, latency, jitter time.Duration) error
	RemoveLatency(ctx context.Context) error
	Status(ctx context.Context) (wire.Status, error)
	Close() error
}
