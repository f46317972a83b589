package agent

import (
	"bufio"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/rpc"
	"strings"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
)

// service is what net/rpc registers as wire.ServiceName: one method per RPC
// of the contract, each a thin adapter onto Agent.
type service struct{ a *Agent }

func (s *service) RPCStart(args []string, pid *int) (err error) {
	defer s.log(wire.MethodStart, &err)
	*pid, err = s.a.Start(args)
	return err
}

func (s *service) RPCStop(_ wire.Empty, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodStop, &err)
	return s.a.Stop()
}

func (s *service) RPCRestart(_ wire.Empty, pid *int) (err error) {
	defer s.log(wire.MethodRestart, &err)
	*pid, err = s.a.Restart()
	return err
}

func (s *service) RPCKill(_ wire.Empty, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodKill, &err)
	return s.a.Kill()
}

func (s *service) RPCPause(_ wire.Empty, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodPause, &err)
	return s.a.Pause()
}

func (s *service) RPCResume(_ wire.Empty, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodResume, &err)
	return s.a.Resume()
}

func (s *service) RPCCleanup(_ wire.Empty, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodCleanup, &err)
	_, err = s.a.Archive("")
	return err
}

func (s *service) RPCArchive(label string, reply *wire.Archive) (err error) {
	defer s.log(wire.MethodArchive, &err)
	reply.Dir, err = s.a.Archive(label)
	return err
}

func (s *service) RPCTerminate(_ wire.Empty, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodTerminate, &err)
	return s.a.Terminate()
}

func (s *service) RPCDropPort(port int, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodDropPort, &err)
	return s.a.DropPort(port)
}

func (s *service) RPCRecoverPort(port int, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodRecoverPort, &err)
	return s.a.RecoverPort(port)
}

// RPCSetLatency takes []int{ms, rv}: ms ± rv milliseconds.
func (s *service) RPCSetLatency(msrv []int, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodSetLatency, &err)
	if len(msrv) != 2 {
		return fmt.Errorf("latency: want []int{ms, rv} (2 values), got %d values", len(msrv))
	}
	const maxMs = int(wire.MaxLatency / time.Millisecond)
	ms, rv := msrv[0], msrv[1]
	if ms < 0 || ms > maxMs {
		return fmt.Errorf("latency %d ms: want 0..%d", ms, maxMs)
	}
	if rv < 0 || rv > ms {
		return fmt.Errorf("latency jitter %d ms: want 0..%d (at most the latency)", rv, ms)
	}
	return s.a.SetLatency(time.Duration(ms)*time.Millisecond, time.Duration(rv)*time.Millisecond)
}

func (s *service) RPCRemoveLatency(_ wire.Empty, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodRemoveLatency, &err)
	return s.a.RemoveLatency()
}

func (s *service) RPCStatus(_ wire.Empty, st *wire.Status) error {
	*st = s.a.Status()
	return nil
}

// RPCKeepFaults renews the fault lease for the given duration and returns
// when it ends.
func (s *service) RPCKeepFaults(lease time.Duration, until *time.Time) (err error) {
	defer s.log(wire.MethodKeepFaults, &err)
	*until, err = s.a.KeepFaults(lease)
	return err
}

// log records every call's outcome: the agent is the place a failed fault
// is investigated from.
func (s *service) log(method string, err *error) {
	if *err != nil {
		plog.Warningf("%s: %v", method, *err)
		return
	}
	plog.Debugf("%s: ok", method)
}

// connected is net/rpc's answer to CONNECT; rpc.DialHTTP expects exactly it.
const connected = "200 Connected to Go RPC"

