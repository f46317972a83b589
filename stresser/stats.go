package stresser

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"sync"
	"time"
)

// Stats describes the load of one interval: from Stress or Resume to Pause
// or Close. Its size does not depend on the number of requests.
type Stats struct {
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"duration_ns"`
	// Success and Failure count finished requests. A request cut off by
	// Pause or Close is neither: it is counted in Canceled.
	Success  int64 `json:"success"`
	Failure  int64 `json:"failure"`
	Canceled int64 `json:"canceled"`
	// Unexpected counts the failures outside the classes a fault explains
	// (see Classify); each was logged.
	Unexpected int64 `json:"unexpected"`
	// QPS is the achieved rate: (Success+Failure) / Duration.
	QPS float64 `json:"qps"`
	// Ops is keyed by operation name (put, get, txn, lease-grant, ...).
	Ops map[string]OpStats `json:"ops,omitempty"`
	// Errors counts failures by class (ClassDeadline, ...).
	Errors map[string]int64 `json:"errors,omitempty"`
	// Latency is over every finished request.
	Latency Latency `json:"latency"`
	// Series has one entry per second of the interval, oldest first, at
	// most MaxSeries; SeriesDropped says how many older seconds were cut.
	Series        []SecondStat `json:"series,omitempty"`
	SeriesDropped int          `json:"series_dropped,omitempty"`
}

// String summarises s on one line for logs.
func (s Stats) String() string {
	return fmt.Sprintf("%d ok, %d failed (%d unexpected), %d canceled in %v: %.1f req/s, latency p50 %v p99 %v max %v",
		s.Success, s.Failure, s.Unexpected, s.Canceled, s.Duration.Round(time.Millisecond), s.QPS,
		s.Latency.P50.Round(time.Microsecond), s.Latency.P99.Round(time.Microsecond), s.Latency.Max.Round(time.Microsecond))
}

// OpStats counts the outcomes of one kind of operation.
type OpStats struct {
	Success int64 `json:"success"`
	Failure int64 `json:"failure"`
}

// Latency summarises a latency distribution. Percentiles are accurate to
// about 3% (the histogram's bucket width); Max is exact.
type Latency struct {
	Count int64         `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P90   time.Duration `json:"p90_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

// SecondStat is one second of load, for plotting.
type SecondStat struct {
	Unix    int64         `json:"unix"` // the second, in Unix time
	Success int64         `json:"success"`
	Failure int64         `json:"failure"`
	P99     time.Duration `json:"p99_ns"`
	// P50 and Errors came after P99: readers of older results.json see
	// them zero and absent.
	P50 time.Duration `json:"p50_ns,omitempty"`
	// Errors counts the second's failures by class, as Stats.Errors.
	Errors map[string]int64 `json:"errors,omitempty"`
}

// MaxSeries bounds Stats.Series: one hour of seconds.
const MaxSeries = 3600

// histogram is a log-linear latency histogram: each power of two is split
// into 2^subBits equal buckets, so a bucket is at most 1/32 of its value
// wide. Values are nanoseconds, clamped to maxValue (about 18 minutes).
type histogram struct {
	counts [numBuckets]int64
	total  int64
	max    int64
}

const (
	subBits    = 5
	subCount   = 1 << subBits
	maxExp     = 40 // values up to 2^40 ns
	numBuckets = (maxExp - subBits + 1) * subCount
	maxValue   = 1<<maxExp - 1
)

func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	if v > maxValue {
		v = maxValue
	}
	if v < subCount {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - subBits // >= 1
	m := v >> (e - 1)                    // in [subCount, 2*subCount)
	return e*subCount + int(m-subCount)
}

// bucketUpper is the largest value that falls into bucket i.
func bucketUpper(i int) int64 {
	if i < subCount {
		return int64(i)
	}
	e, m := i/subCount, int64(i%subCount+subCount)
	return (m+1)<<(e-1) - 1
}

func (h *histogram) add(d time.Duration) {
	v := int64(d)
	h.counts[bucketOf(v)]++
	h.total++
	if v > h.max {
		h.max = v
	}
}

// quantile returns the upper bound of the bucket holding the q-th value
// (0 < q <= 1), capped at the exact maximum.
func (h *histogram) quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := int64(q*float64(h.total) + 0.999999)
	if rank < 1 {
		rank = 1
	}
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(bucketUpper(i), h.max))
		}
	}
	return time.Duration(h.max)
}

func (h *histogram) latency() Latency {
	return Latency{Count: h.total, P50: h.quantile(0.50), P90: h.quantile(0.90),
		P99: h.quantile(0.99), Max: time.Duration(h.max)}
}

func (h *histogram) reset() { *h = histogram{} }

// recorder collects the stats of the current interval from every worker.
// One mutex is enough: a request costs two orders of magnitude more than
// taking it (see BENCHMARK.md).
type recorder struct {
	mu         sync.Mutex
	start      time.Time
	ops        map[string]*OpStats
	errors     map[string]int64
	canceled   int64
	unexpected int64
	all        histogram
	// The current second, folded into series when time moves on.
	sec     int64
	secSucc int64
	secFail int64
	secErrs map[string]int64 // nil while the second has no failure
	secHist histogram
	series  []SecondStat
	dropped int
	// seen are the unexpected errors since the last Check, kept across
	// intervals (Check runs after Pause) and taken by takeUnexpected.
	seen unexpectedSeen
}

// unexpectedSeen counts unexpected errors by operation and error text: the
// first maxUnexpectedKinds kinds one by one, the rest together, so that a
// storm of distinct messages cannot grow it.
type unexpectedSeen struct {
	total int64
	kinds []unexpectedKind
	other int64 // errors of kinds past maxUnexpectedKinds
}

type unexpectedKind struct {
	op, err string
	n       int64
}

// maxUnexpectedKinds is how many kinds of unexpected error a failed Check
// names.
const maxUnexpectedKinds = 5

func (u *unexpectedSeen) add(op, msg string) {
	u.total++
	for i := range u.kinds {
		if k := &u.kinds[i]; k.op == op && k.err == msg {
			k.n++
			return
		}
	}
	if len(u.kinds) < maxUnexpectedKinds {
		u.kinds = append(u.kinds, unexpectedKind{op: op, err: msg, n: 1})
		return
	}
	u.other++
}

// err describes u as a check failure, nil if nothing unexpected happened.
func (u *unexpectedSeen) err() error {
	if u.total == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d unexpected errors (no fault explains them): ", u.total)
	for i, k := range u.kinds {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %s (%d×)", k.op, k.err, k.n)
	}
	if u.other > 0 {
		fmt.Fprintf(&b, "; and %d of other kinds", u.other)
	}
	return errors.New(b.String())
}

// takeUnexpected returns the unexpected errors since the last call as an
// error (nil if none) and forgets them.
func (r *recorder) takeUnexpected() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.seen.err()
	r.seen = unexpectedSeen{}
	return err
}

func newRecorder(now time.Time) *recorder {
	r := &recorder{}
	r.reset(now)
	return r
}

func (r *recorder) reset(now time.Time) {
	r.start = now
	r.ops = map[string]*OpStats{}
	r.errors = map[string]int64{}
	r.canceled, r.unexpected = 0, 0
	r.all.reset()
	r.sec, r.secSucc, r.secFail, r.secErrs = now.Unix(), 0, 0, nil
	r.secHist.reset()
	r.series = r.series[:0]
	r.dropped = 0
}

// finish classifies err and records a request of op that was sent to
// member at start and has just ended. ctx is the interval's: an error after
// it is done was caused by Pause or Close and counts as canceled.
func (r *recorder) finish(ctx context.Context, op, member string, start time.Time, err error) {
	r.finishLease(ctx, op, member, start, err, false)
}

// finishLease is finish for a request on a lease; mayBeGone says the lease
// may have expired on purpose (a short TTL), so that ErrLeaseNotFound is an
// expected error.
func (r *recorder) finishLease(ctx context.Context, op, member string, start time.Time, err error, mayBeGone bool) {
	end := time.Now()
	class, expected := "", true
	if err != nil {
		class, expected = Classify(err)
		if class == ClassLeaseNotFound && mayBeGone {
			expected = true
		}
		if ctx.Err() != nil {
			class, expected = classCutOff, true
		}
	}
	if n := r.record(op, end, end.Sub(start), class, expected); n > 0 {
		r.mu.Lock()
		r.seen.add(op, err.Error())
		r.mu.Unlock()
		switch {
		case n <= logFirstUnexpected:
			plog.Warningf("unexpected error: %s on %s after %v: %v", op, member, end.Sub(start), err)
		case n%logEveryUnexpected == 0:
			plog.Warningf("%d unexpected errors in this interval; latest: %s on %s: %v", n, op, member, err)
		}
	}
}

// classCutOff marks a request cut off by Pause or Close: it counts in
// Stats.Canceled, neither a success nor a failure.
const classCutOff = "cut off"

// The first logFirstUnexpected unexpected errors of an interval are logged,
// then every logEveryUnexpected-th, so that a storm cannot flood the log.
const (
	logFirstUnexpected = 20
	logEveryUnexpected = 1000
)

// record counts one finished request of op that took d and ended at end.
// class is "" for a success. It returns the number of unexpected errors
// in the interval so far if this was one, else 0.
func (r *recorder) record(op string, end time.Time, d time.Duration, class string, expected bool) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if class == classCutOff {
		r.canceled++
		return 0
	}
	r.advance(end.Unix())
	o := r.ops[op]
	if o == nil {
		o = &OpStats{}
		r.ops[op] = o
	}
	if class == "" {
		o.Success++
		r.secSucc++
	} else {
		o.Failure++
		r.secFail++
		r.errors[class]++
		if r.secErrs == nil {
			r.secErrs = map[string]int64{}
		}
		r.secErrs[class]++
	}
	r.all.add(d)
	r.secHist.add(d)
	if class != "" && !expected {
		r.unexpected++
		return r.unexpected
	}
	return 0
}

// advance closes the current second and any empty ones up to sec. A
// request that ends a little in the past (it took the lock late) counts in
// the current second.
func (r *recorder) advance(sec int64) {
	if sec <= r.sec {
		return
	}
	r.appendSecond(r.second())
	gap := sec - r.sec - 1
	if gap >= MaxSeries {
		// Nothing finished for over MaxSeries seconds: only the last
		// MaxSeries-1 empty seconds stay.
		r.dropped += int(gap) - (MaxSeries - 1)
		r.sec += gap - (MaxSeries - 1)
		gap = MaxSeries - 1
	}
	for s := r.sec + 1; s < sec; s++ {
		r.appendSecond(SecondStat{Unix: s})
	}
	r.sec, r.secSucc, r.secFail, r.secErrs = sec, 0, 0, nil
	r.secHist.reset()
}

// second is the current second's entry of the series.
func (r *recorder) second() SecondStat {
	return SecondStat{Unix: r.sec, Success: r.secSucc, Failure: r.secFail,
		P50: r.secHist.quantile(0.50), P99: r.secHist.quantile(0.99), Errors: r.secErrs}
}

func (r *recorder) appendSecond(s SecondStat) {
	if len(r.series) == MaxSeries {
		copy(r.series, r.series[1:])
		r.series = r.series[:MaxSeries-1]
		r.dropped++
	}
	r.series = append(r.series, s)
}

// snapshot returns the stats of the interval up to now and starts a new
// interval at now.
func (r *recorder) snapshot(now time.Time) Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Close the seconds before now's, then now's own if anything ended in it.
	r.advance(now.Unix())
	if r.secSucc+r.secFail > 0 {
		r.appendSecond(r.second())
	}
	s := Stats{
		Start:         r.start,
		Duration:      now.Sub(r.start),
		Canceled:      r.canceled,
		Unexpected:    r.unexpected,
		Ops:           make(map[string]OpStats, len(r.ops)),
		Errors:        make(map[string]int64, len(r.errors)),
		Latency:       r.all.latency(),
		Series:        append([]SecondStat(nil), r.series...),
		SeriesDropped: r.dropped,
	}
	for name, o := range r.ops {
		s.Ops[name] = *o
		s.Success += o.Success
		s.Failure += o.Failure
	}
	for c, n := range r.errors {
		s.Errors[c] = n
	}
	if secs := s.Duration.Seconds(); secs > 0 {
		s.QPS = float64(s.Success+s.Failure) / secs
	}
	r.reset(now)
	return s
}
