package stresser

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coreos/pkg/capnslog"
	"github.com/etcd-functional/functional/internal/logfmt"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) {
	// Info lines ("stressing ...") would break up benchmark output.
	if err := logfmt.Setup("NOTICE"); err != nil {
		panic(err)
	}
	goleak.VerifyTestMain(m)
}

func validConfig() Config {
	cfg := DefaultConfig()
	cfg.Endpoints = []string{"http://127.0.0.1:2379"}
	return cfg
}

func TestDefaultConfigIsValid(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateNamesTheBadField(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   []string // substrings of the error
	}{
		{"no endpoints", func(c *Config) { c.Endpoints = nil }, []string{"Endpoints", "at least one"}},
		{"endpoint without port", func(c *Config) { c.Endpoints = []string{"http://127.0.0.1"} }, []string{"Endpoints", `"http://127.0.0.1"`, "host:port"}},
		{"endpoint with bad scheme", func(c *Config) { c.Endpoints = []string{"ftp://127.0.0.1:21"} }, []string{"Endpoints", "http://host:port"}},
		{"endpoint port out of range", func(c *Config) { c.Endpoints = []string{"127.0.0.1:70000"} }, []string{"Endpoints", "127.0.0.1:70000"}},
		{"zero qps", func(c *Config) { c.QPS = 0 }, []string{"QPS", "> 0"}},
		{"negative qps", func(c *Config) { c.QPS = -5 }, []string{"QPS: -5"}},
		{"zero key size", func(c *Config) { c.KeySize = 0 }, []string{"KeySize: 0"}},
		{"negative large key size", func(c *Config) { c.KeyLargeSize = -1 }, []string{"KeyLargeSize: -1"}},
		{"zero clients", func(c *Config) { c.Clients = 0 }, []string{"Clients: 0"}},
		{"zero suffix range", func(c *Config) { c.KeySuffixRange = 0 }, []string{"KeySuffixRange: 0"}},
		{"txn ops too many", func(c *Config) { c.KeyTxnOps = 129 }, []string{"KeyTxnOps: 129", "128"}},
		{"txn ops above range", func(c *Config) { c.KeySuffixRange = 5 }, []string{"KeyTxnOps: 10", "KeySuffixRange"}},
		{"unknown name", func(c *Config) { c.Names = []string{"keys", "bogus"} }, []string{`"bogus"`, "keys, lease, nop"}},
		{"no names", func(c *Config) { c.Names = nil }, []string{"Names", "keys, lease, nop"}},
		{"duplicate name", func(c *Config) { c.Names = []string{"keys", "keys"} }, []string{`"keys" given twice`}},
		{"negative weight", func(c *Config) { c.KeyWeights.Get = -1 }, []string{"KeyWeights.Get"}},
		{"all weights zero", func(c *Config) { c.KeyWeights = KeyWeights{} }, []string{"KeyWeights", "all zero"}},
		{"txn weight without ops", func(c *Config) { c.KeyTxnOps = 0 }, []string{"KeyWeights.Txn"}},
		{"zero timeout", func(c *Config) { c.RequestTimeout = 0 }, []string{"RequestTimeout"}},
		{"zero past-read window", func(c *Config) { c.PastReadWindow = 0 }, []string{"PastReadWindow: 0", "SkipPastReads"}},
		{"negative past-read window", func(c *Config) { c.PastReadWindow = -3 }, []string{"PastReadWindow: -3"}},
		{"short ttl above ttl", func(c *Config) { c.ShortLeaseTTL = 200 * time.Second }, []string{"ShortLeaseTTL"}},
		{"zero lease count", func(c *Config) { c.LeaseCount = 0 }, []string{"LeaseCount: 0"}},
		{"zero keys per lease", func(c *Config) { c.KeysPerLease = 0 }, []string{"KeysPerLease: 0"}},
		{"zero keepalive", func(c *Config) { c.LeaseKeepAliveInterval = 0 }, []string{"LeaseKeepAliveInterval"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := validConfig()
			tc.change(&cfg)
			err := cfg.Validate()
			if err == nil {
				t.Fatal("Validate: no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if s, err := New(cfg); err == nil || s != nil {
				t.Errorf("New accepted a config Validate refuses")
			}
		})
	}
}

// TestValidateSkipPastReadsNeedsNoWindow: leaving past reads out makes
// their window irrelevant, so a zero window is then fine.
func TestValidateSkipPastReadsNeedsNoWindow(t *testing.T) {
	cfg := validConfig()
	cfg.PastReadWindow = 0
	cfg.SkipPastReads = true
	if err := cfg.Validate(); err != nil {
		t.Fatalf("SkipPastReads with window 0: %v", err)
	}
}

func TestValidateAcceptsEndpointForms(t *testing.T) {
	cfg := validConfig()
	cfg.Endpoints = []string{"127.0.0.1:2379", "http://127.0.0.1:22379", "https://[::1]:2379/", "localhost:1"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateChecksOnlySelectedStressers(t *testing.T) {
	cfg := validConfig()
	cfg.Names = []string{NameLease}
	cfg.Clients, cfg.KeySize = 0, 0 // key fields are irrelevant without "keys"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("lease-only config with zero key fields: %v", err)
	}
	cfg.Names = []string{NameKeys}
	cfg.LeaseCount = 0
	cfg.Clients, cfg.KeySize = 1, 1
	if err := cfg.Validate(); err != nil {
		t.Fatalf("keys-only config with zero lease fields: %v", err)
	}
}

// TestPickerFollowsWeights draws many operations with a fixed seed and
// checks each frequency against its weight.
func TestPickerFollowsWeights(t *testing.T) {
	w := DefaultConfig().KeyWeights
	p := newOpPicker(w)
	rng := rand.New(rand.NewPCG(1, 2))
	const draws = 1_000_000
	var got [numKeyOps]int
	for i := 0; i < draws; i++ {
		got[p.pick(rng)]++
	}
	weights := [numKeyOps]float64{w.Put, w.PutLarge, w.Get, w.Range, w.Delete, w.DeleteRange, w.Txn}
	total := 0.0
	for _, v := range weights {
		total += v
	}
	for op, v := range weights {
		want := v / total * draws
		// Five standard deviations of a binomial count, and at least 1%
		// of the expectation for the common ops.
		tol := math.Max(5*math.Sqrt(want*(1-v/total)), 0.01*want)
		if math.Abs(float64(got[op])-want) > tol {
			t.Errorf("%v: drawn %d times, want %.0f ± %.0f", keyOp(op), got[op], want, tol)
		}
	}
	if got[opPutLarge] == 0 {
		t.Error("large puts never drawn")
	}
}

func TestPickerNeverDrawsZeroWeight(t *testing.T) {
	p := newOpPicker(KeyWeights{Get: 1, Txn: 3})
	rng := rand.New(rand.NewPCG(3, 4))
	var got [numKeyOps]int
	for i := 0; i < 100_000; i++ {
		got[p.pick(rng)]++
	}
	for op, n := range got {
		if op != int(opGet) && op != int(opTxn) && n > 0 {
			t.Errorf("%v has weight 0 but was drawn %d times", keyOp(op), n)
		}
	}
	if r := float64(got[opTxn]) / float64(got[opGet]); r < 2.8 || r > 3.2 {
		t.Errorf("txn/get = %.2f, want 3", r)
	}
	// The edge: a draw of exactly total must map to the last op with a
	// weight, not to a weightless one after it.
	for _, w := range []KeyWeights{{Put: 1}, {Put: 1, DeleteRange: 2}, {Get: 0.5, Range: 0.5}} {
		p := newOpPicker(w)
		if op := p.at(p.total); op != p.at(math.Nextafter(p.total, 0)) {
			t.Errorf("weights %+v: draw of total picked %v", w, op)
		}
		if op := p.at(0); op == opPutLarge || (w.Put == 0 && op == opPut) {
			t.Errorf("weights %+v: draw of 0 picked %v", w, op)
		}
	}
}

// TestLimiterNeverBursts checks the property the rate accuracy relies on:
// with a burst of one, n requests asking at the same instant are spread
// over (n-1)/qps seconds, however many workers ask, from the first second on.
func TestLimiterNeverBursts(t *testing.T) {
	const qps = 2000
	lim := newLimiter(qps)
	now := time.Now()
	var last time.Duration
	for i := 0; i < 3*qps; i++ {
		r := lim.ReserveN(now, 1)
		if !r.OK() {
			t.Fatal("reservation refused")
		}
		d := r.DelayFrom(now)
		want := time.Duration(float64(i) / qps * float64(time.Second))
		if diff := d - want; diff < -time.Microsecond || diff > time.Microsecond {
			t.Fatalf("request %d allowed after %v, want %v", i, d, want)
		}
		last = d
	}
	if last < 3*time.Second-time.Second/qps-time.Millisecond {
		t.Fatalf("%d requests fit in %v, more than %d/s", 3*qps, last, qps)
	}
	if lim.Burst() != 1 || lim.Limit() != rate.Limit(qps) {
		t.Fatalf("limiter: burst %d, limit %v", lim.Burst(), lim.Limit())
	}
}

// TestStressersShareOneLimiter: the cluster-wide QPS holds when several
// stressers run, because New hands all of them the same limiter.
func TestStressersShareOneLimiter(t *testing.T) {
	cfg := validConfig()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	k, l := s.members[0].(*keyStresser), s.members[1].(*leaseStresser)
	if k.lim != l.lim {
		t.Fatal("key and lease stressers have different limiters")
	}
	if k.rec != l.rec || k.rec != s.rec {
		t.Fatal("stressers record into different recorders")
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err      error
		class    string
		expected bool
	}{
		{context.DeadlineExceeded, ClassDeadline, true},
		{fmt.Errorf("put: %w", context.DeadlineExceeded), ClassDeadline, true},
		{context.Canceled, ClassCanceled, true},
		{rpctypes.ErrNoLeader, ClassNoLeader, true},
		{rpctypes.ErrLeaderChanged, ClassLeaderChanged, true},
		{rpctypes.ErrNotLeader, ClassLeaderChanged, true},
		{rpctypes.ErrTooManyRequests, ClassTooManyRequests, true},
		{rpctypes.ErrTimeout, ClassTimeout, true},
		{rpctypes.ErrTimeoutDueToLeaderFail, ClassTimeout, true},
		{rpctypes.ErrTimeoutDueToConnectionLost, ClassTimeout, true},
		{rpctypes.ErrStopped, ClassStopped, true},
		// The client turns gRPC errors with etcd's messages into these.
		{rpctypes.Error(rpctypes.ErrGRPCNoLeader), ClassNoLeader, true},
		{status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\""), ClassUnavailable, true},
		{status.Error(codes.Unavailable, "error reading from server: EOF"), ClassConnectionClosing, true},
		{status.Error(codes.Canceled, "grpc: the client connection is closing"), ClassConnectionClosing, true},
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), ClassDeadline, true},
		{status.Error(codes.ResourceExhausted, "etcdserver: too many requests"), ClassTooManyRequests, true},
		{fmt.Errorf("put: %w", status.Error(codes.Unavailable, "etcdserver: leader changed")), ClassLeaderChanged, true},
		// gRPC's own ResourceExhausted means a request too big: our bug.
		{status.Error(codes.ResourceExhausted, "trying to send message larger than max"), ClassUnexpected, false},
		{rpctypes.ErrLeaseNotFound, ClassLeaseNotFound, false},
		{rpctypes.ErrDuplicateKey, ClassUnexpected, false},
		// A read at a compacted revision: past reads ask for them.
		{rpctypes.ErrCompacted, ClassCompacted, true},
		{rpctypes.Error(rpctypes.ErrGRPCCompacted), ClassCompacted, true},
		{status.Error(codes.OutOfRange, "etcdserver: mvcc: required revision has been compacted"), ClassCompacted, true},
		// A read ahead of the member: never asked for, so a bug.
		{rpctypes.ErrFutureRev, ClassUnexpected, false},
		{status.Error(codes.Internal, "boom"), ClassUnexpected, false},
		{status.Error(codes.Unknown, "raft proposal dropped"), ClassNoLeader, true},
		{status.Error(codes.Unknown, "raft: stopped"), ClassStopped, true},
		{status.Error(codes.Unknown, "mystery"), ClassUnexpected, false},
		{errors.New("something else"), ClassUnexpected, false},
	} {
		class, expected := Classify(tc.err)
		if class != tc.class || expected != tc.expected {
			t.Errorf("Classify(%v) = %q, %v; want %q, %v", tc.err, class, expected, tc.class, tc.expected)
		}
	}
}

