package netfault

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/etcd-functional/functional/agent/wire"
)

func newTestProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := NewProxy("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func proxyPort(p *Proxy) int { return p.Addr().(*net.TCPAddr).Port }

// TestProxyForwardsBothWaysIntact sends a large random payload each way at
// once, with half-closes, and checks every byte arrives in order, without
// latency, with jittered latency (where reordering would show), and with
// the latency changing in the middle of the stream.
func TestProxyForwardsBothWaysIntact(t *testing.T) {
	for _, tc := range []struct {
		name            string
		latency, jitter time.Duration
		churn           bool
	}{
		{name: "no latency"},
		{name: "jittered latency", latency: 20 * time.Millisecond, jitter: 20 * time.Millisecond},
		{name: "latency changing mid-stream", churn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Several times the socket buffers, so that the proxy's
			// queues fill and backpressure takes part; bigger only
			// slows the race detector down.
			const size = 4 << 20
			up, down := randomBytes(t, size), randomBytes(t, size)

			ln := listenLocal(t)
			serverGot := make(chan []byte, 1)
			serverErr := make(chan error, 2)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					serverErr <- err
					serverGot <- nil
					return
				}
				defer c.Close()
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := c.Write(down)
					if err == nil {
						err = c.(*net.TCPConn).CloseWrite()
					}
					serverErr <- err
				}()
				got, err := io.ReadAll(c)
				serverErr <- err
				serverGot <- got
				wg.Wait()
			}()

			p := newTestProxy(t, ln.Addr().String())
			if err := p.SetLatency(tc.latency, tc.jitter); err != nil {
				t.Fatal(err)
			}
			stopChurn := make(chan struct{})
			churnDone := make(chan struct{})
			go func() {
				defer close(churnDone)
				for i := 0; tc.churn; i++ {
					select {
					case <-stopChurn:
						return
					case <-time.After(5 * time.Millisecond):
					}
					if i%2 == 0 {
						p.SetLatency(5*time.Millisecond, 5*time.Millisecond)
					} else {
						p.RemoveLatency()
					}
					p.Latency()
				}
			}()

			c := dial(t, p.Addr().String())
			c.SetDeadline(time.Now().Add(8 * time.Second))
			writeErr := make(chan error, 1)
			go func() {
				_, err := c.Write(up)
				if err == nil {
					err = c.(*net.TCPConn).CloseWrite()
				}
				writeErr <- err
			}()
			got, err := io.ReadAll(c)
			close(stopChurn)
			<-churnDone
			if err != nil {
				t.Fatalf("client read: %v", err)
			}
			if err := <-writeErr; err != nil {
				t.Fatalf("client write: %v", err)
			}
			if !bytes.Equal(got, down) {
				t.Errorf("server→client: got %d bytes, want %d, equal=false", len(got), len(down))
			}
			if g := <-serverGot; !bytes.Equal(g, up) {
				t.Errorf("client→server: got %d bytes, want %d, equal=false", len(g), len(up))
			}
			for range 2 {
				if err := <-serverErr; err != nil {
					t.Errorf("server: %v", err)
				}
			}
		})
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProxyLatencyMeasured measures the latency on real traffic: a round
// trip through the proxy crosses it twice, so it must take about twice the
// latency, and with jitter every sample must stay within twice
// latency±jitter.
func TestProxyLatencyMeasured(t *testing.T) {
	const (
		tolerance = 15 * time.Millisecond  // timer granularity, below the bound
		slack     = 250 * time.Millisecond // scheduling on a loaded CI machine, above it
	)
	echo := newEchoServer(t, listenLocal(t))
	p := newTestProxy(t, echo.addr())
	c := dial(t, p.Addr().String())
	msg := []byte("ping")

	if rtt, err := roundTrip(c, msg, 2*time.Second); err != nil || rtt > 100*time.Millisecond {
		t.Fatalf("round trip without latency: %v, %v; want under 100ms", rtt, err)
	}

	check := func(latency, jitter time.Duration, samples int) []time.Duration {
		t.Helper()
		if err := p.SetLatency(latency, jitter); err != nil {
			t.Fatal(err)
		}
		if l, j := p.Latency(); l != latency || j != jitter {
			t.Fatalf("Latency() = %v, %v; want %v, %v", l, j, latency, jitter)
		}
		lo, hi := 2*(latency-jitter)-tolerance, 2*(latency+jitter)+slack
		var rtts []time.Duration
		for range samples {
			rtt, err := roundTrip(c, msg, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if rtt < lo || rtt > hi {
				t.Errorf("latency %v±%v: round trip %v, want within [%v, %v]", latency, jitter, rtt, lo, hi)
			}
			rtts = append(rtts, rtt)
		}
		t.Logf("latency %v±%v: round trips %v", latency, jitter, rtts)
		return rtts
	}

	check(200*time.Millisecond, 0, 3)
	rtts := check(200*time.Millisecond, 100*time.Millisecond, 6)
	lo, hi := rtts[0], rtts[0]
	for _, r := range rtts {
		lo, hi = min(lo, r), max(hi, r)
	}
	if hi-lo < 20*time.Millisecond {
		t.Errorf("jitter 100ms: round trips %v all within %v of each other; jitter seems not applied", rtts, hi-lo)
	}

	if err := p.RemoveLatency(); err != nil {
		t.Fatal(err)
	}
	if rtt, err := roundTrip(c, msg, 2*time.Second); err != nil || rtt > 100*time.Millisecond {
		t.Fatalf("round trip after RemoveLatency: %v, %v; want under 100ms", rtt, err)
	}
}

// TestProxyPreservesOrderUnderJitter sends many small numbered messages,
// spaced so that most travel as chunks of their own and draw different
// delays, and checks they come back in order.
func TestProxyPreservesOrderUnderJitter(t *testing.T) {
	echo := newEchoServer(t, listenLocal(t))
	p := newTestProxy(t, echo.addr())
	if err := p.SetLatency(20*time.Millisecond, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	c := dial(t, p.Addr().String())
	c.SetDeadline(time.Now().Add(8 * time.Second))

	const n = 300
	writeErr := make(chan error, 1)
	go func() {
		var b [8]byte
		for i := range uint64(n) {
			binary.BigEndian.PutUint64(b[:], i)
			if _, err := c.Write(b[:]); err != nil {
				writeErr <- err
				return
			}
			time.Sleep(300 * time.Microsecond)
		}
		writeErr <- nil
	}()
	got := make([]byte, 8*n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	for i := range uint64(n) {
		if v := binary.BigEndian.Uint64(got[8*i:]); v != i {
			t.Fatalf("message %d arrived as number %d: order not preserved", i, v)
		}
	}
}

// TestProxyDeliveryTimeBounds checks the scheduling rule directly, over many
// draws: each delivery time is within latency±jitter of the read and never
// before the previous one.
func TestProxyDeliveryTimeBounds(t *testing.T) {
	p := &Proxy{}
	latency, jitter := 50*time.Millisecond, 30*time.Millisecond
	p.delay.Store(&latencyConfig{latency: latency, jitter: jitter})
	check := func(prev time.Time) time.Time {
		t.Helper()
		before := time.Now()
		at := p.deliveryTime(prev)
		after := time.Now()
		if at.Before(prev) {
			t.Fatalf("delivery %v before the previous chunk's %v", at, prev)
		}
		if at.Before(before.Add(latency-jitter)) || at.After(after.Add(latency+jitter)) {
			t.Fatalf("delivery %v after the read, want within [%v, %v]", at.Sub(before), latency-jitter, latency+jitter)
		}
		return at
	}
	// A stream: every chunk after the one before.
	var prev time.Time
	for range 10000 {
		prev = check(prev)
	}
	// Independent chunks: the delays must spread over the jitter range.
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for range 10000 {
		d := time.Until(check(time.Time{}))
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo > latency-jitter/2 || hi < latency+jitter/2 {
		t.Errorf("delays over 10000 draws span [%v, %v]; want them to spread over %v±%v", lo, hi, latency, jitter)
	}
}

// TestProxyBlackhole checks that DropPort cuts existing connections, that
// new ones are accepted but get no answer and reach nothing, and that
// RecoverPort brings a new connection back.
func TestProxyBlackhole(t *testing.T) {
	echo := newEchoServer(t, listenLocal(t))
	p := newTestProxy(t, echo.addr())
	port := proxyPort(p)

	before := dial(t, p.Addr().String())
	if _, err := roundTrip(before, []byte("hello"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.DropPort(port); err != nil {
		t.Fatal(err)
	}
	if !p.Blackholed() {
		t.Fatal("Blackholed() = false after DropPort")
	}
	expectClosed(t, before, time.Second)

	during := dial(t, p.Addr().String()) // accepted: silence, not refusal
	expectSilence(t, during, []byte("anyone there?"), 500*time.Millisecond)
	if n := echo.accepted.Load(); n != 1 {
		t.Fatalf("target accepted %d connections, want 1: a blackholed connection was forwarded", n)
	}
	if err := p.DropPort(port); err != nil {
		t.Fatalf("second DropPort: %v", err)
	}

	if err := p.RecoverPort(port); err != nil {
		t.Fatal(err)
	}
	if p.Blackholed() {
		t.Fatal("Blackholed() = true after RecoverPort")
	}
	expectClosed(t, during, time.Second)
	after := dial(t, p.Addr().String())
	if _, err := roundTrip(after, []byte("back"), 2*time.Second); err != nil {
		t.Fatalf("after RecoverPort: %v", err)
	}
	if err := p.RecoverPort(port); err == nil || !strings.Contains(err.Error(), strconv.Itoa(port)) {
		t.Fatalf("RecoverPort of a port not dropped: %v, want an error naming port %d", err, port)
	}
}

func TestProxyDropOtherPort(t *testing.T) {
	echo := newEchoServer(t, listenLocal(t))
	p := newTestProxy(t, echo.addr())
	port := proxyPort(p)
	other := port + 1
	if other > wire.MaxPort {
		other = port - 1
	}
	for name, f := range map[string]func(int) error{"DropPort": p.DropPort, "RecoverPort": p.RecoverPort} {
		err := f(other)
		if err == nil || !strings.Contains(err.Error(), strconv.Itoa(port)) || !strings.Contains(err.Error(), strconv.Itoa(other)) {
			t.Errorf("%s(%d) on a proxy listening on %d: %v; want an error naming both", name, other, port, err)
		}
		for _, bad := range []int{0, -1, 65536} {
			if err := f(bad); err == nil || !strings.Contains(err.Error(), strconv.Itoa(bad)) {
				t.Errorf("%s(%d): %v; want an error naming the port", name, bad, err)
			}
		}
	}
	if p.Blackholed() {
		t.Fatal("a rejected DropPort blackholed the proxy")
	}
	if _, err := roundTrip(dial(t, p.Addr().String()), []byte("x"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestProxyReset(t *testing.T) {
	echo := newEchoServer(t, listenLocal(t))
	p := newTestProxy(t, echo.addr())
	if err := p.DropPort(proxyPort(p)); err != nil {
		t.Fatal(err)
	}
	if err := p.SetLatency(time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Reset(); err != nil {
		t.Fatal(err)
	}
	if l, j := p.Latency(); p.Blackholed() || l != 0 || j != 0 {
		t.Fatalf("after Reset: blackholed=%v latency=%v jitter=%v", p.Blackholed(), l, j)
	}
	if rtt, err := roundTrip(dial(t, p.Addr().String()), []byte("x"), 2*time.Second); err != nil || rtt > 100*time.Millisecond {
		t.Fatalf("after Reset: %v, %v", rtt, err)
	}
	if err := p.Reset(); err != nil {
		t.Fatalf("second Reset: %v", err)
	}
	if p.Name() != wire.BackendProxy {
		t.Errorf("Name() = %q", p.Name())
	}
}

func TestProxyBadLatency(t *testing.T) {
	p := newTestProxy(t, "127.0.0.1:1")
	if err := p.SetLatency(10*time.Millisecond, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		latency, jitter time.Duration
		mention         string
	}{
		{-time.Millisecond, 0, "-1ms"},
		{wire.MaxLatency + time.Millisecond, 0, "1m0.001s"},
		{100 * time.Millisecond, -time.Millisecond, "-1ms"},
		{100 * time.Millisecond, 200 * time.Millisecond, "200ms"},
	} {
		err := p.SetLatency(tc.latency, tc.jitter)
		if err == nil || !strings.Contains(err.Error(), tc.mention) || !strings.Contains(err.Error(), "range") {
			t.Errorf("SetLatency(%v, %v): %v; want an error naming %s and the allowed range", tc.latency, tc.jitter, err, tc.mention)
		}
	}
	if l, j := p.Latency(); l != 10*time.Millisecond || j != 5*time.Millisecond {
		t.Errorf("rejected values changed the latency to %v±%v", l, j)
	}
	for _, ok := range [][2]time.Duration{{0, 0}, {wire.MaxLatency, wire.MaxLatency}} {
		if err := p.SetLatency(ok[0], ok[1]); err != nil {
			t.Errorf("SetLatency(%v, %v): %v", ok[0], ok[1], err)
		}
	}
}

// TestProxyTargetDown checks that a proxy whose target is not listening
// closes each client connection and keeps serving, so that it works again
// once the member is back.
func TestProxyTargetDown(t *testing.T) {
	ln := listenLocal(t)
	target := ln.Addr().String()
	ln.Close()

	p := newTestProxy(t, target)
	for range 3 {
		expectClosed(t, dial(t, p.Addr().String()), 2*time.Second)
	}

	ln2, err := net.Listen("tcp", target)
	if err != nil {
		t.Skipf("cannot listen on %s again (taken meanwhile): %v", target, err)
	}
	t.Cleanup(func() { ln2.Close() })
	newEchoServer(t, ln2)
	if _, err := roundTrip(dial(t, p.Addr().String()), []byte("up again"), 2*time.Second); err != nil {
		t.Fatalf("after the target came up: %v", err)
	}
}

// TestProxyBackpressure checks that a target that does not read makes the
// proxy stop reading rather than buffer without bound: what the client
// manages to write is the socket buffers plus one bounded queue.
func TestProxyBackpressure(t *testing.T) {
	ln := listenLocal(t)
	stuck := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			stuck <- c
		}
		close(stuck)
	}()
	p := newTestProxy(t, ln.Addr().String())
	if err := p.SetLatency(10*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	c := dial(t, p.Addr().String())
	t.Cleanup(func() {
		if s := <-stuck; s != nil {
			s.Close()
		}
	})

	buf := make([]byte, 64<<10)
	total := 0
	c.SetWriteDeadline(time.Now().Add(1500 * time.Millisecond))
	for {
		n, err := c.Write(buf)
		total += n
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("write: %v", err)
			}
			break
		}
		if total > 256<<20 {
			break
		}
	}
	// Socket buffers on loopback autotune to a few MiB each, and there are
	// four of them on the way; the proxy adds at most proxyQueueBytes.
	if total > 64<<20 {
		t.Fatalf("client wrote %d MiB into a proxy whose target reads nothing; want the proxy to push back", total>>20)
	}
	t.Logf("client wrote %.1f MiB before the proxy pushed back", float64(total)/(1<<20))
}

// TestChunkQueueBound checks the queue's byte bound directly: a push that
// would exceed it waits for a pop, and close releases a waiting push.
func TestChunkQueueBound(t *testing.T) {
	q := newChunkQueue(10)
	if !q.push(chunk{data: make([]byte, 6)}) {
		t.Fatal("push into an empty queue failed")
	}
	pushed := make(chan bool)
	go func() { pushed <- q.push(chunk{data: make([]byte, 6)}) }()
	select {
	case <-pushed:
		t.Fatal("push beyond the bound did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	if c, ok := q.pop(); !ok || len(c.data) != 6 {
		t.Fatal("pop failed")
	}
	if !<-pushed {
		t.Fatal("push after pop failed")
	}
	// An oversized chunk still passes an empty queue, or it would wait
	// forever.
	q.pop()
	if !q.push(chunk{data: make([]byte, 100)}) {
		t.Fatal("oversized push into an empty queue failed")
	}
	go func() { pushed <- q.push(chunk{data: make([]byte, 1)}) }()
	time.Sleep(20 * time.Millisecond)
	q.close()
	if <-pushed {
		t.Fatal("push into a closed queue succeeded")
	}
	if _, ok := q.pop(); ok {
		t.Fatal("pop from a closed queue succeeded")
	}
}

// TestProxyCloseLeavesNothing closes a proxy with connections in every
// state (forwarding, data waiting out a long latency, blackholed) and checks
// that Close is prompt, leaves no goroutine, and frees the port.
func TestProxyCloseLeavesNothing(t *testing.T) {
	echo := newEchoServer(t, listenLocal(t))
	ignore := goleak.IgnoreCurrent()

	p, err := NewProxy("127.0.0.1:0", echo.addr())
	if err != nil {
		t.Fatal(err)
	}
	idle := dial(t, p.Addr().String())
	if _, err := roundTrip(idle, []byte("x"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.SetLatency(10*time.Second, 0); err != nil {
		t.Fatal(err)
	}
	queued := dial(t, p.Addr().String())
	if _, err := queued.Write([]byte("waiting out ten seconds")); err != nil {
		t.Fatal(err)
	}

	p2, err := NewProxy("127.0.0.1:0", echo.addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.DropPort(proxyPort(p2)); err != nil {
		t.Fatal(err)
	}
	hole := dial(t, p2.Addr().String())
	hole.Write([]byte("into the void"))
	time.Sleep(100 * time.Millisecond) // let the proxies accept and settle

	start := time.Now()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v with data queued; want it prompt", d)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, c := range []net.Conn{idle, queued, hole} {
		expectClosed(t, c, time.Second)
	}
	if c, err := net.DialTimeout("tcp", p.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("proxy still accepts after Close")
	}
	if err := p.DropPort(proxyPort(p)); err == nil {
		t.Error("DropPort after Close succeeded")
	}
	goleak.VerifyNone(t, ignore)
}
