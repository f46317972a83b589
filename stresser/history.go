package stresser

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"

	"github.com/etcd-functional/functional/history"
)

// historyPrefix holds the history stresser's keys; no other stresser
// writes under it, so the recorded operations are the only writes to them.
const historyPrefix = "/stresser/history/"

// historyLeaseTTL is the TTL of the history stresser's leases. A lease that
// expired in the middle of a case would delete its keys without a record,
// so it is far longer than a case; leases left over are revoked when the
// next interval starts.
const historyLeaseTTL = 3600

// HistoryConfig shapes the history stresser: a few clients, one request
// at a time each, over a few keys, so that a linearizability check of a
// case's history stays cheap.
type HistoryConfig struct {
	// Clients is the number of clients. A quarter of them (at least one)
	// balance over the whole cluster; the others are pinned to one
	// endpoint each, round-robin (with the default 4 clients and 3
	// members: one pinned to each member, one balanced).
	Clients int
	// Keys is the number of keys.
	Keys int
	// QPS is the history stresser's own rate, on top of Config.QPS. It
	// does not take its share of Config.QPS: the bulk load's rate stays
	// what was asked, and the history's does not shrink as the bulk
	// stressers add workers (sharing one limiter, 4 history clients among
	// 100 key clients got ~25 requests/s).
	QPS int
	// MaxOps bounds the operations held between two calls of
	// Composite.History; past it the clients send nothing more in the
	// interval (History.Dropped counts the requests not sent).
	MaxOps int
}

// DefaultHistoryConfig is 4 clients over 10 keys at up to 200
// requests/s, holding at most 30000 operations (150 s of load at the full
// rate). Checking grows faster than linearly with the history (porcupine
// copies a bitset of every operation per step): 6000 operations took
// 0.34 s, 30000 took 2.5 s on a loaded 2-core machine (BENCHMARK.md).
func DefaultHistoryConfig() HistoryConfig {
	return HistoryConfig{Clients: 4, Keys: 10, QPS: 200, MaxOps: 30000}
}

func (c HistoryConfig) validate() error {
	var errs []error
	if c.Clients <= 0 {
		errs = append(errs, fmt.Errorf("stresser: History.Clients: %d; must be > 0", c.Clients))
	}
	if c.Keys <= 0 || c.Keys > 1000 {
		errs = append(errs, fmt.Errorf("stresser: History.Keys: %d; must be 1 to 1000", c.Keys))
	}
	if c.QPS <= 0 {
		errs = append(errs, fmt.Errorf("stresser: History.QPS: %d; must be > 0", c.QPS))
	}
	if c.MaxOps <= 0 {
		errs = append(errs, fmt.Errorf("stresser: History.MaxOps: %d; must be > 0", c.MaxOps))
	}
	return errors.Join(errs...)
}

// historyStresser issues a mix of every request kind the history records
// (gets, gets at a past revision, ranges, puts, deletes, txns, lease
// grants, puts with a lease, revokes) and records each with its answer.
type historyStresser struct {
	cfg      Config
	lim      *rate.Limiter // History.QPS
	rec      *recorder
	hist     *history.Recorder
	keys     []string
	nonce    int64 // makes values unique across stressers on one cluster
	seq      atomic.Int64
	modified atomic.Int64
	full     atomic.Bool // logged that MaxOps was reached

	mu     sync.Mutex
	leases map[int64]bool // granted and not known to be revoked

	// carry holds the unknown-outcome writes at the end of the last
	// window taken: they may still take effect in the next one.
	carry []history.Op
	// cut is the end of the last window taken.
	cut time.Duration
}

// carryOver is how long after its failure a write of unknown outcome is
// still carried into the next window. A request cut off by Pause, or one
// proposed just before a fault, is applied (or dropped for good) within a
// request timeout and an election or two.
func (s *historyStresser) carryOver() time.Duration { return s.cfg.RequestTimeout + 5*time.Second }

func newHistoryStresser(cfg Config, rec *recorder) *historyStresser {
	s := &historyStresser{cfg: cfg, rec: rec,
		lim:    newLimiter(cfg.History.QPS),
		hist:   history.NewRecorder(cfg.History.MaxOps),
		nonce:  time.Now().UnixNano(),
		leases: map[int64]bool{}}
	for i := range cfg.History.Keys {
		s.keys = append(s.keys, fmt.Sprintf("%sk%03d", historyPrefix, i))
	}
	return s
}

func (s *historyStresser) name() string                        { return NameHistory }
func (s *historyStresser) modifiedKeys() int64                 { return s.modified.Load() }
func (s *historyStresser) check(context.Context, *conns) error { return nil }