func TestHistogramBuckets(t *testing.T) {
	// Every value lies in its bucket, and buckets are at most 1/32 wide.
	prevUpper := int64(-1)
	for i := 0; i < numBuckets; i++ {
		up := bucketUpper(i)
		if up <= prevUpper {
			t.Fatalf("bucket %d upper %d <= previous %d", i, up, prevUpper)
		}
		lo := prevUpper + 1
		if bucketOf(lo) != i || bucketOf(up) != i {
			t.Fatalf("bucket %d [%d, %d]: bucketOf gives %d, %d", i, lo, up, bucketOf(lo), bucketOf(up))
		}
		if lo >= subCount && float64(up-lo+1)/float64(lo) > 1.0/subCount+1e-9 {
			t.Fatalf("bucket %d [%d, %d] wider than 1/%d", i, lo, up, subCount)
		}
		prevUpper = up
	}
	if bucketOf(math.MaxInt64) != numBuckets-1 || bucketOf(-5) != 0 {
		t.Fatal("out-of-range values not clamped")
	}
}

func TestHistogramPercentiles(t *testing.T) {
	var h histogram
	// 1..10000 µs, uniformly: p50 = 5 ms, p90 = 9 ms, p99 = 9.9 ms.
	for i := 1; i <= 10000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	l := h.latency()
	for _, c := range []struct {
		name     string
		got      time.Duration
		want     time.Duration
		tolerate float64
	}{
		{"p50", l.P50, 5 * time.Millisecond, 1.0 / 32},
		{"p90", l.P90, 9 * time.Millisecond, 1.0 / 32},
		{"p99", l.P99, 9900 * time.Microsecond, 1.0 / 32},
		{"max", l.Max, 10 * time.Millisecond, 0},
	} {
		if c.got < c.want || float64(c.got-c.want) > c.tolerate*float64(c.want) {
			t.Errorf("%s = %v, want %v (+%.1f%%)", c.name, c.got, c.want, c.tolerate*100)
		}
	}
	if l.Count != 10000 {
		t.Errorf("count %d", l.Count)
	}
	// A single value is its own percentiles, exactly (capped at max).
	var one histogram
	one.add(1234567 * time.Nanosecond)
	if l := one.latency(); l.P50 != 1234567 || l.P99 != 1234567 || l.Max != 1234567 {
		t.Errorf("one value: %+v", l)
	}
	var empty histogram
	if l := empty.latency(); l != (Latency{}) {
		t.Errorf("empty: %+v", l)
	}
}

