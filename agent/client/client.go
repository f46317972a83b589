// Package client is the typed client of etcd-agent. It hides the net/rpc
// method strings of package wire behind a Go interface, so that the tester
// never spells "Agent.RPCStart", and it adds what a controller needs on an
// unreliable network: contexts, authentication, TLS, and reconnection.
package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/rpc"
	"slices"
	"strconv"
	"sync"
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
	FaultKeeper
	Failpointer
	Close() error
}

// ErrUnreachable is wrapped by the error of a call that found no agent to
// talk to for the whole of Config.RetryFor.
var ErrUnreachable = errors.New("unreachable")

// FaultKeeper renews an agent's fault lease (wire.MethodKeepFaults): the
// faults it has injected last until lease from now, then the agent heals
// them on its own. It returns when the lease ends.
type FaultKeeper interface {
	KeepFaults(ctx context.Context, lease time.Duration) (until time.Time, err error)
}

var _ FaultKeeper = (*agentClient)(nil)

// Config says how to reach an agent.
type Config struct {
	// Token, if set, is presented to the agent as a bearer token.
	Token string
	// TLS, if set, is used to talk TLS to the agent (set RootCAs to verify
	// it, Certificates to present a client certificate).
	TLS *tls.Config
	// DialTimeout bounds one connection attempt; default 5 s.
	DialTimeout time.Duration
	// RetryFor is how long a call keeps trying to (re)connect to an agent
	// that does not answer, with backoff, before it fails; default 30 s.
	// It covers an agent that restarts during a run.
	RetryFor time.Duration
}

// ErrUnauthorized is returned when the agent refuses the credentials.
var ErrUnauthorized = errors.New("agent refused the credentials")

// New returns a client of the agent at endpoint ("host:port", no scheme).
// It connects lazily, on the first call.
func New(endpoint string, cfg Config) (Agent, error) {
	if err := ValidateEndpoint(endpoint); err != nil {
		return nil, err
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.RetryFor <= 0 {
		cfg.RetryFor = 30 * time.Second
	}
	return &agentClient{endpoint: endpoint, cfg: cfg}, nil
}

// ValidateEndpoint reports whether endpoint is a usable "host:port".
func ValidateEndpoint(endpoint string) error {
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		return fmt.Errorf("agent endpoint %q: want host:port without a scheme: %w", endpoint, err)
	}
	if host == "" {
		return fmt.Errorf("agent endpoint %q: host is empty; want host:port", endpoint)
	}
	if p, err := strconv.Atoi(port); err != nil || p < wire.MinPort || p > wire.MaxPort {
		return fmt.Errorf("agent endpoint %q: port %q: want %d..%d", endpoint, port, wire.MinPort, wire.MaxPort)
	}
	return nil
}

type agentClient struct {
	endpoint string
	cfg      Config

	mu     sync.Mutex
	idle   []*rpc.Client        // connected, no call in flight, most recent last
	open   map[*rpc.Client]bool // every connection, idle or carrying a call
	closed bool
}

// maxIdle bounds the connections kept for later calls. Each call has a
// connection to itself while it runs (net/rpc cannot cancel one call on a
// shared connection without closing it under the others), so concurrent
// calls open more; those beyond maxIdle are closed when their call ends.
const maxIdle = 4

func (a *agentClient) Endpoint() string { return a.endpoint }

func (a *agentClient) Start(ctx context.Context, args []string) (int, error) {
	var pid int
	err := a.call(ctx, wire.MethodStart, args, &pid)
	return pid, err
}

func (a *agentClient) Stop(ctx context.Context) error { return a.empty(ctx, wire.MethodStop) }

func (a *agentClient) Restart(ctx context.Context) (int, error) {
	var pid int
	err := a.call(ctx, wire.MethodRestart, wire.Empty{}, &pid)
	return pid, err
}