// historyClient is one client of the history stresser: it has one
// request in flight at a time.
type historyClient struct {
	id     int
	member string
	cli    *clientv3.Client
	rng    *rand.Rand
	rev    int64            // the highest header revision it was told
	mods   map[string]int64 // the last mod revision it saw of each key (0: missing)
	leases []int64          // leases it granted and has not revoked
}

// run starts an interval: it revokes the leases left from earlier ones,
// reads the state of every key (the snapshot a checker starts from) while
// no other request is in flight, then starts the clients.
func (s *historyStresser) run(ctx context.Context, c *conns, interval uint64) {
	boot := &historyClient{id: s.cfg.History.Clients, member: history.Cluster, cli: c.all,
		rng: rand.New(rand.NewPCG(uint64(s.cfg.Seed), interval<<32|0xffff)), mods: map[string]int64{}}
	s.mu.Lock()
	var left []int64
	for id := range s.leases {
		left = append(left, id)
	}
	s.mu.Unlock()
	for _, id := range left {
		if _, err := s.do(ctx, boot, history.Request{Kind: history.LeaseRevoke, Lease: id}); ctx.Err() != nil {
			return
		} else if err == nil || errors.Is(err, errLeaseGone) {
			s.forget(id)
		}
	}
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		_, err := s.do(ctx, boot, history.Request{Kind: history.Get, Key: historyPrefix,
			End: clientv3.GetPrefixRangeEnd(historyPrefix), Snapshot: true})
		if err == nil {
			break
		}
		if !sleep(ctx, wait) {
			return
		}
	}

	var wg sync.WaitGroup
	n, eps := s.cfg.History.Clients, len(c.perEndpoint)
	balanced := max(1, n/4)
	for i := range n {
		hc := &historyClient{id: i, member: history.Cluster, cli: c.all,
			rng: rand.New(rand.NewPCG(uint64(s.cfg.Seed), interval<<32|uint64(i))), mods: map[string]int64{}}
		if i < n-balanced || n == 1 {
			hc.member, hc.cli = s.cfg.Endpoints[i%eps], c.perEndpoint[i%eps]
		}
		wg.Go(func() { s.client(ctx, hc) })
	}
	wg.Wait()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (s *historyStresser) forget(id int64) {
	s.mu.Lock()
	delete(s.leases, id)
	s.mu.Unlock()
}

// client issues requests one at a time until ctx is done or the recorder
// is full. After an error it backs off, so that an outage costs a few
// unknown-outcome writes (each of which the checker must place), not
// hundreds.
func (s *historyStresser) client(ctx context.Context, hc *historyClient) {
	backoff := time.Duration(0)
	for {
		if err := s.lim.Wait(ctx); err != nil {
			return
		}
		_, err := s.do(ctx, hc, s.next(hc))
		switch {
		case errors.Is(err, errRecorderFull):
			if !s.full.Swap(true) {
				plog.Warningf("history stresser: %d operations recorded, the most History.MaxOps allows; no more requests until the history is taken", s.cfg.History.MaxOps)
			}
			return
		case err != nil && ctx.Err() == nil:
			backoff = min(max(2*backoff, 50*time.Millisecond), time.Second)
			if !sleep(ctx, backoff) {
				return
			}
		default:
			backoff = 0
		}
	}
}

// next chooses hc's next request.
func (s *historyStresser) next(hc *historyClient) history.Request {
	key := s.keys[hc.rng.IntN(len(s.keys))]
	x := hc.rng.IntN(100)
	switch {
	case x < 25:
		return history.Request{Kind: history.Get, Key: key}
	case x < 33:
		return history.Request{Kind: history.Get, Key: historyPrefix, End: clientv3.GetPrefixRangeEnd(historyPrefix)}
	case x < 38 && hc.rev > 1:
		// A recent past revision: rarely compacted away yet.
		return history.Request{Kind: history.Get, Key: historyPrefix, End: clientv3.GetPrefixRangeEnd(historyPrefix),
			Revision: max(1, hc.rev-int64(hc.rng.IntN(20)))}
	case x < 63:
		return history.Request{Kind: history.Put, Key: key, Value: s.value(hc)}
	case x < 69:
		return history.Request{Kind: history.Delete, Key: key}
	case x < 71:
		// A range delete of two neighbouring keys.
		i := hc.rng.IntN(len(s.keys))
		end := historyPrefix + "l" // past every key
		if i+2 < len(s.keys) {
			end = s.keys[i+2]
		}
		return history.Request{Kind: history.Delete, Key: s.keys[i], End: end}
	case x < 86:
		// Compare-and-set on the mod revision this client last saw,
		// as an application doing optimistic concurrency would.
		return history.Request{Kind: history.Txn,
			Compares: []history.Compare{{Key: key, Target: history.TargetMod, Op: "=", Number: hc.mods[key]}},
			Then:     []history.Request{{Kind: history.Put, Key: key, Value: s.value(hc)}},
			Else:     []history.Request{{Kind: history.Get, Key: key}}}
	case x < 89:
		return history.Request{Kind: history.LeaseGrant, TTL: historyLeaseTTL}
	case x < 96 && len(hc.leases) > 0:
		return history.Request{Kind: history.Put, Key: key, Value: s.value(hc), Lease: hc.leases[hc.rng.IntN(len(hc.leases))]}
	case x < 100 && len(hc.leases) > 0:
		return history.Request{Kind: history.LeaseRevoke, Lease: hc.leases[hc.rng.IntN(len(hc.leases))]}
	}
	return history.Request{Kind: history.Get, Key: key}
}