func TestRecorderCountsAndSeries(t *testing.T) {
	t0 := time.Unix(1000, 0)
	r := newRecorder(t0)
	r.record("put", t0.Add(100*time.Millisecond), time.Millisecond, "", true)
	r.record("put", t0.Add(200*time.Millisecond), 2*time.Millisecond, ClassUnavailable, true)
	r.record("get", t0.Add(300*time.Millisecond), 3*time.Millisecond, "", true)
	if n := r.record("txn", t0.Add(2500*time.Millisecond), 4*time.Millisecond, ClassUnexpected, false); n != 1 {
		t.Errorf("first unexpected error: record returned %d, want 1", n)
	}
	r.record("put", t0.Add(2600*time.Millisecond), time.Millisecond, classCutOff, true)
	s := r.snapshot(t0.Add(4 * time.Second))

	if s.Success != 2 || s.Failure != 2 || s.Canceled != 1 || s.Unexpected != 1 {
		t.Errorf("success %d failure %d canceled %d unexpected %d; want 2 2 1 1", s.Success, s.Failure, s.Canceled, s.Unexpected)
	}
	if s.Ops["put"] != (OpStats{1, 1}) || s.Ops["get"] != (OpStats{1, 0}) || s.Ops["txn"] != (OpStats{0, 1}) {
		t.Errorf("ops %+v", s.Ops)
	}
	if s.Errors[ClassUnavailable] != 1 || s.Errors[ClassUnexpected] != 1 || len(s.Errors) != 2 {
		t.Errorf("errors %+v", s.Errors)
	}
	if s.Duration != 4*time.Second || s.QPS != 1 {
		t.Errorf("duration %v qps %v; want 4s, 1", s.Duration, s.QPS)
	}
	// Seconds 1000..1003: the empty ones (1001, 1003) are there too.
	want := []SecondStat{
		{Unix: 1000, Success: 2, Failure: 1, P99: 3 * time.Millisecond, P50: 2031615, Errors: map[string]int64{ClassUnavailable: 1}},
		{Unix: 1001},
		{Unix: 1002, Failure: 1, P99: 4 * time.Millisecond, P50: 4 * time.Millisecond, Errors: map[string]int64{ClassUnexpected: 1}},
		{Unix: 1003},
	}
	if fmt.Sprint(s.Series) != fmt.Sprint(want) {
		t.Errorf("series %+v\nwant   %+v", s.Series, want)
	}
	// The snapshot started a new, empty interval.
	s2 := r.snapshot(t0.Add(4*time.Second + 10*time.Millisecond))
	if s2.Success+s2.Failure+s2.Canceled != 0 || len(s2.Series) != 0 || len(s2.Ops) != 0 {
		t.Errorf("second interval not empty: %+v", s2)
	}
	if _, err := json.Marshal(s); err != nil {
		t.Errorf("Stats do not marshal: %v", err)
	}
	if got, want := s.String(), "2 ok, 2 failed (1 unexpected), 1 canceled in 4s: 1.0 req/s, latency p50 2.032ms p99 4ms max 4ms"; got != want {
		t.Errorf("String() = %q\nwant       %q", got, want)
	}
}

