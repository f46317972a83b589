package stresser

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// keyPrefix holds every key of the key stresser; the lease stresser's keys
// live under leasePrefix, so a delete-range of one never touches the other.
const keyPrefix = "/stresser/key/"

// rangeSpan is how many key suffixes a range or delete-range covers.
const rangeSpan = 500

// How often, unless Config.SkipPastReads, a read asks for an old revision:
// one get or range in pastReadEvery, one txn in pastTxnEvery (that txn
// mixes a put with the read, the shape of etcd #18667). Half of the reads
// still see the present, so a failure of past reads alone stands out.
const (
	pastReadEvery = 2
	pastTxnEvery  = 3
)

type keyOp int

const (
	opPut keyOp = iota
	opPutLarge
	opGet
	opRange
	opDelete
	opDeleteRange
	opTxn
	numKeyOps
)

var keyOpNames = [numKeyOps]string{"put", "put-large", "get", "range", "delete", "delete-range", "txn"}

func (o keyOp) String() string { return keyOpNames[o] }

// opPicker draws key operations with probabilities proportional to weights.
type opPicker struct {
	cum   [numKeyOps]float64 // cumulative weights
	total float64
}

func newOpPicker(w KeyWeights) opPicker {
	var p opPicker
	for i, v := range [numKeyOps]float64{w.Put, w.PutLarge, w.Get, w.Range, w.Delete, w.DeleteRange, w.Txn} {
		p.total += v
		p.cum[i] = p.total
	}
	return p
}

func (p *opPicker) pick(rng *rand.Rand) keyOp { return p.at(rng.Float64() * p.total) }

// at maps x in [0, total] to an op.
func (p *opPicker) at(x float64) keyOp {
	// The first op whose cumulative weight exceeds x; ops of weight 0
	// have an empty interval and are never drawn.
	i := sort.Search(int(numKeyOps), func(i int) bool { return p.cum[i] > x })
	for i == int(numKeyOps) || (i > 0 && p.cum[i] == p.cum[i-1]) {
		// x rounded up to total: take the last op with a weight.
		i--
	}
	return keyOp(i)
}

// keyStresser runs Config.Clients workers, each pinned to one endpoint,
// issuing a weighted mix of key operations.
type keyStresser struct {
	cfg      Config
	lim      limiter
	rec      *recorder
	picker   opPicker
	value    string // KeySize bytes
	large    string // KeyLargeSize bytes
	width    int    // digits of the largest suffix, so keys sort by number
	modified atomic.Int64
	// latest is the newest revision a response has shown: past reads
	// pick their revision at or below it, so that a member never sees a
	// revision from the future (a linearizable read waits for the member
	// to apply everything committed before it was sent).
	latest atomic.Int64
}

func newKeyStresser(cfg Config, lim limiter, rec *recorder) *keyStresser {
	return &keyStresser{
		cfg:    cfg,
		lim:    lim,
		rec:    rec,
		picker: newOpPicker(cfg.KeyWeights),
		value:  strings.Repeat("v", cfg.KeySize),
		large:  strings.Repeat("V", cfg.KeyLargeSize),
		width:  len(fmt.Sprint(cfg.KeySuffixRange - 1)),
	}
}

func (s *keyStresser) name() string { return NameKeys }

func (s *keyStresser) modifiedKeys() int64 { return s.modified.Load() }

func (s *keyStresser) check(context.Context, *conns) error { return nil }

// run starts the workers and returns when ctx is done and all have ended.
func (s *keyStresser) run(ctx context.Context, c *conns, interval uint64) {
	var wg sync.WaitGroup
	for i := 0; i < s.cfg.Clients; i++ {
		ep := i % len(c.perEndpoint)
		rng := rand.New(rand.NewPCG(uint64(s.cfg.Seed), interval<<32|uint64(i)))
		wg.Go(func() { s.worker(ctx, c.perEndpoint[ep], s.cfg.Endpoints[ep], rng) })
	}
	wg.Wait()
}

func (s *keyStresser) worker(ctx context.Context, cli *clientv3.Client, member string, rng *rand.Rand) {
	for {
		if err := s.lim.Wait(ctx); err != nil {
			return // ctx is done: Pause, Close or the caller's cancel
		}
		op := s.picker.pick(rng)
		start := time.Now()
		rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		name, n, err := s.do(rctx, cli, op, rng)
		cancel()
		s.modified.Add(n)
		s.rec.finish(ctx, name, member, start, err)
	}
}

func (s *keyStresser) key(suffix int) string {
	return fmt.Sprintf("%s%0*d", keyPrefix, s.width, suffix)
}

// span returns the keys [from, end) of a range starting at a random suffix.
func (s *keyStresser) span(rng *rand.Rand) (from, end string) {
	i := rng.IntN(s.cfg.KeySuffixRange)
	return s.key(i), s.key(min(i+rangeSpan, s.cfg.KeySuffixRange))
}

// observe raises latest to the revision of a response header.
func (s *keyStresser) observe(h *etcdserverpb.ResponseHeader) {
	if h == nil {
		return
	}
	for {
		cur := s.latest.Load()
		if h.Revision <= cur || s.latest.CompareAndSwap(cur, h.Revision) {
			return
		}
	}
}

