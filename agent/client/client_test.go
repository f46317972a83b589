package client_test

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
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/secret"
	"github.com/etcd-functional/functional/internal/testpki"
)

// ---------------------------------------------------------------------------
// Endpoint validation

func TestNewValidatesTheEndpoint(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"127.0.0.1:9027", "localhost:1", "agent-3.example:65535", "[::1]:9027"} {
		c, err := client.New(ok, client.Config{})
		if err != nil {
			t.Errorf("New(%q): %v, want it accepted", ok, err)
			continue
		}
		if c.Endpoint() != ok {
			t.Errorf("New(%q).Endpoint() = %q", ok, c.Endpoint())
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close of a client that never connected: %v", err)
		}
	}
	for _, tc := range []struct {
		endpoint string
		want     string // what the message must say is wanted
	}{
		{"http://x:1", "without a scheme"},
		{"x", "host:port"},
		{"", "host:port"},
		{":9027", "host is empty"},
		{"x:0", "want 1..65535"},
		{"x:70000", "want 1..65535"},
		{"x:-1", "want 1..65535"},
		{"x:http", "want 1..65535"},
	} {
		c, err := client.New(tc.endpoint, client.Config{})
		if err == nil {
			c.Close()
			t.Errorf("New(%q) accepted it, want an error", tc.endpoint)
			continue
		}
		if c != nil {
			t.Errorf("New(%q) returned a client with its error", tc.endpoint)
		}
		if msg := err.Error(); !strings.Contains(msg, fmt.Sprintf("%q", tc.endpoint)) || !strings.Contains(msg, tc.want) {
			t.Errorf("New(%q): %q, want it to name the endpoint and say %q", tc.endpoint, msg, tc.want)
		}
	}
}

// ---------------------------------------------------------------------------
// A stub agent: net/rpc of the test's own, so that a test controls exactly
// what the server does with a call.

// stubCall is one request the stub received.
type stubCall struct {
	Method string
	Args   any
}

// behaviour decides how the stub answers one call: return nil to answer
// normally, an error to answer with it (rpc.ServerError at the client);
// it may also close conn (the connection dies mid-call) or block.
type behaviour func(method string, conn net.Conn) error

type stub struct {
	ln       net.Listener
	addr     string
	stopping chan struct{} // closed at cleanup: blocked handlers return

	mu     sync.Mutex
	calls  []stubCall
	auth   []string // the Authorization header of each CONNECT
	conns  []net.Conn
	behave behaviour

	wg sync.WaitGroup
}

const (
	stubStartPid   = 4242
	stubRestartPid = 4343
)

var stubStatus = wire.Status{
	State:            wire.StatePaused,
	Pid:              777,
	LastStopSignal:   "SIGINT",
	LastStopDuration: 1234 * time.Millisecond,
	Args:             []string{"--name", "s1", "--data-dir=etcd.data"},
	NetworkBackend:   wire.BackendProxy,
	PeerProxy:        true,
	DroppedPorts:     []int{2380, 12380},
	Latency:          1500 * time.Millisecond,
	LatencyJitter:    200 * time.Millisecond,
	LastArchive:      "/base/failure_archive/x",
	Adopted:          true,
	FaultLeaseUntil:  time.Date(2026, 12, 1, 19, 0, 0, 0, time.UTC),
	FaultsExpiredAt:  time.Date(2026, 12, 1, 18, 0, 0, 0, time.UTC),
	FaultsExpired:    []string{"etcd paused"},
}

func newStub(t *testing.T) *stub {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &stub{ln: ln, addr: ln.Addr().String(), stopping: make(chan struct{})}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.close)
	return s
}

func (s *stub) accept() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, conn)
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(conn)
		}()
	}
}

// serve answers the CONNECT the way net/rpc's HandleHTTP does, then serves
// the "Agent" service on the connection with a server of its own, so that
// the service knows its connection and can cut it.
func (s *stub) serve(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.auth = append(s.auth, req.Header.Get("Authorization"))
	s.mu.Unlock()
	if req.Method != http.MethodConnect || req.URL.Path != rpc.DefaultRPCPath {
		io.WriteString(conn, "HTTP/1.0 404 Not Found\r\n\r\n")
		return
	}
	if _, err := io.WriteString(conn, "HTTP/1.0 200 Connected to Go RPC\n\n"); err != nil {
		return
	}
	srv := rpc.NewServer()
	if err := srv.RegisterName(wire.ServiceName, &stubService{s: s, conn: conn}); err != nil {
		panic(err)
	}
	srv.ServeConn(struct {
		io.Reader
		io.WriteCloser
	}{br, conn})
}

func (s *stub) close() {
	s.ln.Close()
	close(s.stopping)
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *stub) setBehaviour(b behaviour) {
	s.mu.Lock()
	s.behave = b
	s.mu.Unlock()
}