// value returns a value no request of any history stresser wrote before.
func (s *historyStresser) value(hc *historyClient) string {
	return fmt.Sprintf("%x-%d-%d", s.nonce, hc.id, s.seq.Add(1))
}

var (
	errRecorderFull = errors.New("history recorder full")
	errLeaseGone    = errors.New("lease not found")
)

// do records req, sends it, records the answer, and learns from it what
// the client's next requests need.
func (s *historyStresser) do(ctx context.Context, hc *historyClient, req history.Request) (*history.Response, error) {
	id, ok := s.hist.Call(hc.id, hc.member, req)
	if !ok {
		return nil, errRecorderFull
	}
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	resp, err := send(rctx, hc.cli, req)
	cancel()
	s.hist.Return(id, resp, err)
	s.count(ctx, req, hc.member, start, err)
	if err != nil {
		if req.Kind == history.LeaseRevoke {
			if class, _ := Classify(err); class == ClassLeaseNotFound {
				s.dropLease(hc, req.Lease)
				return nil, errLeaseGone
			}
			// Outcome unknown: use the lease no more, and revoke it
			// again when the next interval starts.
			s.dropLease(hc, req.Lease)
			s.mu.Lock()
			s.leases[req.Lease] = true
			s.mu.Unlock()
		}
		return nil, err
	}
	hc.rev = max(hc.rev, resp.Revision)
	switch req.Kind {
	case history.Get:
		if req.Revision == 0 {
			hc.learn(req.Key, req.End, resp)
		}
	case history.Put:
		hc.mods[req.Key] = resp.Revision
		s.modified.Add(1)
	case history.Delete:
		hc.learn(req.Key, req.End, &history.Response{})
		s.modified.Add(resp.Deleted)
	case history.Txn:
		if resp.Succeeded {
			hc.mods[req.Then[0].Key] = resp.Revision
			s.modified.Add(1)
		} else if len(resp.Results) == 1 {
			hc.learn(req.Else[0].Key, "", &resp.Results[0])
		}
	case history.LeaseGrant:
		hc.leases = append(hc.leases, resp.Lease)
		s.mu.Lock()
		s.leases[resp.Lease] = true
		s.mu.Unlock()
	case history.LeaseRevoke:
		s.dropLease(hc, req.Lease)
		s.forget(req.Lease)
	}
	return resp, nil
}

// count adds a request to the Stats. A read at a past revision the tester
// has compacted away fails as it should, so that is expected too.
func (s *historyStresser) count(ctx context.Context, req history.Request, member string, start time.Time, err error) {
	op := "history-" + string(req.Kind)
	if req.Kind == history.Get && req.Revision > 0 && ctx.Err() == nil &&
		(errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, rpctypes.ErrFutureRev)) {
		end := time.Now()
		s.rec.record(op, end, end.Sub(start), classCompacted, true)
		return
	}
	s.rec.finishLease(ctx, op, member, start, err, req.Kind == history.LeaseRevoke)
}

// classCompacted counts, in Stats.Errors, the history stresser's reads at
// a revision that was compacted away.
const classCompacted = "compacted"

func (s *historyStresser) dropLease(hc *historyClient, id int64) {
	for i, l := range hc.leases {
		if l == id {
			hc.leases = append(hc.leases[:i], hc.leases[i+1:]...)
			return
		}
	}
}

// learn notes the mod revisions a read of [from, end) showed; a key it did
// not show is missing (mod revision 0).
func (hc *historyClient) learn(from, end string, resp *history.Response) {
	for k := range hc.mods {
		if k == from || (end != "" && k >= from && k < end) {
			hc.mods[k] = 0
		}
	}
	for _, kv := range resp.KVs {
		hc.mods[kv.Key] = kv.ModRevision
	}
}

