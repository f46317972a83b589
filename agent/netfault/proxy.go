package netfault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
)

const (
	// proxyReadSize is the largest chunk read from a connection at once.
	proxyReadSize = 32 << 10
	// proxyQueueBytes bounds the data held per direction of a connection
	// while it waits out the latency. Without a bound a fast sender and a
	// long latency would grow memory without limit; with it the reader
	// stops and TCP flow control pushes back on the sender, as a slow link
	// would. It caps throughput at proxyQueueBytes/latency per direction
	// (4 MiB at 1 s is 4 MiB/s), plenty for etcd's peer traffic.
	proxyQueueBytes = 4 << 20
	// proxyDialTimeout bounds the connection to the target, so that a
	// target that swallows SYNs does not pin a goroutine for the kernel's
	// two minutes.
	proxyDialTimeout = 5 * time.Second
)

// Proxy is a TCP proxy in front of an etcd member's peer port: the member
// listens on another port and advertises the proxy's, so that every byte
// other members send it crosses the proxy, where it can be delayed or
// dropped without privileges. It implements Delayer and Isolator (for its
// own listen port only). Methods are safe for concurrent use.
type Proxy struct {
	ln         net.Listener
	target     string // for logs: the target, or how dial finds one
	listenPort int
	dial       dialFunc

	// ctx is cancelled by Close, to abort dials in flight.
	ctx    context.Context
	cancel context.CancelFunc

	delay atomic.Pointer[latencyConfig] // read on every chunk, so lock-free

	mu         sync.Mutex
	closed     bool
	blackholed bool
	sessions   map[*proxySession]struct{}
	holes      map[net.Conn]struct{} // connections accepted while blackholed

	wg sync.WaitGroup // every goroutine the proxy started
}

// dialFunc connects to where the proxy forwards client, an accepted
// connection: the fixed target of NewProxy, or the original destination of
// a redirected connection (NewOutboundProxy).
type dialFunc func(ctx context.Context, client net.Conn) (net.Conn, error)

type latencyConfig struct {
	latency, jitter time.Duration
}

var (
	_ Isolator = (*Proxy)(nil)
	_ Delayer  = (*Proxy)(nil)
)

// NewProxy listens on listenAddr at once (so that the caller knows the port
// is taken before starting the member) and forwards every connection to
// targetAddr, e.g. NewProxy(":2380", "10.0.0.2:2381"). A target that is
// down is not an error: each connection to the proxy then fails alone.
func NewProxy(listenAddr, targetAddr string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(targetAddr); err != nil {
		return nil, fmt.Errorf("netfault: proxy target %q: %w", targetAddr, err)
	}
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return nil, fmt.Errorf("netfault: proxy listen: %w", err)
	}
	d := net.Dialer{Timeout: proxyDialTimeout}
	return newProxy(ln, targetAddr, func(ctx context.Context, _ net.Conn) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", targetAddr)
	}), nil
}

// newProxy serves ln, forwarding each accepted connection to what dial
// connects to; target names that destination in logs.
func newProxy(ln net.Listener, target string, dial dialFunc) *Proxy {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		ln:         ln,
		target:     target,
		listenPort: ln.Addr().(*net.TCPAddr).Port,
		dial:       dial,
		ctx:        ctx,
		cancel:     cancel,
		sessions:   map[*proxySession]struct{}{},
		holes:      map[net.Conn]struct{}{},
	}
	p.delay.Store(&latencyConfig{})
	p.wg.Add(1)
	go p.acceptLoop()
	plog.Infof("proxy: %s → %s", ln.Addr(), target)
	return p
}

// Name returns wire.BackendProxy.
func (p *Proxy) Name() string { return wire.BackendProxy }

// Addr returns the address the proxy listens on.
func (p *Proxy) Addr() net.Addr { return p.ln.Addr() }

// Close stops listening, closes every connection and waits for every
// goroutine of the proxy to end, so that nothing of it outlives the call.
// Data still waiting out a latency is discarded. Closing twice is harmless.
func (p *Proxy) Close() error {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	sessions, holes := p.takeConnsLocked()
	p.mu.Unlock()

	var err error
	if !already {
		p.cancel()
		err = p.ln.Close()
	}
	closeAll(sessions, holes)
	p.wg.Wait()
	return err
}

// SetLatency delays every chunk of data read from now on, in either
// direction, by latency plus a uniformly random offset in [-jitter,
// +jitter]. Chunks are never reordered: one that draws a shorter delay than
// its predecessor waits for it, as on a TCP stream. A round trip through the
// proxy therefore takes about twice latency.
func (p *Proxy) SetLatency(latency, jitter time.Duration) error {
	if latency < 0 || latency > wire.MaxLatency {
		return fmt.Errorf("netfault: latency %v out of range [0, %v]", latency, wire.MaxLatency)
	}
	if jitter < 0 || jitter > latency {
		return fmt.Errorf("netfault: jitter %v out of range [0, %v] (it may not exceed the latency)", jitter, latency)
	}
	p.delay.Store(&latencyConfig{latency: latency, jitter: jitter})
	plog.Infof("proxy %s: latency %v ± %v", p.ln.Addr(), latency, jitter)
	return nil
}