// record returns the calls and connections so far.
func (s *stub) record() (calls []stubCall, conns int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]stubCall(nil), s.calls...), len(s.conns)
}

func (s *stub) authorization() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.auth...)
}

// hang is a behaviour that never answers (until the stub is closed or
// release is closed).
func (s *stub) hang(release <-chan struct{}) behaviour {
	return func(string, net.Conn) error {
		select {
		case <-release:
		case <-s.stopping:
		}
		return errors.New("released")
	}
}

// cutOnce is a behaviour that closes the connection after reading the
// request of the first call of method, without answering; every other call
// is answered.
func cutOnce(method string) behaviour {
	var once sync.Once
	return func(m string, conn net.Conn) error {
		if m == method {
			once.Do(func() { conn.Close() })
		}
		return nil
	}
}

type stubService struct {
	s    *stub
	conn net.Conn
}

func (x *stubService) do(method string, args any) error {
	x.s.mu.Lock()
	x.s.calls = append(x.s.calls, stubCall{method, args})
	b := x.s.behave
	x.s.mu.Unlock()
	if b == nil {
		return nil
	}
	return b(method, x.conn)
}

func (x *stubService) RPCStart(args []string, pid *int) error {
	*pid = stubStartPid
	return x.do(wire.MethodStart, args)
}
func (x *stubService) RPCStop(a wire.Empty, _ *wire.Empty) error { return x.do(wire.MethodStop, a) }
func (x *stubService) RPCRestart(a wire.Empty, pid *int) error {
	*pid = stubRestartPid
	return x.do(wire.MethodRestart, a)
}
func (x *stubService) RPCKill(a wire.Empty, _ *wire.Empty) error   { return x.do(wire.MethodKill, a) }
func (x *stubService) RPCPause(a wire.Empty, _ *wire.Empty) error  { return x.do(wire.MethodPause, a) }
func (x *stubService) RPCResume(a wire.Empty, _ *wire.Empty) error { return x.do(wire.MethodResume, a) }
func (x *stubService) RPCCleanup(a wire.Empty, _ *wire.Empty) error {
	return x.do(wire.MethodCleanup, a)
}
func (x *stubService) RPCArchive(label string, reply *wire.Archive) error {
	reply.Dir = "/base/failure_archive/" + label
	return x.do(wire.MethodArchive, label)
}
func (x *stubService) RPCTerminate(a wire.Empty, _ *wire.Empty) error {
	return x.do(wire.MethodTerminate, a)
}
func (x *stubService) RPCDropPort(port int, _ *wire.Empty) error {
	return x.do(wire.MethodDropPort, port)
}
func (x *stubService) RPCRecoverPort(port int, _ *wire.Empty) error {
	return x.do(wire.MethodRecoverPort, port)
}
func (x *stubService) RPCSetLatency(msrv []int, _ *wire.Empty) error {
	return x.do(wire.MethodSetLatency, msrv)
}
func (x *stubService) RPCRemoveLatency(a wire.Empty, _ *wire.Empty) error {
	return x.do(wire.MethodRemoveLatency, a)
}
func (x *stubService) RPCKeepFaults(lease time.Duration, until *time.Time) error {
	*until = stubLeaseUntil
	return x.do(wire.MethodKeepFaults, lease)
}

var stubLeaseUntil = time.Date(2026, 12, 1, 20, 0, 0, 0, time.UTC)

func (x *stubService) RPCStatus(a wire.Empty, st *wire.Status) error {
	*st = stubStatus
	return x.do(wire.MethodStatus, a)
}