// TestSeriesPercentilesAndErrorsPerSecond checks the per-second p50 and
// error classes that the HTML report plots.
func TestSeriesPercentilesAndErrorsPerSecond(t *testing.T) {
	t0 := time.Unix(2000, 0)
	r := newRecorder(t0)
	for i := 1; i <= 100; i++ {
		r.record("put", t0.Add(time.Duration(i)*time.Millisecond), time.Duration(i)*time.Millisecond, "", true)
	}
	r.record("put", t0.Add(1200*time.Millisecond), time.Second, ClassDeadline, true)
	r.record("put", t0.Add(1300*time.Millisecond), time.Second, ClassDeadline, true)
	r.record("get", t0.Add(1400*time.Millisecond), time.Second, ClassUnavailable, true)
	s := r.snapshot(t0.Add(2 * time.Second))
	if len(s.Series) != 2 {
		t.Fatalf("series %+v, want 2 seconds", s.Series)
	}
	first, second := s.Series[0], s.Series[1]
	if d := first.P50 - 50*time.Millisecond; d < 0 || d > 50*time.Millisecond/32 {
		t.Errorf("p50 of 1..100ms = %v, want 50ms within 1/32", first.P50)
	}
	if first.P99 < first.P50 || first.Errors != nil {
		t.Errorf("first second %+v: want p99 >= p50 and no errors", first)
	}
	if second.Errors[ClassDeadline] != 2 || second.Errors[ClassUnavailable] != 1 || len(second.Errors) != 2 || second.Failure != 3 {
		t.Errorf("second second errors %v, failures %d", second.Errors, second.Failure)
	}
	// Old results.json files, without the new fields, still decode.
	var old SecondStat
	if err := json.Unmarshal([]byte(`{"unix":1,"success":2,"failure":0,"p99_ns":3}`), &old); err != nil || old.P50 != 0 || old.Errors != nil {
		t.Errorf("old entry: %+v %v", old, err)
	}
}

