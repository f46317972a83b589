package linearizability

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/etcd-functional/functional/history"
)

// synth builds a linearizable history of n operations by 4 clients over 10
// keys, as the history stresser's mix would produce at rate ops/s: each
// operation takes effect at its own instant inside an interval that
// overlaps its neighbours'; other clients' writes move the revision on
// between them; and a share unknown of the writes fail, half of them
// having taken effect.
func synth(n int, rate float64, unknown float64, seed uint64) history.History {
	rng := rand.New(rand.NewPCG(seed, 1))
	type kvs = map[string]history.KV
	store := kvs{}
	rev := int64(1)
	keys := make([]string, 10)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%02d", i)
	}
	readAll := func() *history.Response {
		r := &history.Response{Revision: rev}
		for _, k := range keys {
			if kv, ok := store[k]; ok {
				r.KVs = append(r.KVs, kv)
			}
		}
		r.Count = int64(len(r.KVs))
		return r
	}
	gap := time.Duration(float64(time.Second) / rate)
	h := history.History{}
	h.Ops = append(h.Ops, history.Op{Client: 4, Member: history.Cluster, Call: 0, Return: gap / 2,
		Request: history.Request{Kind: history.Get, Key: "k", End: "l", Snapshot: true}, Response: readAll()})
	for i := 1; i < n; i++ {
		at := time.Duration(i) * gap
		rev += int64(rng.IntN(3)) // other clients' writes
		key := keys[rng.IntN(len(keys))]
		o := history.Op{Client: i % 4, Member: history.Cluster,
			Call: at - time.Duration(rng.Int64N(int64(3*gap))), Return: at + time.Duration(rng.Int64N(int64(3*gap)))}
		switch x := rng.IntN(10); {
		case x < 4:
			kv, ok := store[key]
			o.Request = history.Request{Kind: history.Get, Key: key}
			o.Response = &history.Response{Revision: rev}
			if ok {
				o.Response.KVs, o.Response.Count = []history.KV{kv}, 1
			}
		case x < 5:
			o.Request = history.Request{Kind: history.Get, Key: "k", End: "l"}
			o.Response = readAll()
		case x < 9:
			o.Request = history.Request{Kind: history.Put, Key: key, Value: fmt.Sprint("v", i)}
			fail := rng.Float64() < unknown
			if !fail || rng.IntN(2) == 0 {
				rev++
				old, ok := store[key]
				kv := history.KV{Key: key, Value: o.Request.Value, ModRevision: rev, CreateRevision: rev, Version: 1}
				if ok {
					kv.CreateRevision, kv.Version = old.CreateRevision, old.Version+1
				}
				store[key] = kv
			}
			if fail {
				o.Error = "context deadline exceeded"
			} else {
				o.Response = &history.Response{Revision: rev}
			}
		default:
			o.Request = history.Request{Kind: history.Delete, Key: key}
			o.Response = &history.Response{Revision: rev}
			if _, ok := store[key]; ok {
				rev++
				delete(store, key)
				o.Response = &history.Response{Revision: rev, Deleted: 1}
			}
		}
		h.Ops = append(h.Ops, o)
	}
	// Ops in call order, as a Recorder gives them.
	for i := 1; i < len(h.Ops); i++ {
		for j := i; j > 1 && h.Ops[j].Call < h.Ops[j-1].Call; j-- {
			h.Ops[j], h.Ops[j-1] = h.Ops[j-1], h.Ops[j]
		}
	}
	h.To = h.Ops[len(h.Ops)-1].Return
	return h
}

func TestSynthPasses(t *testing.T) {
	h := synth(3000, 200, 0.01, 1)
	mustVerdict(t, h, Pass)
}

// BenchmarkCheck checks synthetic histories of the history stresser's
// shape and size at its default rate (200 ops/s), 1% of writes (and, under
// heavy faults, 10% and 30%) of unknown outcome, and reports the checking time over the history's wall duration
// (below 1: the checker keeps up with the load it judges).
func BenchmarkCheck(b *testing.B) {
	for _, c := range []struct {
		n       int
		unknown float64
	}{{1000, 0.01}, {6000, 0.01}, {30000, 0.01}, {6000, 0.1}, {6000, 0.3}} {
		b.Run(fmt.Sprintf("ops=%d/unknown=%v", c.n, c.unknown), func(b *testing.B) {
			h := synth(c.n, 200, c.unknown, 7)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if res := Check(h, 5*time.Minute); res.Verdict != Pass {
					b.Fatalf("%s: %s", res.Verdict, res.Error)
				}
			}
			per := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(h.Duration().Seconds(), "wall-s")
			b.ReportMetric(per.Seconds()/h.Duration().Seconds(), "check/wall")
		})
	}
}