// RemoveLatency stops delaying data read from now on. Data already queued
// keeps its delay, so that the stream's order holds.
func (p *Proxy) RemoveLatency() error {
	p.delay.Store(&latencyConfig{})
	plog.Infof("proxy %s: latency removed", p.ln.Addr())
	return nil
}

// Latency returns the latency and jitter in force.
func (p *Proxy) Latency() (latency, jitter time.Duration) {
	d := p.delay.Load()
	return d.latency, d.jitter
}

// DropPort blackholes the proxy: every current connection is closed, and
// new connections are accepted but neither forwarded nor answered, their
// bytes read and thrown away, so that peers see a silent network rather
// than a refusal (which etcd would treat as a peer that is down, not
// partitioned). The proxy owns only its listen port; any other port is an
// error, because silently ignoring it would fake an isolation.
func (p *Proxy) DropPort(port int) error {
	if err := p.checkOwnPort(port); err != nil {
		return err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return net.ErrClosed
	}
	p.blackholed = true
	sessions := p.takeSessionsLocked()
	p.mu.Unlock()
	closeAll(sessions, nil)
	plog.Infof("proxy %s: blackholed (%d connections cut)", p.ln.Addr(), len(sessions))
	return nil
}

// RecoverPort ends the blackhole DropPort started. Connections accepted
// during the blackhole are closed rather than forwarded: their first bytes
// are gone, so the target would read a stream cut in the middle.
func (p *Proxy) RecoverPort(port int) error {
	if err := p.checkOwnPort(port); err != nil {
		return err
	}
	p.mu.Lock()
	if !p.blackholed {
		p.mu.Unlock()
		return fmt.Errorf("netfault: recover port %d: port %d is not dropped", port, port)
	}
	p.blackholed = false
	holes := p.takeHolesLocked()
	p.mu.Unlock()
	closeAll(nil, holes)
	plog.Infof("proxy %s: blackhole removed", p.ln.Addr())
	return nil
}

// Reset removes the blackhole and the latency. The proxy keeps no state
// outside this process, so unlike IPTables.Reset there is nothing left over
// from an earlier agent to clear.
func (p *Proxy) Reset() error {
	p.mu.Lock()
	p.blackholed = false
	holes := p.takeHolesLocked()
	p.mu.Unlock()
	closeAll(nil, holes)
	return p.RemoveLatency()
}

// Blackholed reports whether DropPort is in force.
func (p *Proxy) Blackholed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blackholed
}

func (p *Proxy) checkOwnPort(port int) error {
	if err := checkPort(port); err != nil {
		return err
	}
	if port != p.listenPort {
		return fmt.Errorf("netfault: proxy listening on port %d cannot drop port %d: it only owns its own listen port", p.listenPort, port)
	}
	return nil
}

// takeConnsLocked empties both connection sets and returns what they held,
// so that the caller can close them after releasing p.mu (closing a session
// takes p.mu).
func (p *Proxy) takeConnsLocked() ([]*proxySession, []net.Conn) {
	return p.takeSessionsLocked(), p.takeHolesLocked()
}

func (p *Proxy) takeSessionsLocked() []*proxySession {
	var sessions []*proxySession
	for s := range p.sessions {
		sessions = append(sessions, s)
	}
	clear(p.sessions)
	return sessions
}

func (p *Proxy) takeHolesLocked() []net.Conn {
	var holes []net.Conn
	for c := range p.holes {
		holes = append(holes, c)
	}
	clear(p.holes)
	return holes
}

func closeAll(sessions []*proxySession, holes []net.Conn) {
	for _, s := range sessions {
		s.close()
	}
	for _, c := range holes {
		c.Close()
	}
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	var backoff time.Duration
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does, rather than give up serving for good.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			plog.Warningf("proxy %s: accept: %v; retrying in %v", p.ln.Addr(), err, backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-p.ctx.Done():
				return
			}
		}
		backoff = 0

		p.mu.Lock()
		switch {
		case p.closed:
			c.Close()
		case p.blackholed:
			p.holes[c] = struct{}{}
			p.wg.Add(1)
			go p.swallow(c)
		default:
			p.wg.Add(1)
			go p.serve(c)
		}
		p.mu.Unlock()
	}
}

