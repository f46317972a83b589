// Package agenttest serves real etcd-agents on loopback from inside a test
// process, for tests of the tester (package tester's integration tests and
// the etcd-tester command's tests). The agents run the project's bin/etcd
// (or $ETCD_BIN), each with a base dir of its own in t.TempDir().
//
// An agent's RPC endpoint can be taken away and given back during a test
// (Down, Up): Down closes the listener and every RPC connection open on
// it, as an agent that restarts or a network that drops would; Up serves
// the same agent on the same address again.
//
// Everything is undone in t.Cleanup: the agents stop serving and are
// closed (which heals their faults and stops etcd) before their dirs go.
package agenttest

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/internal/etcdtest"
	"github.com/etcd-functional/functional/internal/freeport"
)

// Set is n agents served by this process, one etcd member each.
type Set struct {
	// Endpoints are the agents' "127.0.0.1:port" addresses, in order.
	Endpoints []string
	// ClientPorts and PeerPorts are free ports for each agent's member;
	// PeerPorts[i]+1 is free too (the listen peer port behind the
	// agent's proxy).
	ClientPorts, PeerPorts []int
	// Agents are the agents themselves: a test may ask them directly,
	// without the network, e.g. for a Status while an endpoint is down.
	Agents []*agent.Agent
	// Clients are RPC clients of each agent, for the test's own calls.
	Clients  []client.Agent
	BaseDirs []string

	servers []*server
}

// Start serves n agents on loopback. It skips the test under -short and
// when no etcd binary is found.
func Start(t testing.TB, n int) *Set {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real etcd cluster (skipped under -short)")
	}
	bin, err := etcdtest.Binary()
	if err != nil {
		t.Skipf("no etcd binary: %v", err)
	}
	// The base dirs first: cleanups run last-in first-out, and the agents
	// must stop before their dirs go.
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	ta := &Set{}
	t.Cleanup(ta.close)
	ports := FreePorts(t, 3*n)
	for i := range n {
		a, err := agent.New(agent.Config{EtcdPath: bin, BaseDir: dirs[i], NetworkFaults: agent.FaultsProxy,
			SigtermWait: agent.DefaultSigtermWait, SigintWait: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ta.Agents = append(ta.Agents, a)
		ta.BaseDirs = append(ta.BaseDirs, dirs[i])
		s := &server{a: a, addr: "127.0.0.1:0"}
		ta.servers = append(ta.servers, s)
		if err := s.up(); err != nil {
			t.Fatal(err)
		}
		ta.Endpoints = append(ta.Endpoints, s.addr)
		c, err := client.New(s.addr, client.Config{})
		if err != nil {
			t.Fatal(err)
		}
		ta.Clients = append(ta.Clients, c)
		ta.ClientPorts = append(ta.ClientPorts, ports[3*i])
		ta.PeerPorts = append(ta.PeerPorts, ports[3*i+1])
	}
	return ta
}

// Down stops serving agent i: its listener is closed (a connect is
// refused) and so is every RPC connection open on it, in-flight calls
// included. The agent and its etcd run on.
func (ta *Set) Down(i int) { ta.servers[i].down() }

// Up serves agent i again on the address it had, retrying for a few
// seconds should the port be busy.
func (ta *Set) Up(i int) error {
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = ta.servers[i].up(); err == nil {
			return nil
		}
	}
	return err
}

func (ta *Set) close() {
	for _, c := range ta.Clients {
		c.Close()
	}
	for _, s := range ta.servers {
		s.down()
	}
	for _, a := range ta.Agents {
		a.Close()
	}
}

// server serves one agent on one address, and can stop and start again.
type server struct {
	a    *agent.Agent
	addr string

	mu     sync.Mutex
	ln     *trackingListener // nil while down
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *server) up() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("serve agent on %s: %w", s.addr, err)
	}
	s.addr = ln.Addr().String()
	s.ln = &trackingListener{Listener: ln, conns: map[net.Conn]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func(ln net.Listener) { defer close(done); s.a.Serve(ctx, ln, nil) }(s.ln)
	s.cancel, s.done = cancel, done
	return nil
}

func (s *server) down() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return
	}
	// Serve closes the listener; the hijacked RPC connections are ours
	// to close.
	s.cancel()
	<-s.done
	s.ln.closeConns()
	s.ln = nil
}

// trackingListener remembers the connections it accepted until they are
// closed, so that they can all be cut at once.
type trackingListener struct {
	net.Listener
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns[tc] = true
	return tc, nil
}

func (l *trackingListener) closeConns() {
	l.mu.Lock()
	l.closed = true
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// FreePorts returns n/3 triplets of consecutive free ports: a member's
// client port, peer port and listen peer port (peer + 1, behind the
// agent's proxy).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := freeport.Take(n/3, 3)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}