// newClient returns a client of addr, closed when the test ends.
func newClient(t *testing.T, addr string, cfg client.Config) client.Agent {
	t.Helper()
	c, err := client.New(addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ---------------------------------------------------------------------------
// The wire mapping

// TestEveryMethodMapsToItsWireMethod calls every method of the client once
// against the stub and checks the wire method, the argument it carried and
// what the client made of the reply.
func TestEveryMethodMapsToItsWireMethod(t *testing.T) {
	t.Parallel()
	s := newStub(t)
	c := newClient(t, s.addr, client.Config{RetryFor: 5 * time.Second})
	ctx := context.Background()
	none := wire.Empty{}
	for _, tc := range []struct {
		name      string
		call      func() (any, error)
		method    string
		args      any
		wantReply any // nil: nothing returned but the error
	}{
		{"Start", func() (any, error) { return c.Start(ctx, []string{"--name", "s1", "--x=y"}) },
			wire.MethodStart, []string{"--name", "s1", "--x=y"}, stubStartPid},
		{"Stop", func() (any, error) { return nil, c.Stop(ctx) }, wire.MethodStop, none, nil},
		{"Restart", func() (any, error) { return c.Restart(ctx) }, wire.MethodRestart, none, stubRestartPid},
		{"Kill", func() (any, error) { return nil, c.Kill(ctx) }, wire.MethodKill, none, nil},
		{"Pause", func() (any, error) { return nil, c.Pause(ctx) }, wire.MethodPause, none, nil},
		{"Resume", func() (any, error) { return nil, c.Resume(ctx) }, wire.MethodResume, none, nil},
		{"Cleanup", func() (any, error) { return nil, c.Cleanup(ctx) }, wire.MethodCleanup, none, nil},
		{"Archive", func() (any, error) { return c.Archive(ctx, "round3_SIGKILL_LEADER") },
			wire.MethodArchive, "round3_SIGKILL_LEADER", "/base/failure_archive/round3_SIGKILL_LEADER"},
		{"Terminate", func() (any, error) { return nil, c.Terminate(ctx) }, wire.MethodTerminate, none, nil},
		{"DropPort", func() (any, error) { return nil, c.DropPort(ctx, 2380) }, wire.MethodDropPort, 2380, nil},
		{"RecoverPort", func() (any, error) { return nil, c.RecoverPort(ctx, 12380) }, wire.MethodRecoverPort, 12380, nil},
		{"SetLatency", func() (any, error) { return nil, c.SetLatency(ctx, 1500*time.Millisecond, 200*time.Millisecond) },
			wire.MethodSetLatency, []int{1500, 200}, nil},
		{"SetLatencyWholeMilliseconds", func() (any, error) {
			return nil, c.SetLatency(ctx, 2*time.Second+900*time.Microsecond, 999*time.Microsecond)
		}, wire.MethodSetLatency, []int{2000, 0}, nil},
		{"RemoveLatency", func() (any, error) { return nil, c.RemoveLatency(ctx) }, wire.MethodRemoveLatency, none, nil},
		{"Status", func() (any, error) { return c.Status(ctx) }, wire.MethodStatus, none, stubStatus},
		{"KeepFaults", func() (any, error) { return c.(client.FaultKeeper).KeepFaults(ctx, 90*time.Second) },
			wire.MethodKeepFaults, 90 * time.Second, stubLeaseUntil},
	} {
		before, _ := s.record()
		reply, err := tc.call()
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if tc.wantReply != nil && !reflect.DeepEqual(reply, tc.wantReply) {
			t.Errorf("%s returned %#v, want %#v", tc.name, reply, tc.wantReply)
		}
		after, _ := s.record()
		got := after[len(before):]
		want := []stubCall{{tc.method, tc.args}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s sent %#v, want %#v", tc.name, got, want)
		}
	}
	if _, conns := s.record(); conns != 1 {
		t.Errorf("%d connections for sequential calls, want 1 (the connection is reused)", conns)
	}
	if auth := s.authorization(); len(auth) != 1 || auth[0] != "" {
		t.Errorf("Authorization headers %q, want none sent without a token", auth)
	}
}

// TestServerErrorIsWrappedAndNotRetried: the agent's answer "no" reaches
// the caller as an rpc.ServerError, wrapped with the endpoint and method,
// and the call is sent once, however idempotent.
func TestServerErrorIsWrappedAndNotRetried(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		method string
		call   func(client.Agent) error
	}{
		{wire.MethodDropPort, func(c client.Agent) error { return c.DropPort(context.Background(), 2380) }},
		{wire.MethodStart, func(c client.Agent) error { _, err := c.Start(context.Background(), nil); return err }},
		{wire.MethodStatus, func(c client.Agent) error { _, err := c.Status(context.Background()); return err }},
	} {
		t.Run(tc.method, func(t *testing.T) {
			t.Parallel()
			s := newStub(t)
			s.setBehaviour(func(string, net.Conn) error { return errors.New("port 2380 is busy elsewhere") })
			c := newClient(t, s.addr, client.Config{RetryFor: 10 * time.Second})
			start := time.Now()
			err := tc.call(c)
			if elapsed := time.Since(start); elapsed > time.Second {
				t.Errorf("a server error took %v to come back, want it at once", elapsed)
			}
			if err == nil {
				t.Fatal("no error, want the stub's")
			}
			for _, want := range []string{s.addr, tc.method, "port 2380 is busy elsewhere"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			var se rpc.ServerError
			if !errors.As(err, &se) || string(se) != "port 2380 is busy elsewhere" {
				t.Errorf("errors.As(%v, *rpc.ServerError) = %v (%q), want the server's text", err, errors.As(err, &se), se)
			}
			if strings.Contains(err.Error(), "may or may not") {
				t.Errorf("error %q: a server answer is certain, not a lost connection", err)
			}
			calls, conns := s.record()
			if len(calls) != 1 || conns != 1 {
				t.Errorf("stub saw %d calls on %d connections, want 1 on 1 (no retry of an answered call)", len(calls), conns)
			}
			// The connection is still good: the next call is answered on it.
			s.setBehaviour(nil)
			if _, err := c.Status(context.Background()); err != nil {
				t.Fatalf("Status after a server error: %v", err)
			}
			if _, conns := s.record(); conns != 1 {
				t.Errorf("%d connections, want 1: a server error does not break the connection", conns)
			}
		})
	}
}

// TestAgainstTheRealAgent runs the client against the real service, so
// that the types of the two sides are checked together: arguments the
// agent decodes and judges, replies the client decodes.
func TestAgainstTheRealAgent(t *testing.T) {
	t.Parallel()
	s := serveAgent(t, agent.Config{}, nil)
	c := newClient(t, s.addr, client.Config{RetryFor: 5 * time.Second})
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != wire.StateUninitialized || st.NetworkBackend != wire.BackendProxy || st.Pid != 0 {
		t.Errorf("Status of a new agent = %+v, want uninitialized, proxy backend, no pid", st)
	}

	// Argument values reach the agent intact: its answer quotes them.
	var se rpc.ServerError
	err = c.DropPort(ctx, 70000)
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "port 70000: want 1..65535") {
		t.Errorf("DropPort(70000) = %v, want the agent's refusal naming port 70000", err)
	}
	err = c.SetLatency(ctx, 100*time.Millisecond, 250*time.Millisecond)
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "jitter 250 ms") {
		t.Errorf("SetLatency(100ms, 250ms) = %v, want the agent's refusal naming jitter 250 ms", err)
	}
	_, err = c.Archive(ctx, "../escape")
	if !errors.As(err, &se) || !strings.Contains(err.Error(), `"../escape"`) {
		t.Errorf(`Archive("../escape") = %v, want the agent's refusal naming the label`, err)
	}

	// A call that changes something, and Status shows it.
	if err := c.Terminate(ctx); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
	if st, err := c.Status(ctx); err != nil || st.State != wire.StateTerminated {
		t.Errorf("Status after Terminate = %+v, %v; want state %s", st, err, wire.StateTerminated)
	}
}