func (a *agentClient) Kill(ctx context.Context) error    { return a.empty(ctx, wire.MethodKill) }
func (a *agentClient) Pause(ctx context.Context) error   { return a.empty(ctx, wire.MethodPause) }
func (a *agentClient) Resume(ctx context.Context) error  { return a.empty(ctx, wire.MethodResume) }
func (a *agentClient) Cleanup(ctx context.Context) error { return a.empty(ctx, wire.MethodCleanup) }

func (a *agentClient) Archive(ctx context.Context, label string) (string, error) {
	var reply wire.Archive
	err := a.call(ctx, wire.MethodArchive, label, &reply)
	return reply.Dir, err
}

func (a *agentClient) Terminate(ctx context.Context) error { return a.empty(ctx, wire.MethodTerminate) }

func (a *agentClient) DropPort(ctx context.Context, port int) error {
	return a.call(ctx, wire.MethodDropPort, port, &wire.Empty{})
}

func (a *agentClient) RecoverPort(ctx context.Context, port int) error {
	return a.call(ctx, wire.MethodRecoverPort, port, &wire.Empty{})
}

// SetLatency adds latency ± jitter to the member's peer traffic. The wire
// carries whole milliseconds, as upstream's RPCSetLatency did.
func (a *agentClient) SetLatency(ctx context.Context, latency, jitter time.Duration) error {
	return a.call(ctx, wire.MethodSetLatency, []int{int(latency.Milliseconds()), int(jitter.Milliseconds())}, &wire.Empty{})
}

func (a *agentClient) RemoveLatency(ctx context.Context) error {
	return a.empty(ctx, wire.MethodRemoveLatency)
}

func (a *agentClient) Status(ctx context.Context) (wire.Status, error) {
	var st wire.Status
	err := a.call(ctx, wire.MethodStatus, wire.Empty{}, &st)
	return st, err
}

func (a *agentClient) KeepFaults(ctx context.Context, lease time.Duration) (time.Time, error) {
	var until time.Time
	err := a.call(ctx, wire.MethodKeepFaults, lease, &until)
	return until, err
}