// send issues req on cli and translates the answer.
func send(ctx context.Context, cli *clientv3.Client, req history.Request) (*history.Response, error) {
	switch req.Kind {
	case history.Get, history.Put, history.Delete:
		r, err := cli.Do(ctx, clientOp(req))
		if err != nil {
			return nil, err
		}
		switch {
		case r.Get() != nil:
			return rangeResponse(r.Get().Header.Revision, r.Get().Count, r.Get().Kvs), nil
		case r.Put() != nil:
			return &history.Response{Revision: r.Put().Header.Revision}, nil
		default:
			return &history.Response{Revision: r.Del().Header.Revision, Deleted: r.Del().Deleted}, nil
		}
	case history.Txn:
		var cmps []clientv3.Cmp
		for _, c := range req.Compares {
			cmps = append(cmps, compare(c))
		}
		var then, els []clientv3.Op
		for _, o := range req.Then {
			then = append(then, clientOp(o))
		}
		for _, o := range req.Else {
			els = append(els, clientOp(o))
		}
		r, err := cli.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
		if err != nil {
			return nil, err
		}
		resp := &history.Response{Revision: r.Header.Revision, Succeeded: r.Succeeded}
		for _, ro := range r.Responses {
			var res history.Response
			switch {
			case ro.GetResponseRange() != nil:
				g := ro.GetResponseRange()
				res = *rangeResponse(0, g.Count, g.Kvs)
			case ro.GetResponseDeleteRange() != nil:
				res.Deleted = ro.GetResponseDeleteRange().Deleted
			}
			resp.Results = append(resp.Results, res)
		}
		return resp, nil
	case history.LeaseGrant:
		r, err := cli.Grant(ctx, req.TTL)
		if err != nil {
			return nil, err
		}
		return &history.Response{Revision: r.ResponseHeader.Revision, Lease: int64(r.ID), TTL: r.TTL}, nil
	case history.LeaseRevoke:
		r, err := cli.Revoke(ctx, clientv3.LeaseID(req.Lease))
		if err != nil {
			return nil, err
		}
		return &history.Response{Revision: r.Header.Revision}, nil
	}
	return nil, fmt.Errorf("stresser: history request kind %q", req.Kind)
}

func clientOp(req history.Request) clientv3.Op {
	var opts []clientv3.OpOption
	if req.End != "" {
		opts = append(opts, clientv3.WithRange(req.End))
	}
	switch req.Kind {
	case history.Get:
		if req.Revision > 0 {
			opts = append(opts, clientv3.WithRev(req.Revision))
		}
		return clientv3.OpGet(req.Key, opts...)
	case history.Put:
		if req.Lease != 0 {
			opts = append(opts, clientv3.WithLease(clientv3.LeaseID(req.Lease)))
		}
		return clientv3.OpPut(req.Key, req.Value, opts...)
	}
	return clientv3.OpDelete(req.Key, opts...)
}

func compare(c history.Compare) clientv3.Cmp {
	var cmp clientv3.Cmp
	switch c.Target {
	case history.TargetValue:
		return clientv3.Compare(clientv3.Value(c.Key), c.Op, c.Value)
	case history.TargetMod:
		cmp = clientv3.ModRevision(c.Key)
	case history.TargetCreate:
		cmp = clientv3.CreateRevision(c.Key)
	default:
		cmp = clientv3.Version(c.Key)
	}
	return clientv3.Compare(cmp, c.Op, c.Number)
}

func rangeResponse(rev, count int64, kvs []*mvccpb.KeyValue) *history.Response {
	resp := &history.Response{Revision: rev, Count: count}
	for _, kv := range kvs {
		resp.KVs = append(resp.KVs, history.KV{Key: string(kv.Key), Value: string(kv.Value),
			ModRevision: kv.ModRevision, CreateRevision: kv.CreateRevision, Version: kv.Version, Lease: kv.Lease})
	}
	return resp
}

// History takes the operations the history stresser recorded since the
// previous call (each interval, from Stress or Resume to Pause, starts
// with a snapshot read of every key) out of the stresser, for a checker
// such as checker/linearizability. Writes of unknown outcome that failed
// shortly before the previous window ended come first: they may have
// taken effect only in this one. Call it while paused, e.g. once per case
// after recovery; while the load runs it refuses, because requests in
// flight would be cut in half.
func (c *Composite) History() (history.History, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var hs *historyStresser
	for _, m := range c.members {
		if h, ok := m.(*historyStresser); ok {
			hs = h
		}
	}
	switch {
	case hs == nil:
		return history.History{}, fmt.Errorf("stresser: no history recorded: %q is not in Config.Names", NameHistory)
	case c.state == stateRunning:
		return history.History{}, errors.New("stresser: History while the load runs; Pause first")
	}
	hs.full.Store(false)
	now := hs.hist.Now()
	h := hs.hist.Cut(hs.cut, now)
	hs.cut = now
	carried := hs.carry
	hs.carry = nil
	for _, o := range h.Ops {
		if o.Unknown() && o.Return >= now-hs.carryOver() {
			hs.carry = append(hs.carry, o)
		}
	}
	if len(carried) > 0 {
		h.Ops = append(carried, h.Ops...)
	}
	return h, nil
}
