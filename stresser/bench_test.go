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
	benchClients  = 100
	benchKeySize  = 100
	benchDuration = 3 * time.Second
	benchWarmup   = 500 * time.Millisecond
)

// BenchmarkPutThroughput compares, on one real 3-member cluster and in the
// same run, the key stresser's unthrottled put rate with a bare clientv3
// put loop of the same shape: as many goroutines, over one client per
// endpoint, putting values of the same size to keys drawn the same way.
// The ratio is the share of the bare rate the stresser's machinery (rate
// limiter, op choice, stats) leaves; the goal is >= 0.90.
//
// A third loop gives every goroutine a client of its own, to show whether
// sharing one client (one gRPC connection) per endpoint limits throughput.
func BenchmarkPutThroughput(b *testing.B) {
	c := etcdtest.StartCluster(b, 3)
	var bare, stress, own float64
	for i := 0; i < b.N; i++ {
		// Alternate, so that a cluster slowing down as it fills up or a
		// neighbour's load on the machine does not favour one side.
		for round := 0; round < 2; round++ {
			bare += barePutRate(b, c.ClientURLs(), false)
			stress += stresserPutRate(b, c.ClientURLs())
		}
		own += barePutRate(b, c.ClientURLs(), true)
	}
	b.ReportMetric(bare/float64(2*b.N), "bare-puts/s")
	b.ReportMetric(stress/float64(2*b.N), "stresser-puts/s")
	b.ReportMetric(stress/bare, "ratio")
	b.ReportMetric(own/float64(b.N), "bare-own-client-puts/s")
}

// barePutRate runs benchClients goroutines putting as fast as they can,
// over one client per endpoint or, with ownClient, one client each.
func barePutRate(b *testing.B, endpoints []string, ownClient bool) float64 {
	b.Helper()
	conns, err := dial(endpoints)
	if err != nil {
		b.Fatal(err)
	}
	defer conns.close()
	clients := make([]*clientv3.Client, benchClients)
	for i := range clients {
		clients[i] = conns.perEndpoint[i%len(endpoints)]
		if ownClient {
			cli, err := newClient([]string{endpoints[i%len(endpoints)]})
			if err != nil {
				b.Fatal(err)
			}
			defer cli.Close()
			clients[i] = cli
		}
	}
	value := strings.Repeat("v", benchKeySize)
	var done atomic.Int64
	run := func(d time.Duration) int64 {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		done.Store(0)
		var wg sync.WaitGroup
		for i := 0; i < benchClients; i++ {
			cli := clients[i]
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
	run(benchWarmup)
	start := time.Now()
	n := run(benchDuration)
	return float64(n) / time.Since(start).Seconds()
}

func stresserPutRate(b *testing.B, endpoints []string) float64 {
	b.Helper()
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
	s.Resume()
	time.Sleep(benchDuration)
	st := s.Pause()
	if st.Unexpected > 0 {
		b.Fatalf("unexpected errors: %+v", st.Errors)
	}
	return float64(st.Ops["put"].Success) / st.Duration.Seconds()
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