// TestRecorderMemoryIsBounded records a long run's worth of requests and
// checks that the series stays within MaxSeries and nothing else grows.
func TestRecorderMemoryIsBounded(t *testing.T) {
	t0 := time.Unix(5000, 0)
	r := newRecorder(t0)
	const seconds = MaxSeries + 500
	for sec := 0; sec < seconds; sec++ {
		for i := 0; i < 20; i++ {
			end := t0.Add(time.Duration(sec)*time.Second + time.Duration(i)*time.Millisecond)
			r.record(keyOpNames[i%int(numKeyOps)], end, time.Duration(i+1)*time.Millisecond, "", true)
		}
		if len(r.series) > MaxSeries || cap(r.series) > 2*MaxSeries {
			t.Fatalf("series length %d, capacity %d after %d s", len(r.series), cap(r.series), sec)
		}
	}
	if len(r.ops) != int(numKeyOps) {
		t.Fatalf("%d op entries", len(r.ops))
	}
	// A long silence is bounded too.
	r.record("put", t0.Add(100*MaxSeries*time.Second), time.Millisecond, "", true)
	s := r.snapshot(t0.Add(100*MaxSeries*time.Second + time.Second))
	if len(s.Series) != MaxSeries {
		t.Fatalf("series has %d seconds, want %d", len(s.Series), MaxSeries)
	}
	if got := s.Series[len(s.Series)-1]; got.Unix != 5000+100*MaxSeries || got.Success != 1 {
		t.Errorf("last second %+v", got)
	}
	total := len(s.Series) + s.SeriesDropped
	if wantSecs := 100*MaxSeries + 1; total != wantSecs {
		t.Errorf("kept %d + dropped %d = %d seconds, want %d", len(s.Series), s.SeriesDropped, total, wantSecs)
	}
	if s.Success != seconds*20+1 || s.Latency.Count != s.Success {
		t.Errorf("success %d, latency count %d", s.Success, s.Latency.Count)
	}
}

