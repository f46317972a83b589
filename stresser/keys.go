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

	clientv3 "go.etcd.io/etcd/client/v3"
)

// keyPrefix holds every key of the key stresser; the lease stresser's keys
// live under leasePrefix, so a delete-range of one never touches the other.
const keyPrefix = "/stresser/key/"

// rangeSpan is how many key suffixes a range or delete-range covers.
const rangeSpan = 500

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
		n, err := s.do(rctx, cli, op, rng)
		cancel()
		s.modified.Add(n)
		s.rec.finish(ctx, op.String(), member, start, err)
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

// do issues one operation and returns how many keys it wrote or deleted.
func (s *keyStresser) do(ctx context.Context, cli *clientv3.Client, op keyOp, rng *rand.Rand) (int64, error) {
	switch op {
	case opPut, opPutLarge:
		v := s.value
		if op == opPutLarge {
			v = s.large
		}
		if _, err := cli.Put(ctx, s.key(rng.IntN(s.cfg.KeySuffixRange)), v); err != nil {
			return 0, err
		}
		return 1, nil
	case opGet:
		_, err := cli.Get(ctx, s.key(rng.IntN(s.cfg.KeySuffixRange)))
		return 0, err
	case opRange:
		from, end := s.span(rng)
		_, err := cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(rangeSpan))
		return 0, err
	case opDelete:
		resp, err := cli.Delete(ctx, s.key(rng.IntN(s.cfg.KeySuffixRange)))
		if err != nil {
			return 0, err
		}
		return resp.Deleted, nil
	case opDeleteRange:
		from, end := s.span(rng)
		resp, err := cli.Delete(ctx, from, clientv3.WithRange(end))
		if err != nil {
			return 0, err
		}
		return resp.Deleted, nil
	case opTxn:
		return s.txn(ctx, cli, rng)
	}
	panic(fmt.Sprintf("stresser: unknown key op %d", op))
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
	n := puts
	for _, r := range resp.Responses {
		if d := r.GetResponseDeleteRange(); d != nil {
			n += d.Deleted
		}
	}
	return n, nil
}