// TestConcurrentCallsShareTheClient: the client is safe for concurrent use
// (run with -race) and every call gets its own reply.
func TestConcurrentCallsShareTheClient(t *testing.T) {
	t.Parallel()
	s := newStub(t)
	c := newClient(t, s.addr, client.Config{RetryFor: 5 * time.Second})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 20 {
		wg.Go(func() {
			label := fmt.Sprintf("l%d", i)
			dir, err := c.Archive(context.Background(), label)
			if err == nil && dir != "/base/failure_archive/"+label {
				err = fmt.Errorf("Archive(%q) = %q: another call's reply", label, dir)
			}
			errs <- err
		})
		wg.Go(func() {
			_, err := c.Status(context.Background())
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if calls, _ := s.record(); len(calls) != 40 {
		t.Errorf("stub saw %d calls, want 40", len(calls))
	}
}

// ---------------------------------------------------------------------------
// A real agent served in-process, which a test can restart.

type agentServer struct {
	t    *testing.T
	a    *agent.Agent
	addr string
	tls  *tls.Config

	mu       sync.Mutex
	ln       *trackingListener
	cancel   context.CancelFunc
	done     chan error
	accepted int // connections accepted over every serving
}

// serveAgent creates an agent (EtcdPath /bin/true: no test here runs etcd;
// network faults by the proxy, so that iptables is never touched) and
// serves it on a loopback port until the test ends.
func serveAgent(t *testing.T, cfg agent.Config, tlsConfig *tls.Config) *agentServer {
	t.Helper()
	if cfg.EtcdPath == "" {
		cfg.EtcdPath = "/bin/true"
	}
	cfg.BaseDir = t.TempDir()
	cfg.NetworkFaults = agent.FaultsProxy
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	s := &agentServer{t: t, a: a, addr: ln.Addr().String(), tls: tlsConfig}
	s.start(ln)
	t.Cleanup(func() {
		s.stop()
		if err := a.Close(); err != nil {
			t.Errorf("agent Close: %v", err)
		}
	})
	return s
}

func (s *agentServer) start(ln net.Listener) {
	ctx, cancel := context.WithCancel(context.Background())
	tl := &trackingListener{Listener: ln, s: s}
	done := make(chan error, 1)
	s.mu.Lock()
	s.ln, s.cancel, s.done = tl, cancel, done
	s.mu.Unlock()
	go func() { done <- s.a.Serve(ctx, tl, s.tls) }()
}

// stop stops serving: the listener and every connection are closed, as
// when the agent's process dies. It does nothing if not serving.
func (s *agentServer) stop() {
	s.mu.Lock()
	ln, cancel, done := s.ln, s.cancel, s.done
	s.ln, s.cancel, s.done = nil, nil, nil
	s.mu.Unlock()
	if ln == nil {
		return
	}
	ln.closeConns() // first, so that Shutdown waits for none of them
	cancel()
	if err := <-done; err != nil {
		s.t.Errorf("Serve: %v", err)
	}
	ln.closeConns() // any accepted meanwhile; hijacked ones are not Shutdown's
}

// restart stops serving, and serves again on the same port after down.
// It returns at once; the returned channel is closed when it serves again.
func (s *agentServer) restart(down time.Duration) <-chan struct{} {
	s.stop()
	up := make(chan struct{})
	go func() {
		defer close(up)
		time.Sleep(down)
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			s.t.Errorf("listen again on %s: %v", s.addr, err)
			return
		}
		s.start(ln)
	}()
	return up
}

func (s *agentServer) acceptedConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// trackingListener remembers the connections it accepted, so that they can
// be closed: http.Server.Shutdown does not close hijacked RPC connections.
type trackingListener struct {
	net.Listener
	s     *agentServer
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
		l.s.mu.Lock()
		l.s.accepted++
		l.s.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) closeConns() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

// ---------------------------------------------------------------------------
// Token and TLS

func TestTokenIsPresented(t *testing.T) {
	t.Parallel()
	const token = "0123456789abcdef-secret"
	s := serveAgent(t, agent.Config{Token: token}, nil)

	for _, tc := range []struct{ name, token string }{{"NoToken", ""}, {"WrongToken", "0123456789abcdef-guess"}} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, s.addr, client.Config{Token: tc.token, RetryFor: 10 * time.Second})
			start := time.Now()
			_, err := c.Status(context.Background())
			elapsed := time.Since(start)
			if !errors.Is(err, client.ErrUnauthorized) {
				t.Fatalf("Status = %v, want client.ErrUnauthorized", err)
			}
			if elapsed > time.Second {
				t.Errorf("refusal took %v with RetryFor 10 s, want it at once: credentials are not retried", elapsed)
			}
			if !strings.Contains(err.Error(), s.addr) {
				t.Errorf("error %q does not name the endpoint", err)
			}
		})
	}
	t.Run("RightToken", func(t *testing.T) {
		c := newClient(t, s.addr, client.Config{Token: token, RetryFor: 5 * time.Second})
		if _, err := c.Status(context.Background()); err != nil {
			t.Fatalf("Status with the right token: %v", err)
		}
	})
	t.Run("SentAsBearer", func(t *testing.T) {
		st := newStub(t)
		c := newClient(t, st.addr, client.Config{Token: token, RetryFor: 5 * time.Second})
		if _, err := c.Status(context.Background()); err != nil {
			t.Fatal(err)
		}
		if auth := st.authorization(); !reflect.DeepEqual(auth, []string{"Bearer " + token}) {
			t.Errorf("Authorization headers %q, want exactly one %q", auth, "Bearer "+token)
		}
	})
}

