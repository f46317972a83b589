package client

import (
	"context"

	"github.com/etcd-functional/functional/agent/wire"
)

// LogScanner reads etcd's log on the agent's host (wire.MethodScanLog).
// It is not part of Agent, so that fakes need not implement it: a caller
// asks for it with a type assertion.
type LogScanner interface {
	// ScanLog returns the lines of etcd's log from s.From on that
	// contain one of s.Patterns and none of s.Except, and where the scan
	// ended (the next scan's From).
	ScanLog(ctx context.Context, s wire.ScanLog) (wire.LogScan, error)
}

var _ LogScanner = (*agentClient)(nil)

func (a *agentClient) ScanLog(ctx context.Context, s wire.ScanLog) (wire.LogScan, error) {
	var out wire.LogScan
	err := a.call(ctx, wire.MethodScanLog, s, &out)
	return out, err
}
