package stresser

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/coreos/pkg/capnslog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

var plog = capnslog.NewPackageLogger("github.com/etcd-functional/functional", "stresser")

// limiter is what the stressers need of *rate.Limiter.
type limiter interface {
	Wait(ctx context.Context) error
}

// newLimiter returns the limiter all stressers share. A burst of one means
// no more than one request ever goes ahead of the rate, not at the start
// and not after a pause; Wait reserves each request its own slot 1/qps
// after the previous one, so the rate stays exact however many workers
// wait.
func newLimiter(qps int) *rate.Limiter { return rate.NewLimiter(rate.Limit(qps), 1) }

// conns are the clients of one Stress..Close lifetime.
type conns struct {
	perEndpoint []*clientv3.Client // one per Config.Endpoints entry, pinned to it
	all         *clientv3.Client   // balanced over every endpoint
}

func dial(endpoints []string) (*conns, error) {
	c := &conns{}
	for _, ep := range endpoints {
		cli, err := newClient([]string{ep})
		if err != nil {
			c.close()
			return nil, fmt.Errorf("stresser: client for %s: %w", ep, err)
		}
		c.perEndpoint = append(c.perEndpoint, cli)
	}
	all, err := newClient(endpoints)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("stresser: client for %v: %w", endpoints, err)
	}
	c.all = all
	return c, nil
}

func newClient(endpoints []string) (*clientv3.Client, error) {
	// No DialTimeout: the dial does not block, so a member that is down
	// when the load starts costs failed requests, not a failed start.
	// Requests fail and are counted; the client's own log would only
	// repeat them.
	return clientv3.New(clientv3.Config{Endpoints: endpoints, Logger: zap.NewNop()})
}

func (c *conns) close() error {
	var errs []error
	for _, cli := range slices.Concat(c.perEndpoint, []*clientv3.Client{c.all}) {
		if cli == nil {
			continue
		}
		if err := cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// member is one stresser inside a Composite.
type member interface {
	name() string
	// run sends load until ctx is done and returns when all of its
	// goroutines have ended. interval numbers the Stress/Resume calls.
	run(ctx context.Context, c *conns, interval uint64)
	modifiedKeys() int64
	check(ctx context.Context, c *conns) error
}

// nopStresser puts no load: a run with it measures a quiet cluster.
type nopStresser struct{}

func (nopStresser) name() string                        { return NameNop }
func (nopStresser) run(context.Context, *conns, uint64) {}
func (nopStresser) modifiedKeys() int64                 { return 0 }
func (nopStresser) check(context.Context, *conns) error { return nil }

type state int

const (
	stateNew state = iota
	stateRunning
	statePaused
	stateClosed
)

// Composite runs the stressers named in a Config as one Stresser, with one
// rate limit and one set of Stats, and checks them all as one Checker.
type Composite struct {
	cfg     Config
	rec     *recorder
	members []member

	mu       sync.Mutex // serialises Stress, Pause, Resume, Close, Check
	state    state
	parent   context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	interval uint64
	conns    *conns
}

var (
	_ Stresser = (*Composite)(nil)
	_ Checker  = (*Composite)(nil)
)

// New validates cfg and returns the stressers it names, combined. Nothing
// connects or sends before Stress.
func New(cfg Config) (*Composite, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Endpoints = append([]string(nil), cfg.Endpoints...)
	lim := newLimiter(cfg.QPS)
	rec := newRecorder(time.Now())
	c := &Composite{cfg: cfg, rec: rec}
	for _, n := range cfg.Names {
		switch n {
		case NameKeys:
			c.members = append(c.members, newKeyStresser(cfg, lim, rec))
		case NameLease:
			c.members = append(c.members, newLeaseStresser(cfg, lim, rec))
		case NameNop:
			c.members = append(c.members, nopStresser{})
		case NameHistory:
			c.members = append(c.members, newHistoryStresser(cfg, rec))
		case NameElectionRunner:
			c.members = append(c.members, newElectionRunner(cfg))
		case NameLockRunner:
			c.members = append(c.members, newLockRunner(cfg))
		case NameLeaseRunner:
			c.members = append(c.members, newLeaseRunner(cfg))
		case NameWatchRunner:
			c.members = append(c.members, newWatchRunner(cfg))
		}
	}
	return c, nil
}

// Stress connects to the endpoints and starts the load; it returns at once.
// The load runs until Pause, Close or ctx is done. Stress may be called
// once; after Pause, Resume starts the load again.
func (c *Composite) Stress(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stateRunning, statePaused:
		return errors.New("stresser: Stress called twice; use Pause and Resume")
	case stateClosed:
		return errors.New("stresser: Stress after Close")
	}
	conns, err := dial(c.cfg.Endpoints)
	if err != nil {
		return err
	}
	c.conns, c.parent = conns, ctx
	c.start()
	plog.Infof("stressing %v at %d requests/s over %d endpoints", c.cfg.Names, c.cfg.QPS, len(c.cfg.Endpoints))
	return nil
}

// start begins an interval. c.mu held.
func (c *Composite) start() {
	ctx, cancel := context.WithCancel(c.parent)
	c.cancel = cancel
	c.interval++
	c.rec.mu.Lock()
	c.rec.reset(time.Now())
	c.rec.mu.Unlock()
	conns, interval := c.conns, c.interval
	for _, m := range c.members {
		c.wg.Go(func() { m.run(ctx, conns, interval) })
	}
	c.state = stateRunning
}

// stop ends the interval: it cancels requests in flight, which count as
// canceled, waits for every worker, and returns the interval's stats.
// c.mu held.
func (c *Composite) stop() Stats {
	c.cancel()
	c.wg.Wait()
	return c.rec.snapshot(time.Now())
}

// Pause stops the load, waiting for requests in flight to be cut off, and
// returns the stats of the interval since Stress or Resume. Nothing sent
// before Pause is counted after it. Pause when not running returns zero
// Stats.
func (c *Composite) Pause() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateRunning {
		return Stats{}
	}
	c.state = statePaused
	return c.stop()
}

// Resume starts the load again after Pause; otherwise it does nothing.
func (c *Composite) Resume() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == statePaused {
		c.start()
	}
}

// Close stops the load for good, closes the clients, and returns the stats
// of the running interval (zero Stats if paused: Pause returned them).
// Every goroutine of the Composite has ended when Close returns.
func (c *Composite) Close() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s Stats
	if c.state == stateRunning {
		s = c.stop()
	}
	if c.conns != nil {
		if err := c.conns.close(); err != nil {
			plog.Warningf("close clients: %v", err)
		}
		c.conns = nil
	}
	c.state = stateClosed
	return s
}

// ModifiedKeys is the number of keys written or deleted since New.
func (c *Composite) ModifiedKeys() int64 {
	var n int64
	for _, m := range c.members {
		n += m.modifiedKeys()
	}
	return n
}

// Check runs every stresser's check while the load is paused, and fails if
// any request since the last Check met an unexpected error (one no fault
// explains, see Classify): what clients saw is checked too, naming the
// operation and error of the first few kinds with their counts. Before
// Stress there is nothing to check.
func (c *Composite) Check(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stateNew:
		return nil
	case stateRunning:
		return errors.New("stresser: Check while the load runs; Pause first")
	case stateClosed:
		return errors.New("stresser: Check after Close")
	}
	var errs []error
	for _, m := range c.members {
		if err := m.check(ctx, c.conns); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.name(), err))
		}
	}
	if err := c.rec.takeUnexpected(); err != nil {
		errs = append(errs, fmt.Errorf("stresser: clients saw %w", err))
	}
	return errors.Join(errs...)
}