// Close closes every connection, ending the calls in flight; later calls
// fail.
func (a *agentClient) Close() error {
	a.mu.Lock()
	a.closed = true
	conns := make([]*rpc.Client, 0, len(a.open))
	for rc := range a.open {
		conns = append(conns, rc)
	}
	a.open, a.idle = nil, nil
	a.mu.Unlock()
	var errs []error
	for _, rc := range conns {
		if err := rc.Close(); err != nil && !errors.Is(err, rpc.ErrShutdown) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (a *agentClient) empty(ctx context.Context, method string) error {
	return a.call(ctx, method, wire.Empty{}, &wire.Empty{})
}

// call invokes method on a connection of its own, connecting first if need
// be. A call is retried, with backoff and for at most cfg.RetryFor, only
// while it cannot have reached the agent (no connection, or a connection
// already known to be broken), so that a call that may have acted is never
// sent twice. Calls that change nothing (Status, Failpoints, FailpointCount)
// are retried after any
// connection failure.
func (a *agentClient) call(ctx context.Context, method string, args, reply any) error {
	deadline := time.Now().Add(a.cfg.RetryFor)
	backoff := 100 * time.Millisecond
	stale := 0 // idle connections found closed by the agent
	for {
		rc, reused, err := a.conn(ctx)
		if err == nil {
			err = a.invoke(ctx, rc, method, args, reply)
			if err == nil {
				a.release(rc)
				return nil
			}
			var serverErr rpc.ServerError
			if errors.As(err, &serverErr) {
				a.release(rc) // answered: the connection is sound
				return fmt.Errorf("agent %s: %s: %w", a.endpoint, method, err)
			}
			a.drop(rc)
			if errors.Is(err, rpc.ErrShutdown) && reused && stale < maxIdle && ctx.Err() == nil {
				// An idle connection the agent closed meanwhile (it
				// restarted): the call never left, and the next idle
				// one or a new one is worth a try at once.
				stale++
				continue
			}
			if !errors.Is(err, rpc.ErrShutdown) && !readOnly(method) {
				return fmt.Errorf("agent %s: %s: connection lost during the call, it may or may not have taken effect: %w", a.endpoint, method, err)
			}
		}
		if errors.Is(err, ErrUnauthorized) || errors.Is(err, errClosed) || isCertError(err) || ctx.Err() != nil {
			return fmt.Errorf("agent %s: %s: %w", a.endpoint, method, err)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("agent %s: %s: %w for %v: %w", a.endpoint, method, ErrUnreachable, a.cfg.RetryFor, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent %s: %s: %w (last error: %v)", a.endpoint, method, ctx.Err(), err)
		case <-time.After(min(backoff, time.Until(deadline))): // the last try is at the deadline
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// invoke runs one call on rc and honours ctx: net/rpc cannot cancel a call,
// so on cancellation the connection is closed, which ends the call. No
// other call uses rc meanwhile, so none is harmed.
func (a *agentClient) invoke(ctx context.Context, rc *rpc.Client, method string, args, reply any) error {
	call := rc.Go(method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		return call.Error
	case <-ctx.Done():
		a.drop(rc)
		<-call.Done
		return ctx.Err()
	}
}

var errClosed = errors.New("client closed")

// isCertError reports whether err is the agent's certificate failing
// verification: a configuration error that retrying cannot mend.
func isCertError(err error) bool {
	var certErr *tls.CertificateVerificationError
	return errors.As(err, &certErr)
}

// conn returns a connection for one call: an idle one (reused true) or a
// new one. The caller gives it back with release or drop.
func (a *agentClient) conn(ctx context.Context) (rc *rpc.Client, reused bool, err error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, false, errClosed
	}
	if n := len(a.idle); n > 0 {
		rc = a.idle[n-1]
		a.idle = a.idle[:n-1]
		a.mu.Unlock()
		return rc, true, nil
	}
	a.mu.Unlock()
	// Dialled without the lock: a slow dial does not hold up the calls
	// that have a connection.
	if rc, err = a.dial(ctx); err != nil {
		return nil, false, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		rc.Close()
		return nil, false, errClosed
	}
	if a.open == nil {
		a.open = map[*rpc.Client]bool{}
	}
	a.open[rc] = true
	return rc, false, nil
}

// release gives back the connection of a call that was answered: it is
// kept for a later call, or closed if enough are kept already.
func (a *agentClient) release(rc *rpc.Client) {
	a.mu.Lock()
	if !a.closed && a.open[rc] && len(a.idle) < maxIdle {
		a.idle = append(a.idle, rc)
		a.mu.Unlock()
		return
	}
	delete(a.open, rc)
	a.mu.Unlock()
	rc.Close()
}

// drop forgets rc and closes it. It may be called more than once.
func (a *agentClient) drop(rc *rpc.Client) {
	a.mu.Lock()
	delete(a.open, rc)
	a.idle = slices.DeleteFunc(a.idle, func(c *rpc.Client) bool { return c == rc })
	a.mu.Unlock()
	rc.Close()
}

// dial connects the way net/rpc's DialHTTP does (HTTP CONNECT on the
// default RPC path), adding the bearer token and TLS.
func (a *agentClient) dial(ctx context.Context) (*rpc.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", a.endpoint)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	if a.cfg.TLS != nil {
		cfg := a.cfg.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(a.endpoint)
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		conn = tc
	}
	req := "CONNECT " + rpc.DefaultRPCPath + " HTTP/1.0\n"
	if a.cfg.Token != "" {
		req += "Authorization: Bearer " + a.cfg.Token + "\n"
	}
	if _, err := io.WriteString(conn, req+"\n"); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: "CONNECT"})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read CONNECT response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		conn.Close()
		if resp.StatusCode == http.StatusUnauthorized {
			return nil, fmt.Errorf("%w: %s", ErrUnauthorized, body)
		}
		return nil, fmt.Errorf("unexpected HTTP response %q: %s", resp.Status, body)
	}
	conn.SetDeadline(time.Time{})
	return rpc.NewClient(conn), nil
}