func TestTLS(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	serverCert, serverKey := ca.Server(t, "server", net.ParseIP("127.0.0.1"))
	otherCA := testpki.New(t)
	serverTLS, err := secret.ServerTLS(serverCert, serverKey, "")
	if err != nil {
		t.Fatal(err)
	}
	s := serveAgent(t, agent.Config{}, serverTLS)

	t.Run("TrustedCA", func(t *testing.T) {
		cfg, err := secret.ClientTLS("", "", ca.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		c := newClient(t, s.addr, client.Config{TLS: cfg, RetryFor: 5 * time.Second})
		if _, err := c.Status(context.Background()); err != nil {
			t.Fatalf("Status over TLS with the CA that signed the agent's certificate: %v", err)
		}
	})
	t.Run("OtherCA", func(t *testing.T) {
		cfg, err := secret.ClientTLS("", "", otherCA.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		c := newClient(t, s.addr, client.Config{TLS: cfg, RetryFor: 10 * time.Second})
		start := time.Now()
		_, err = c.Status(context.Background())
		elapsed := time.Since(start)
		if err == nil {
			t.Fatal("Status succeeded with a client that trusts another CA")
		}
		var verr *tls.CertificateVerificationError
		if !errors.As(err, &verr) || !strings.Contains(err.Error(), "TLS") || !strings.Contains(err.Error(), s.addr) {
			t.Errorf("error %q (%T), want a TLS certificate verification error naming the endpoint", err, errors.Unwrap(err))
		}
		if elapsed > time.Second {
			t.Errorf("refusal took %v with RetryFor 10 s, want it at once: an untrusted certificate is not retried", elapsed)
		}
	})
}

// ---------------------------------------------------------------------------
// Reconnection

// TestStatusWaitsForARestartingAgent: Status issued while the agent is down
// (its old connection cut, nothing listening) is retried with backoff and
// succeeds once the agent serves again on the same port.
func TestStatusWaitsForARestartingAgent(t *testing.T) {
	t.Parallel()
	s := serveAgent(t, agent.Config{}, nil)
	c := newClient(t, s.addr, client.Config{RetryFor: 5 * time.Second})
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	const down = 500 * time.Millisecond
	start := time.Now()
	up := s.restart(down)
	defer func() { <-up }()
	st, err := c.Status(context.Background())
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("Status across a restart of the agent (down %v, RetryFor 5 s): %v", down, err)
	}
	if st.State != wire.StateUninitialized {
		t.Errorf("Status = %+v", st)
	}
	if elapsed < down-100*time.Millisecond || elapsed > 4*time.Second {
		t.Errorf("Status took %v, want it to wait for the agent (down %v) and no longer than needed", elapsed, down)
	}
	if n := s.acceptedConns(); n != 2 {
		t.Errorf("agent accepted %d connections, want 2 (the first, then one after the restart)", n)
	}
}

// TestCallOnAKnownBrokenConnectionIsRedialed: a call that changes something
// is sent on a new connection when the old one is already known broken
// (the agent restarted between two calls): it cannot have been sent on the
// broken one, so there is nothing uncertain to report.
func TestCallOnAKnownBrokenConnectionIsRedialed(t *testing.T) {
	t.Parallel()
	s := serveAgent(t, agent.Config{}, nil)
	c := newClient(t, s.addr, client.Config{RetryFor: 5 * time.Second})
	ctx := context.Background()
	if _, err := c.Status(ctx); err != nil {
		t.Fatal(err)
	}
	<-s.restart(500 * time.Millisecond)
	time.Sleep(100 * time.Millisecond) // the client has long seen its connection end

	if err := c.Terminate(ctx); err != nil {
		t.Fatalf("Terminate after the agent restarted: %v, want it sent on a new connection", err)
	}
	// DropPort: answered by the agent (refused, there is no proxy yet), so
	// it too went on a new connection: that is all this checks.
	<-s.restart(200 * time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	err := c.DropPort(ctx, 2380)
	var se rpc.ServerError
	if !errors.As(err, &se) {
		t.Fatalf("DropPort after the agent restarted: %v, want the agent's own answer", err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.State != wire.StateTerminated {
		t.Fatalf("Status = %+v, %v; want state %s (Terminate took effect)", st, err, wire.StateTerminated)
	}
	if n := s.acceptedConns(); n != 3 {
		t.Errorf("agent accepted %d connections, want 3 (one per serving)", n)
	}
}

// TestConnectionLostMidCallIsNotResent: the connection dies after the
// agent read the request; the call may have acted, so it is not sent again
// and the error says so. The next call works on a new connection.
func TestConnectionLostMidCallIsNotResent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		method string
		call   func(client.Agent) error
	}{
		{wire.MethodStart, func(c client.Agent) error {
			_, err := c.Start(context.Background(), []string{"--name", "s1"})
			return err
		}},
		{wire.MethodDropPort, func(c client.Agent) error { return c.DropPort(context.Background(), 2380) }},
		{wire.MethodTerminate, func(c client.Agent) error { return c.Terminate(context.Background()) }},
	} {
		t.Run(tc.method, func(t *testing.T) {
			t.Parallel()
			s := newStub(t)
			c := newClient(t, s.addr, client.Config{RetryFor: 10 * time.Second})
			if _, err := c.Status(context.Background()); err != nil { // connected
				t.Fatal(err)
			}
			s.setBehaviour(cutOnce(tc.method))
			start := time.Now()
			err := tc.call(c)
			elapsed := time.Since(start)
			if err == nil {
				t.Fatal("no error, though the connection died before the answer")
			}
			for _, want := range []string{s.addr, tc.method, "may or may not have taken effect"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if elapsed > time.Second {
				t.Errorf("took %v, want the failure reported at once", elapsed)
			}
			calls, _ := s.record()
			if n := countMethod(calls, tc.method); n != 1 {
				t.Errorf("stub received %s %d times, want exactly once (never resent)", tc.method, n)
			}
			if _, err := c.Status(context.Background()); err != nil {
				t.Fatalf("Status after the lost connection: %v", err)
			}
			if _, conns := s.record(); conns != 2 {
				t.Errorf("%d connections, want 2 (a new one after the loss)", conns)
			}
		})
	}
}

// TestStatusIsResentAfterALostConnection: Status changes nothing, so a
// Status whose connection died mid-call is sent again on a new one.
func TestStatusIsResentAfterALostConnection(t *testing.T) {
	t.Parallel()
	s := newStub(t)
	s.setBehaviour(cutOnce(wire.MethodStatus))
	c := newClient(t, s.addr, client.Config{RetryFor: 5 * time.Second})
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatalf("Status with the first connection cut mid-call: %v", err)
	}
	if !reflect.DeepEqual(st, stubStatus) {
		t.Errorf("Status = %+v, want %+v", st, stubStatus)
	}
	calls, conns := s.record()
	if n := countMethod(calls, wire.MethodStatus); n != 2 || conns != 2 {
		t.Errorf("stub saw Status %d times on %d connections, want 2 on 2", n, conns)
	}
}

func countMethod(calls []stubCall, method string) int {
	n := 0
	for _, c := range calls {
		if c.Method == method {
			n++
		}
	}
	return n
}

// ---------------------------------------------------------------------------
// Unreachable agents and contexts

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestUnreachableAgentFailsAfterRetryFor(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		call func(client.Agent) error
	}{
		{"Status", func(c client.Agent) error { _, err := c.Status(context.Background()); return err }},
		{"DropPort", func(c client.Agent) error { return c.DropPort(context.Background(), 2380) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// "localhost:port": the dial error names the resolved address,
			// so only the client's own wrapping can name the endpoint.
			_, port, _ := net.SplitHostPort(freeAddr(t))
			addr := net.JoinHostPort("localhost", port)
			c := newClient(t, addr, client.Config{RetryFor: time.Second})
			elapsed, err := callWithin(t, 5*time.Second, func() error { return tc.call(c) })
			if err == nil {
				t.Fatal("a call to an address nothing listens on succeeded")
			}
			if elapsed < 900*time.Millisecond || elapsed > 3*time.Second {
				t.Errorf("failed after %v, want about RetryFor (1 s): 0.9 s to 3 s", elapsed)
			}
			for _, want := range []string{addr, "unreachable"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

// TestContextEndsTheRetries: a call to an agent that is down returns when
// its context ends, not after RetryFor, and not at the end of the backoff
// sleep it is in (tries at 0, 0.1, 0.3, 0.7, 1.5 s, then a sleep to 3.1 s:
// the context ends in that sleep).
func TestContextEndsTheRetries(t *testing.T) {
	t.Parallel()
	c := newClient(t, freeAddr(t), client.Config{RetryFor: 30 * time.Second})
	const timeout = 1700 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	elapsed, err := callWithin(t, 10*time.Second, func() error { _, err := c.Status(ctx); return err })
	if elapsed > timeout+500*time.Millisecond {
		t.Errorf("returned after %v; the context ended after %v", elapsed, timeout)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v, want it to wrap context.DeadlineExceeded", err)
	}

	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	err = c.DropPort(cancelled, 2380)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("DropPort with a cancelled context: %v, want it to wrap context.Canceled", err)
	}
}

// TestContextCancelsAHungCall: an agent that never answers does not hold
// the caller past its context; the client then works again, on a new
// connection, once the agent answers.
func TestContextCancelsAHungCall(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		method string
		call   func(context.Context, client.Agent) error
	}{
		{wire.MethodStatus, func(ctx context.Context, c client.Agent) error { _, err := c.Status(ctx); return err }},
		{wire.MethodDropPort, func(ctx context.Context, c client.Agent) error { return c.DropPort(ctx, 2380) }},
	} {
		t.Run(tc.method, func(t *testing.T) {
			t.Parallel()
			s := newStub(t)
			release := make(chan struct{})
			s.setBehaviour(s.hang(release))
			c := newClient(t, s.addr, client.Config{RetryFor: 10 * time.Second})
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			elapsed, err := callWithin(t, 3*time.Second, func() error { return tc.call(ctx, c) })
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %v, want it to wrap context.DeadlineExceeded", err)
			}
			if err != nil && (!strings.Contains(err.Error(), s.addr) || !strings.Contains(err.Error(), tc.method)) {
				t.Errorf("error %q does not name the endpoint and method", err)
			}
			if elapsed < 150*time.Millisecond || elapsed > time.Second {
				t.Errorf("returned after %v, want about the context's 200 ms", elapsed)
			}
			if calls, _ := s.record(); len(calls) != 1 {
				t.Errorf("stub saw %d calls, want 1", len(calls))
			}

			s.setBehaviour(nil) // the agent answers again
			close(release)
			if _, err := c.Status(context.Background()); err != nil {
				t.Fatalf("Status once the agent answers again: %v", err)
			}
			if _, conns := s.record(); conns != 2 {
				t.Errorf("%d connections, want 2: the hung one is abandoned, a new one dialed", conns)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Close

func TestClose(t *testing.T) {
	t.Parallel()
	s := serveAgent(t, agent.Config{}, nil)

	t.Run("AfterUse", func(t *testing.T) {
		c, err := client.New(s.addr, client.Config{RetryFor: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Status(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		expectClosed(t, c)
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v, want nil", err)
		}
		expectClosed(t, c)
	})
	t.Run("NeverConnected", func(t *testing.T) {
		c, err := client.New(s.addr, client.Config{RetryFor: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		expectClosed(t, c)
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v, want nil", err)
		}
	})
	t.Run("EndsAPendingCall", func(t *testing.T) {
		st := newStub(t)
		st.setBehaviour(st.hang(nil))
		for i, call := range []func(client.Agent) error{
			func(c client.Agent) error { _, err := c.Status(context.Background()); return err },
			func(c client.Agent) error { return c.Kill(context.Background()) },
		} {
			c := newClient(t, st.addr, client.Config{RetryFor: 10 * time.Second})
			errc := make(chan error, 1)
			go func() { errc <- call(c) }()
			waitCalls(t, st, i+1)
			if err := c.Close(); err != nil {
				t.Errorf("Close during a call: %v", err)
			}
			select {
			case err := <-errc:
				if err == nil {
					t.Error("a call pending when the client closed succeeded")
				}
			case <-time.After(2 * time.Second):
				t.Fatal("a call pending when the client closed still runs 2 s later")
			}
		}
	})
}

func expectClosed(t *testing.T, c client.Agent) {
	t.Helper()
	start := time.Now()
	_, err := c.Status(context.Background())
	if elapsed := time.Since(start); elapsed > 200*time.Millisecond {
		t.Errorf("a call on a closed client took %v, want it refused at once", elapsed)
	}
	if err == nil || !strings.Contains(err.Error(), "closed") || !strings.Contains(err.Error(), c.Endpoint()) {
		t.Errorf("call on a closed client: %v, want an error saying the client is closed, naming the endpoint", err)
	}
	if _, err := c.Start(context.Background(), nil); err == nil {
		t.Error("Start on a closed client succeeded")
	}
}

// callWithin runs call and returns how long it took and its error. It
// fails the test at once if call has not returned after limit; the call is
// then left to end when the test's client and servers close.
func callWithin(t *testing.T, limit time.Duration, call func() error) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- call() }()
	select {
	case err := <-errc:
		return time.Since(start), err
	case <-time.After(limit):
		t.Fatalf("call still running after %v", limit)
		return 0, nil
	}
}

// waitCalls waits until the stub has received n calls.
func waitCalls(t *testing.T, s *stub, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if calls, _ := s.record(); len(calls) >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("stub did not receive %d calls in 5 s", n)
}

// TestCancelledCallLeavesOthersUnharmed: two calls in flight at once, one
// cancelled; the other is answered as if nothing happened. (Calls used to
// share one connection, which the cancellation closed under the other,
// failing it with "may or may not have taken effect".)
func TestCancelledCallLeavesOthersUnharmed(t *testing.T) {
	t.Parallel()
	s := newStub(t)
	c := newClient(t, s.addr, client.Config{RetryFor: 5 * time.Second})
	if _, err := c.Status(context.Background()); err != nil { // a connection to share
		t.Fatal(err)
	}
	answerKill := make(chan struct{})
	s.setBehaviour(func(method string, _ net.Conn) error {
		switch method {
		case wire.MethodStop: // hangs until the stub closes
			<-s.stopping
			return errors.New("released")
		case wire.MethodKill: // answered once the Stop was cancelled
			select {
			case <-answerKill:
			case <-s.stopping:
			}
		}
		return nil
	})
	killErr := make(chan error, 1)
	go func() { killErr <- c.Kill(context.Background()) }()
	stopCtx, cancelStop := context.WithCancel(context.Background())
	defer cancelStop()
	stopErr := make(chan error, 1)
	go func() { stopErr <- c.Stop(stopCtx) }()
	waitCalls(t, s, 3) // Status, and both in flight

	cancelStop()
	select {
	case err := <-stopErr:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled Stop: %v, want it to wrap context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("cancelled Stop still running 2 s later")
	}
	close(answerKill)
	select {
	case err := <-killErr:
		if err != nil {
			t.Fatalf("Kill in flight while another call was cancelled: %v, want it answered", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Kill not answered 5 s after another call was cancelled")
	}
	if calls, _ := s.record(); countMethod(calls, wire.MethodKill) != 1 {
		t.Errorf("stub received Kill %d times, want once", countMethod(calls, wire.MethodKill))
	}
	// Later calls reuse a connection that is still sound.
	_, before := s.record()
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, after := s.record(); after != before {
		t.Errorf("Status after the calls opened a connection (%d → %d), want an idle one reused", before, after)
	}
}