func TestCompositeLifecycleWithoutCluster(t *testing.T) {
	cfg := validConfig()
	cfg.Names = []string{NameNop}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("Check before Stress: %v", err)
	}
	if st := s.Pause(); st.Success != 0 || !st.Start.IsZero() {
		t.Fatalf("Pause before Stress: %+v", st)
	}
	if err := s.Stress(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Stress(context.Background()); err == nil {
		t.Fatal("second Stress: no error")
	}
	if err := s.Check(context.Background()); err == nil {
		t.Fatal("Check while running: no error")
	}
	st := s.Pause()
	if st.Start.IsZero() || st.Success+st.Failure != 0 {
		t.Fatalf("nop Pause: %+v", st)
	}
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("Check while paused: %v", err)
	}
	s.Resume()
	s.Close()
	if err := s.Stress(context.Background()); err == nil {
		t.Fatal("Stress after Close: no error")
	}
	if err := s.Check(context.Background()); err == nil {
		t.Fatal("Check after Close: no error")
	}
	s.Close() // twice is harmless
}

// TestFinishCountsCutOffAsCanceled: an error of a request whose interval
// has ended (Pause, Close) is neither a failure nor logged; the same error
// while the interval runs is a failure of its class.
func TestFinishCountsCutOffAsCanceled(t *testing.T) {
	r := newRecorder(time.Now())
	live, stop := context.WithCancel(context.Background())
	r.finish(live, "put", "m0", time.Now(), context.DeadlineExceeded)
	r.finish(live, "get", "m0", time.Now(), nil)
	stop()
	r.finish(live, "put", "m0", time.Now(), context.Canceled)
	r.finish(live, "put", "m0", time.Now(), rpctypes.ErrLeaseNotFound)
	r.finishLease(context.Background(), "lease-put", "m0", time.Now(), rpctypes.ErrLeaseNotFound, true)
	r.finishLease(context.Background(), "lease-keepalive", "m0", time.Now(), rpctypes.ErrLeaseNotFound, false)
	s := r.snapshot(time.Now())
	if s.Canceled != 2 || s.Failure != 3 || s.Success != 1 {
		t.Fatalf("canceled %d failure %d success %d; want 2 3 1", s.Canceled, s.Failure, s.Success)
	}
	if s.Errors[ClassDeadline] != 1 || s.Errors[ClassLeaseNotFound] != 2 || s.Unexpected != 1 {
		t.Fatalf("errors %v, unexpected %d; want 1 deadline, 2 lease_not_found of which 1 unexpected", s.Errors, s.Unexpected)
	}
}

// logBuffer collects capnslog lines for a test.
type logBuffer struct{ lines []string }

func (b *logBuffer) Format(pkg string, _ capnslog.LogLevel, _ int, entries ...interface{}) {
	b.lines = append(b.lines, pkg+": "+fmt.Sprint(entries...))
}
func (b *logBuffer) Flush() {}

// TestUnexpectedErrorsAreLoggedBounded: an unexpected error is logged with
// its operation and member, expected ones are not, and a storm is thinned.
func TestUnexpectedErrorsAreLoggedBounded(t *testing.T) {
	var buf logBuffer
	capnslog.SetFormatter(&buf)
	defer capnslog.SetFormatter(logfmt.NewFormatter(os.Stderr))
	r := newRecorder(time.Now())
	ctx := context.Background()
	r.finish(ctx, "put", "http://127.0.0.1:1", time.Now(), rpctypes.ErrNoLeader)
	if len(buf.lines) != 0 {
		t.Fatalf("expected error logged: %q", buf.lines)
	}
	r.finish(ctx, "txn", "http://127.0.0.1:2", time.Now(), rpctypes.ErrDuplicateKey)
	if len(buf.lines) != 1 || !strings.Contains(buf.lines[0], "txn on http://127.0.0.1:2") ||
		!strings.Contains(buf.lines[0], rpctypes.ErrDuplicateKey.Error()) {
		t.Fatalf("unexpected error log: %q", buf.lines)
	}
	for i := 1; i < 3000; i++ {
		r.finish(ctx, "txn", "http://127.0.0.1:2", time.Now(), rpctypes.ErrDuplicateKey)
	}
	// 20 single lines, then one at the 1000th, 2000th and 3000th.
	if want := logFirstUnexpected + 3; len(buf.lines) != want {
		t.Fatalf("3000 unexpected errors gave %d log lines, want %d", len(buf.lines), want)
	}
	if s := r.snapshot(time.Now()); s.Unexpected != 3000 || s.Failure != 3001 {
		t.Fatalf("unexpected %d failure %d", s.Unexpected, s.Failure)
	}
}
