package stresser

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/checker/linearizability"
	"github.com/etcd-functional/functional/internal/etcdtest"
)

// benchCase is the length of the history BenchmarkLinearizabilityCheck
// records: about one case (inject, recover, wait healthy).
const benchCase = 20 * time.Second

// BenchmarkLinearizabilityCheck records the default load (keys, lease and
// history stressers at the default QPS) for benchCase against a real
// 3-member cluster, with a member killed and restarted half-way so that
// the history holds failed writes of unknown outcome, and then checks the
// history. check/wall is the checking time over the history's wall
// duration: below 1 the checker keeps up with the cases it judges.
func BenchmarkLinearizabilityCheck(b *testing.B) {
	c := etcdtest.StartCluster(b, 3)
	cfg := DefaultConfig()
	cfg.Endpoints = c.ClientURLs()
	cfg.Names = append(cfg.Names, NameHistory)
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Stress(context.Background()); err != nil {
		b.Fatal(err)
	}
	time.Sleep(benchCase / 2)
	if err := c.Member(1).Kill(); err != nil {
		b.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := c.Member(1).Restart(); err != nil {
		b.Fatal(err)
	}
	time.Sleep(benchCase/2 - 2*time.Second)
	s.Pause()
	h, err := s.History()
	if err != nil {
		b.Fatal(err)
	}
	unknown := 0
	for _, o := range h.Ops {
		if o.Unknown() {
			unknown++
		}
	}
	b.ResetTimer()
	var res linearizability.Result
	for i := 0; i < b.N; i++ {
		res = linearizability.Check(h, time.Minute)
		if res.Verdict != linearizability.Pass {
			b.Fatalf("%s: %s", res.Verdict, res.Error)
		}
	}
	b.StopTimer()
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(len(h.Ops)), "ops")
	b.ReportMetric(float64(unknown), "unknown-ops")
	b.ReportMetric(h.Duration().Seconds(), "wall-s")
	b.ReportMetric(per.Seconds()/h.Duration().Seconds(), "check/wall")
}

// BenchmarkHistoryOverhead runs the bulk load (keys and lease at the
// default QPS) without and with the history stresser beside it on one real
// 3-member cluster, alternating windows so that the machine's other load
// hits both alike, and reports the bulk stressers' achieved rate in each
// and their ratio (goal >= 0.95). The history stresser has a rate of its
// own on top; history/s is its achieved rate.
func BenchmarkHistoryOverhead(b *testing.B) {
	c := etcdtest.StartCluster(b, 3)
	mk := func(names ...string) *Composite {
		cfg := DefaultConfig()
		cfg.Endpoints = c.ClientURLs()
		cfg.Names = names
		s, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Stress(context.Background()); err != nil {
			b.Fatal(err)
		}
		s.Pause()
		return s
	}
	off := mk(NameKeys, NameLease)
	defer off.Close()
	on := mk(NameKeys, NameLease, NameHistory)
	defer on.Close()

	bulk := func(st Stats) int64 {
		var n int64
		for name, o := range st.Ops {
			if !strings.HasPrefix(name, "history-") {
				n += o.Success + o.Failure
			}
		}
		return n
	}
	var offN, onN, totalN int64
	var offT, onT time.Duration
	var histOps int
	for i := 0; i < b.N; i++ {
		for round := 0; round < benchRounds; round++ {
			off.Resume()
			time.Sleep(benchWindow)
			st := off.Pause()
			offN += bulk(st)
			offT += st.Duration

			on.Resume()
			time.Sleep(benchWindow)
			st = on.Pause()
			onN += bulk(st)
			totalN += st.Success + st.Failure
			onT += st.Duration
			h, err := on.History()
			if err != nil {
				b.Fatal(err)
			}
			histOps += len(h.Ops)
			if res := linearizability.Check(h, time.Minute); res.Verdict != linearizability.Pass {
				b.Fatalf("%s: %s", res.Verdict, res.Error)
			}
		}
	}
	offR, onR := float64(offN)/offT.Seconds(), float64(onN)/onT.Seconds()
	b.ReportMetric(offR, "bulk-off/s")
	b.ReportMetric(onR, "bulk-on/s")
	b.ReportMetric(float64(totalN)/onT.Seconds(), "total-on/s")
	b.ReportMetric(float64(histOps)/onT.Seconds(), "history/s")
	b.ReportMetric(onR/offR, "ratio")
}
