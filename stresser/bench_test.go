package stresser

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcd-functional/functional/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	benchClients = 100
	benchKeySize = 100
	// benchRounds windows of benchWindow each side, alternating, so that
	// a neighbour's load on the shared machine or a cluster slowing down
	// as it fills up hits both sides alike.
	benchRounds = 4
	benchWindow = 2 * time.Second
	benchWarmup = 500 * time.Millisecond
)

// BenchmarkPutThroughput compares, on one real 3-member cluster and in the
// same run, the key stresser's unthrottled put rate with a bare clientv3
// put loop of the same shape: as many goroutines, over one client per
// endpoint, putting values of the same size to keys drawn the same way.
// The ratio is the share of the bare rate the stresser's machinery (rate
// limiter, op choice, per-request timeout, stats) leaves; the goal is
// >= 0.90.
//
// A third loop gives every goroutine a client of its own, to show whether
// sharing one client (one gRPC connection) per endpoint limits throughput.
func BenchmarkPutThroughput(b *testing.B) {
	c := etcdtest.StartCluster(b, 3)
	endpoints := c.ClientURLs()
	conns, err := dial(endpoints)
	if err != nil {
		b.Fatal(err)
	}
	defer conns.close()
	shared := make([]*clientv3.Client, benchClients)
	own := make([]*clientv3.Client, benchClients)
	for i := range shared {
		shared[i] = conns.perEndpoint[i%len(endpoints)]
		cli, err := newClient([]string{endpoints[i%len(endpoints)]})
		if err != nil {
			b.Fatal(err)
		}
		defer cli.Close()
		own[i] = cli
	}

	cfg := DefaultConfig()
	cfg.Endpoints = endpoints
	cfg.Names = []string{NameKeys}
	cfg.QPS = 1_000_000 // far above what the cluster carries: unthrottled
	cfg.Clients = benchClients
	cfg.KeySize = benchKeySize
	cfg.KeyWeights = KeyWeights{Put: 1}
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Stress(context.Background()); err != nil {
		b.Fatal(err)
	}
	time.Sleep(benchWarmup)
	s.Pause()
	barePuts(shared, benchWarmup)

	var bareN, stressN, ownN int64
	var bareT, stressT, ownT time.Duration
	for i := 0; i < b.N; i++ {
		for round := 0; round < benchRounds; round++ {
			start := time.Now()
			bareN += barePuts(shared, benchWindow)
			bareT += time.Since(start)

			s.Resume()
			time.Sleep(benchWindow)
			st := s.Pause()
			if st.Unexpected > 0 {
				b.Fatalf("unexpected errors: %+v", st.Errors)
			}
			stressN += st.Ops["put"].Success
			stressT += st.Duration
		}
		start := time.Now()
		ownN += barePuts(own, benchWindow)
		ownT += time.Since(start)
	}
	bare := float64(bareN) / bareT.Seconds()
	stress := float64(stressN) / stressT.Seconds()
	b.ReportMetric(bare, "bare-puts/s")
	b.ReportMetric(stress, "stresser-puts/s")
	b.ReportMetric(stress/bare, "ratio")
	b.ReportMetric(float64(ownN)/ownT.Seconds(), "bare-own-client-puts/s")
}

// barePuts runs one goroutine per client, putting as fast as it can for d,
// and returns the number of successful puts.
func barePuts(clients []*clientv3.Client, d time.Duration) int64 {
	value := strings.Repeat("v", benchKeySize)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var done atomic.Int64
	var wg sync.WaitGroup
	for i, cli := range clients {
		rng := rand.New(rand.NewPCG(7, uint64(i)))
		wg.Go(func() {
			for ctx.Err() == nil {
				k := fmt.Sprintf("%s%06d", keyPrefix, rng.IntN(250000))
				if _, err := cli.Put(ctx, k, value); err == nil {
					done.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return done.Load()
}

// BenchmarkRateAccuracy runs the default load (keys and lease) against a
// real 3-member cluster at the default QPS and at higher rates, and reports
// achieved/asked, which should lie within 0.95-1.05 while the cluster can
// carry the rate.
func BenchmarkRateAccuracy(b *testing.B) {
	c := etcdtest.StartCluster(b, 3)
	for _, qps := range []int{500, DefaultConfig().QPS, 2000} {
		b.Run(fmt.Sprintf("qps=%d", qps), func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.Endpoints = c.ClientURLs()
			cfg.QPS = qps
			var achieved float64
			for i := 0; i < b.N; i++ {
				s, err := New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Stress(context.Background()); err != nil {
					b.Fatal(err)
				}
				time.Sleep(5 * time.Second)
				st := s.Close()
				achieved += st.QPS
				b.Logf("asked %d/s, achieved %.1f/s, success %d, failure %d, p50 %v, p99 %v",
					cfg.QPS, st.QPS, st.Success, st.Failure, st.Latency.P50, st.Latency.P99)
			}
			achieved /= float64(b.N)
			b.ReportMetric(achieved, "achieved/s")
			b.ReportMetric(achieved/float64(cfg.QPS), "accuracy")
		})
	}
}