// Handler serves the RPC contract the way net/rpc's HandleHTTP does (HTTP
// CONNECT on rpc.DefaultRPCPath, then gob), so that a plain rpc.DialHTTP
// client works, and adds what the standard handler lacks: the bearer token
// check and a bound on the size of a request.
func (a *Agent) Handler() http.Handler {
	srv := rpc.NewServer()
	if err := srv.RegisterName(wire.ServiceName, &service{a}); err != nil {
		panic(err) // the method set is fixed at compile time
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != rpc.DefaultRPCPath {
			http.Error(w, "etcd-agent: net/rpc is served on "+rpc.DefaultRPCPath, http.StatusNotFound)
			return
		}
		if r.Method != http.MethodConnect {
			w.Header().Set("Allow", http.MethodConnect)
			http.Error(w, "etcd-agent: use CONNECT (net/rpc over HTTP)", http.StatusMethodNotAllowed)
			return
		}
		if !a.authorized(r) {
			plog.Warningf("refused a call from %s: missing or wrong bearer token", r.RemoteAddr)
			http.Error(w, "etcd-agent: missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			plog.Errorf("hijack %s: %v", r.RemoteAddr, err)
			return
		}
		conn.SetDeadline(time.Time{})
		if _, err := io.WriteString(conn, "HTTP/1.0 "+connected+"\n\n"); err != nil {
			conn.Close()
			return
		}
		srv.ServeCodec(newServerCodec(conn, buf.Reader, a.cfg.MaxRequestBytes))
	})
}

func (a *Agent) authorized(r *http.Request) bool {
	if a.cfg.Token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(a.cfg.Token)) == 1
}

// Serve serves the agent's RPCs on ln until ctx is done (TLS if tlsConfig
// is set), then shuts the server down. It does not Close the agent.
func (a *Agent) Serve(ctx context.Context, ln net.Listener, tlsConfig *tls.Config) error {
	hs := &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
	}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// Hijacked RPC connections are not tracked by Shutdown: closing the
	// listener and idle connections is all there is to do.
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := hs.Shutdown(sctx)
	<-errc
	return err
}

// serverCodec is net/rpc's gob server codec with a bound on the bytes one
// request may take: a caller cannot make the agent buffer an arbitrary
// payload. An oversized request is answered with an error and the
// connection is closed; the agent keeps serving others.
type serverCodec struct {
	conn   io.Closer
	in     *limitedReader
	dec    *gob.Decoder
	enc    *gob.Encoder
	encBuf *bufio.Writer
	closed bool
}

func newServerCodec(conn net.Conn, r io.Reader, limit int64) *serverCodec {
	in := &limitedReader{r: r, limit: limit}
	buf := bufio.NewWriter(conn)
	return &serverCodec{conn: conn, in: in, dec: gob.NewDecoder(in), enc: gob.NewEncoder(buf), encBuf: buf}
}

func (c *serverCodec) ReadRequestHeader(r *rpc.Request) error {
	c.in.reset()
	return c.dec.Decode(r)
}

func (c *serverCodec) ReadRequestBody(body any) error { return c.dec.Decode(body) }

func (c *serverCodec) WriteResponse(r *rpc.Response, body any) error {
	if err := c.enc.Encode(r); err != nil {
		if c.encBuf.Flush() == nil {
			c.Close()
		}
		return err
	}
	if err := c.enc.Encode(body); err != nil {
		if c.encBuf.Flush() == nil {
			c.Close()
		}
		return err
	}
	return c.encBuf.Flush()
}

func (c *serverCodec) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	return c.conn.Close()
}

// errRequestTooLarge is what an oversized request is answered with.
var errRequestTooLarge = errors.New("request too large")

// limitedReader fails once more than limit bytes were read since reset.
// No read goes past limit+1: one read may return a whole large request,
// which would then be decoded without the next read ever failing.
// Once tripped it stays tripped: the rest of the oversized request is still
// in the stream, and must not be decoded as the next request, so the
// connection ends after the error is answered.
type limitedReader struct {
	r       io.Reader
	n       int64
	limit   int64
	tripped bool
}

func (l *limitedReader) reset() { l.n = 0 }

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.tripped || l.n > l.limit {
		l.tripped = true
		return 0, fmt.Errorf("%w: over %d bytes", errRequestTooLarge, l.limit)
	}
	if room := l.limit + 1 - l.n; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	return n, err
}
