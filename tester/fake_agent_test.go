package tester

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeAgent is an in-memory agent for testing the tester's own logic
// (selection, healing records, report, metrics). It keeps the state an
// agent reports; it runs no etcd and says nothing of etcd's behaviour.
type fakeAgent struct {
	ep string

	mu    sync.Mutex
	st    wire.Status
	calls []string
	// fail makes a method return an error without acting; lost makes
	// it act and then return an error, as a call whose reply was lost.
	fail map[string]error
	lost map[string]bool
	// stopSignal is the signal Stop's ladder needs; "" is SIGTERM.
	stopSignal string
	// onKill, if set, runs as Kill acts (under the agent's lock).
	onKill func()
	// fired counts each failpoint's firings; nil: the fake's etcd has
	// no failpoints.
	fired map[string]int
}

func newFakeAgent(ep, backend string) *fakeAgent {
	return &fakeAgent{ep: ep, st: wire.Status{State: wire.StateUninitialized, NetworkBackend: backend, EtcdVersion: "3.7.3"},
		fail: map[string]error{}, lost: map[string]bool{}}
}

var _ client.Agent = (*fakeAgent)(nil)

// do records a call of method and runs act under the lock unless the
// method is set to fail.
func (f *fakeAgent) do(ctx context.Context, method string, act func() error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, method)
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := f.fail[method]; err != nil {
		return fmt.Errorf("agent %s: %s: %w", f.ep, method, err)
	}
	if err := act(); err != nil {
		return fmt.Errorf("agent %s: %s: %w", f.ep, method, err)
	}
	if f.lost[method] {
		return fmt.Errorf("agent %s: %s: connection lost during the call, it may or may not have taken effect", f.ep, method)
	}
	return nil
}

func (f *fakeAgent) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeAgent) setFail(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, method)
	} else {
		f.fail[method] = err
	}
}

func (f *fakeAgent) Endpoint() string { return f.ep }

func (f *fakeAgent) running() bool {
	return f.st.State == wire.StateStarted || f.st.State == wire.StatePaused
}

func (f *fakeAgent) Start(ctx context.Context, args []string) (int, error) {
	err := f.do(ctx, "Start", func() error {
		if f.running() {
			return errors.New("etcd is running")
		}
		f.st.State, f.st.Pid, f.st.Args = wire.StateStarted, 100, args
		return nil
	})
	return f.st.Pid, err
}

func (f *fakeAgent) Restart(ctx context.Context) (int, error) {
	err := f.do(ctx, "Restart", func() error {
		if f.running() {
			return errors.New("etcd is running")
		}
		f.st.State, f.st.Pid = wire.StateStarted, 101
		return nil
	})
	return 101, err
}

func (f *fakeAgent) stop(ctx context.Context, method string, s wire.State) error {
	return f.do(ctx, method, func() error { f.st.State, f.st.Pid = s, 0; return nil })
}

// Stop ends the fake etcd as the agent's ladder would: by SIGTERM, unless
// stopSignal names the signal a stubborn etcd needed.
func (f *fakeAgent) Stop(ctx context.Context) error {
	return f.do(ctx, "Stop", func() error {
		sig := cmp.Or(f.stopSignal, "SIGTERM")
		f.st.State, f.st.Pid = wire.StateStopped, 0
		f.st.LastStopSignal, f.st.LastExitSignal, f.st.LastExitCode, f.st.LastExit = sig, sig, -1, "killed by "+sig
		return nil
	})
}
func (f *fakeAgent) Kill(ctx context.Context) error {
	return f.do(ctx, "Kill", func() error {
		if f.onKill != nil {
			f.onKill()
		}
		f.st.State, f.st.Pid = wire.StateStopped, 0
		return nil
	})
}
func (f *fakeAgent) Cleanup(ctx context.Context) error {
	return f.stop(ctx, "Cleanup", wire.StateStopped)
}
func (f *fakeAgent) Terminate(ctx context.Context) error {
	return f.stop(ctx, "Terminate", wire.StateTerminated)
}

func (f *fakeAgent) Archive(ctx context.Context, label string) (string, error) {
	dir := "/archive/" + f.ep + "/" + label
	err := f.do(ctx, "Archive", func() error {
		f.st.State, f.st.Pid, f.st.LastArchive = wire.StateStopped, 0, dir
		return nil
	})
	if err != nil {
		return "", err
	}
	return dir, nil
}

func (f *fakeAgent) Pause(ctx context.Context) error {
	return f.do(ctx, "Pause", func() error {
		if f.st.State != wire.StateStarted {
			return errors.New("not running")
		}
		f.st.State = wire.StatePaused
		return nil
	})
}