// swallow reads and discards what a connection accepted during a blackhole
// sends, so that the sender's writes succeed (its window stays open) and
// nothing ever comes back.
func (p *Proxy) swallow(c net.Conn) {
	defer p.wg.Done()
	io.Copy(io.Discard, c)
	c.Close()
	p.mu.Lock()
	delete(p.holes, c)
	p.mu.Unlock()
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := p.dial(p.ctx, client)
	if err != nil {
		// The member is down or restarting: the normal state of a member
		// under fault injection, hence debug and not an error.
		plog.Debugf("proxy %s: connect to %s: %v; closing client %s", p.ln.Addr(), p.target, err, client.RemoteAddr())
		client.Close()
		return
	}
	s := &proxySession{
		p:      p,
		client: client,
		server: server,
		done:   make(chan struct{}),
	}
	s.up = newChunkQueue(proxyQueueBytes)
	s.down = newChunkQueue(proxyQueueBytes)

	p.mu.Lock()
	if p.closed || p.blackholed {
		// Close or DropPort came while dialling and did not see us.
		p.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	p.sessions[s] = struct{}{}
	p.wg.Add(4)
	p.mu.Unlock()

	go s.read(client, s.up)
	go s.write(s.up, server)
	go s.read(server, s.down)
	go s.write(s.down, client)
}

// proxySession is one proxied connection: client→server is "up",
// server→client "down", each a reader goroutine filling a queue and a
// writer goroutine draining it once each chunk's delivery time comes. The
// split is what lets latency delay data without slowing the reading of the
// data behind it.
type proxySession struct {
	p              *Proxy
	client, server net.Conn
	up, down       *chunkQueue

	finished  atomic.Int32 // directions that delivered their EOF
	closeOnce sync.Once
	done      chan struct{}
}

// close tears the session down; it is idempotent and unblocks every
// goroutine of the session.
func (s *proxySession) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.client.Close()
		s.server.Close()
		s.up.close()
		s.down.close()
		s.p.mu.Lock()
		delete(s.p.sessions, s)
		s.p.mu.Unlock()
	})
}

func (s *proxySession) read(src net.Conn, q *chunkQueue) {
	defer s.p.wg.Done()
	buf := make([]byte, proxyReadSize)
	var last time.Time // delivery time of the previous chunk
	for {
		n, err := src.Read(buf)
		if n > 0 {
			last = s.p.deliveryTime(last)
			if !q.push(chunk{data: append([]byte(nil), buf[:n]...), at: last}) {
				return
			}
		}
		if err == io.EOF {
			// Forward the half-close after the data before it.
			q.push(chunk{eof: true, at: s.p.deliveryTime(last)})
			return
		}
		if err != nil {
			s.close()
			return
		}
	}
}

func (s *proxySession) write(q *chunkQueue, dst net.Conn) {
	defer s.p.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for {
		c, ok := q.pop()
		if !ok {
			return
		}
		if wait := time.Until(c.at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-s.done:
				return
			}
		}
		if c.eof {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			if s.finished.Add(1) == 2 {
				s.close()
			}
			return
		}
		if _, err := dst.Write(c.data); err != nil {
			s.close()
			return
		}
	}
}

// deliveryTime is when a chunk read now is due: now plus the latency in
// force, jittered, but never before the previous chunk's time, so that the
// stream's order holds. Since jitter ≤ latency the result stays within
// [now+latency-jitter, now+latency+jitter].
func (p *Proxy) deliveryTime(prev time.Time) time.Time {
	d := p.delay.Load()
	delay := d.latency
	if d.jitter > 0 {
		delay += time.Duration(rand.Int64N(int64(2*d.jitter)+1)) - d.jitter
	}
	at := time.Now().Add(delay)
	if at.Before(prev) {
		at = prev
	}
	return at
}

// chunk is data read from one side, due on the other at time at.
type chunk struct {
	data []byte
	at   time.Time
	eof  bool // the source half-closed; no data
}

// chunkQueue is a FIFO of chunks bounded in bytes. push blocks while it is
// full, which is what turns a slow (delayed) writer into TCP backpressure on
// the sender instead of unbounded memory.
type chunkQueue struct {
	mu       sync.Mutex
	notEmpty sync.Cond
	notFull  sync.Cond
	items    []chunk
	bytes    int
	max      int
	closed   bool
}

func newChunkQueue(maxBytes int) *chunkQueue {
	q := &chunkQueue{max: maxBytes}
	q.notEmpty.L = &q.mu
	q.notFull.L = &q.mu
	return q
}

// push appends c, waiting for room; it reports false if the queue was
// closed. A chunk larger than the bound is let into an empty queue, so that
// it cannot wait forever.
func (q *chunkQueue) push(c chunk) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.closed && q.bytes > 0 && q.bytes+len(c.data) > q.max {
		q.notFull.Wait()
	}
	if q.closed {
		return false
	}
	q.items = append(q.items, c)
	q.bytes += len(c.data)
	q.notEmpty.Signal()
	return true
}

// pop removes the oldest chunk, waiting for one; it reports false if the
// queue was closed.
func (q *chunkQueue) pop() (chunk, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.closed && len(q.items) == 0 {
		q.notEmpty.Wait()
	}
	if q.closed {
		return chunk{}, false
	}
	c := q.items[0]
	q.items[0] = chunk{}
	q.items = q.items[1:]
	q.bytes -= len(c.data)
	q.notFull.Signal()
	return c, true
}

// close wakes and fails every push and pop, now and later.
func (q *chunkQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.items = nil
	q.notEmpty.Broadcast()
	q.notFull.Broadcast()
	q.mu.Unlock()
}