// pastRev draws a revision in [max(1, latest-PastReadWindow), latest], or
// returns 0 when no past read is due: past reads are off, this read was
// not drawn as one (one in every), or no response has shown a revision
// yet.
func (s *keyStresser) pastRev(rng *rand.Rand, every int) int64 {
	if s.cfg.SkipPastReads || rng.IntN(every) != 0 {
		return 0
	}
	latest := s.latest.Load()
	if latest < 1 {
		return 0
	}
	lo := max(1, latest-s.cfg.PastReadWindow)
	return lo + rng.Int64N(latest-lo+1)
}

// do issues one operation and returns the name it is counted under (a
// read of the past adds "-past" to its operation's), and how many keys it
// wrote or deleted.
func (s *keyStresser) do(ctx context.Context, cli *clientv3.Client, op keyOp, rng *rand.Rand) (string, int64, error) {
	name := op.String()
	switch op {
	case opPut, opPutLarge:
		v := s.value
		if op == opPutLarge {
			v = s.large
		}
		resp, err := cli.Put(ctx, s.key(rng.IntN(s.cfg.KeySuffixRange)), v)
		if err != nil {
			return name, 0, err
		}
		s.observe(resp.Header)
		return name, 1, nil
	case opGet, opRange:
		var opts []clientv3.OpOption
		key := s.key(rng.IntN(s.cfg.KeySuffixRange))
		if op == opRange {
			from, end := s.span(rng)
			key = from
			opts = append(opts, clientv3.WithRange(end), clientv3.WithLimit(rangeSpan))
		}
		if rev := s.pastRev(rng, pastReadEvery); rev > 0 {
			name += "-past"
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, key, opts...)
		if err != nil {
			return name, 0, err
		}
		s.observe(resp.Header)
		return name, 0, nil
	case opDelete:
		resp, err := cli.Delete(ctx, s.key(rng.IntN(s.cfg.KeySuffixRange)))
		if err != nil {
			return name, 0, err
		}
		s.observe(resp.Header)
		return name, resp.Deleted, nil
	case opDeleteRange:
		from, end := s.span(rng)
		resp, err := cli.Delete(ctx, from, clientv3.WithRange(end))
		if err != nil {
			return name, 0, err
		}
		s.observe(resp.Header)
		return name, resp.Deleted, nil
	case opTxn:
		if rev := s.pastRev(rng, pastTxnEvery); rev > 0 {
			n, err := s.pastTxn(ctx, cli, rng, rev)
			return name + "-past", n, err
		}
		n, err := s.txn(ctx, cli, rng)
		return name, n, err
	}
	panic(fmt.Sprintf("stresser: unknown key op %d", op))
}

// pastTxn mixes a write with a read of the past in one txn:
//
//	If(Value(k) = value).Then(Put(k2), Get(k, rev)).Else(Put(k2), Get(k, rev))
//
// with k2 the key after k. Both branches hold the same pair, so the mix
// runs whichever way the compare goes (most keys are absent). A rev at or
// below the last compaction makes etcd refuse the read; etcd #18667 (every
// v3.6) then leaves the put applied on some members and not on others.
func (s *keyStresser) pastTxn(ctx context.Context, cli *clientv3.Client, rng *rand.Rand, rev int64) (int64, error) {
	i := rng.IntN(s.cfg.KeySuffixRange)
	k, k2 := s.key(i), s.key((i+1)%s.cfg.KeySuffixRange)
	if k == k2 {
		// One key only (KeySuffixRange 1): the put goes elsewhere, so
		// that the read is of a key this txn does not change.
		k2 = keyPrefix + "past-txn"
	}
	mix := []clientv3.Op{clientv3.OpPut(k2, s.value), clientv3.OpGet(k, clientv3.WithRev(rev))}
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(k), "=", s.value)).Then(mix...).Else(mix...).Commit()
	if err != nil {
		return 0, err
	}
	s.observe(resp.Header)
	return 1, nil
}

// txn puts or deletes KeyTxnOps distinct keys (etcd refuses a txn that
// writes one key twice): consecutive suffixes from a random start.
func (s *keyStresser) txn(ctx context.Context, cli *clientv3.Client, rng *rand.Rand) (int64, error) {
	ops := make([]clientv3.Op, s.cfg.KeyTxnOps)
	start := rng.IntN(s.cfg.KeySuffixRange)
	puts := int64(0)
	for i := range ops {
		k := s.key((start + i) % s.cfg.KeySuffixRange)
		if rng.IntN(2) == 0 {
			ops[i] = clientv3.OpPut(k, s.value)
			puts++
		} else {
			ops[i] = clientv3.OpDelete(k)
		}
	}
	resp, err := cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return 0, err
	}
	s.observe(resp.Header)
	n := puts
	for _, r := range resp.Responses {
		if d := r.GetResponseDeleteRange(); d != nil {
			n += d.Deleted
		}
	}
	return n, nil
}