func (f *fakeAgent) Resume(ctx context.Context) error {
	return f.do(ctx, "Resume", func() error {
		if f.st.State != wire.StatePaused {
			return errors.New("not paused")
		}
		f.st.State = wire.StateStarted
		return nil
	})
}

func (f *fakeAgent) DropPort(ctx context.Context, port int) error {
	return f.do(ctx, "DropPort", func() error { f.st.DroppedPorts = append(f.st.DroppedPorts, port); return nil })
}

func (f *fakeAgent) RecoverPort(ctx context.Context, port int) error {
	return f.do(ctx, "RecoverPort", func() error {
		if !slices.Contains(f.st.DroppedPorts, port) {
			return fmt.Errorf("port %d is not dropped", port)
		}
		f.st.DroppedPorts = slices.DeleteFunc(f.st.DroppedPorts, func(p int) bool { return p == port })
		return nil
	})
}

func (f *fakeAgent) SetLatency(ctx context.Context, latency, jitter time.Duration) error {
	return f.do(ctx, "SetLatency", func() error { f.st.Latency, f.st.LatencyJitter = latency, jitter; return nil })
}

func (f *fakeAgent) RemoveLatency(ctx context.Context) error {
	return f.do(ctx, "RemoveLatency", func() error { f.st.Latency, f.st.LatencyJitter = 0, 0; return nil })
}

func (f *fakeAgent) KeepFaults(ctx context.Context, lease time.Duration) (time.Time, error) {
	var until time.Time
	err := f.do(ctx, "KeepFaults", func() error {
		until = time.Now().Add(lease)
		f.st.FaultLeaseUntil = until
		return nil
	})
	return until, err
}

// The fake's etcd has no failpoints, as a plain build's.
var errNoFailpoints = errors.New("etcd built without gofail failpoints")

func (f *fakeAgent) Failpoints(ctx context.Context) ([]wire.Failpoint, error) {
	return nil, f.do(ctx, "Failpoints", func() error { return errNoFailpoints })
}

func (f *fakeAgent) ArmFailpoint(ctx context.Context, name, term string) error {
	return f.do(ctx, "ArmFailpoint", func() error { return errNoFailpoints })
}

func (f *fakeAgent) DisarmFailpoint(ctx context.Context, name string) error {
	return f.do(ctx, "DisarmFailpoint", func() error { return errNoFailpoints })
}

func (f *fakeAgent) FailpointCount(ctx context.Context, name string) (int, error) {
	var n int
	err := f.do(ctx, "FailpointCount", func() error {
		if f.fired == nil {
			return errNoFailpoints
		}
		n = f.fired[name]
		return nil
	})
	return n, err
}

func (f *fakeAgent) Status(ctx context.Context) (wire.Status, error) {
	var st wire.Status
	err := f.do(ctx, "Status", func() error {
		st = f.st
		st.DroppedPorts = slices.Clone(f.st.DroppedPorts)
		return nil
	})
	return st, err
}

func (f *fakeAgent) Close() error { return nil }

// fakeSettings returns validated settings for n fake agents on loopback.
func fakeSettings(t *testing.T, n int, mod func(*Config)) (*settings, []*fakeAgent) {
	t.Helper()
	cfg := testConfig(n)
	agents := map[string]*fakeAgent{}
	var list []*fakeAgent
	for _, ep := range cfg.AgentEndpoints {
		a := newFakeAgent(ep, wire.BackendProxy)
		agents[ep] = a
		list = append(list, a)
	}
	cfg.DialAgent = func(ep string) (client.Agent, error) { return agents[ep], nil }
	if mod != nil {
		mod(&cfg)
	}
	s, err := cfg.normalize()
	if err != nil {
		t.Fatalf("normalize: %v", err)
	}
	return s, list
}

// testConfig is a valid configuration of n agents on 127.0.0.1 with the
// port layout of the integration tests.
func testConfig(n int) Config {
	cfg := DefaultConfig()
	cfg.AgentEndpoints, cfg.ClientPorts, cfg.PeerPorts = nil, nil, nil
	for i := range n {
		cfg.AgentEndpoints = append(cfg.AgentEndpoints, fmt.Sprintf("127.0.0.1:%d", 19027+i*10000))
		cfg.ClientPorts = append(cfg.ClientPorts, 12379+i*10000)
		cfg.PeerPorts = append(cfg.PeerPorts, 12380+i*10000)
	}
	cfg.MetricsAddr = ""
	return cfg
}

// fakeCluster builds a Cluster over fake agents; its member clients dial
// nothing until used.
func fakeCluster(t *testing.T, n int) (*Cluster, []*fakeAgent) {
	t.Helper()
	s, fakes := fakeSettings(t, n, nil)
	agents := make([]client.Agent, len(fakes))
	for i, f := range fakes {
		agents[i] = f
	}
	c, err := newCluster(s, agents)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, fakes
}
