package stresser

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// leasePrefix holds the keys attached to the lease stresser's leases:
// leasePrefix + <lease id in hex> + "/" + <n>.
const leasePrefix = "/stresser/lease/"

const (
	// maxTracked bounds the revoked and short-lived leases remembered for
	// the next Check; beyond it the oldest are forgotten unverified.
	maxTracked = 2048
	// defaultExpiryGrace is how long past its TTL Check waits for a short
	// lease to expire. A leader change extends every lease by about an
	// election timeout, so a few seconds are needed.
	defaultExpiryGrace = 5 * time.Second
	// checkAttempts and checkRetryWait bound the retries of one Check
	// query when the cluster answers with an error a fault explains.
	checkAttempts  = 5
	checkRetryWait = 500 * time.Millisecond
)

type leaseRecord struct {
	id      clientv3.LeaseID
	ttl     time.Duration
	granted time.Time // when the grant returned
	renewed time.Time // when the grant or the last keepalive returned
	keys    []string  // attached keys whose put succeeded
}

// overdue says the lease has gone a whole TTL without renewal, so etcd
// may rightly have expired it.
func (l *leaseRecord) overdue() bool { return time.Since(l.renewed) >= l.ttl }

func leaseKeyPrefix(id clientv3.LeaseID) string {
	return fmt.Sprintf("%s%016x/", leasePrefix, int64(id))
}

// leaseStresser keeps LeaseCount long leases alive with keys attached,
// revokes one at random every other round, and grants one short lease per
// round that it leaves to expire. A round runs every LeaseKeepAliveInterval.
type leaseStresser struct {
	cfg      Config
	lim      limiter
	rec      *recorder
	modified atomic.Int64
	// expiryGrace is defaultExpiryGrace; tests shorten it.
	expiryGrace time.Duration

	// mu guards the lease sets: run and Check never overlap (Composite
	// sees to that), but the sets are read by tests too.
	mu        sync.Mutex
	alive     map[clientv3.LeaseID]*leaseRecord
	revoked   []*leaseRecord
	short     []*leaseRecord
	forgotten int // revoked or short leases dropped by maxTracked since the last Check
	// lost are kept-alive leases etcd reported missing before they could
	// have expired, since the last Check; at most maxTracked.
	lost []lostLease
}

// lostLease is a kept-alive lease a keepalive found missing.
type lostLease struct {
	id      clientv3.LeaseID
	ttl     time.Duration
	renewed time.Duration // since the last renewal, when the keepalive was sent
}

func newLeaseStresser(cfg Config, lim limiter, rec *recorder) *leaseStresser {
	return &leaseStresser{cfg: cfg, lim: lim, rec: rec, expiryGrace: defaultExpiryGrace,
		alive: map[clientv3.LeaseID]*leaseRecord{}}
}

func (s *leaseStresser) name() string { return NameLease }

func (s *leaseStresser) modifiedKeys() int64 { return s.modified.Load() }

// member names where lease requests go in log lines: the client balances
// them over every endpoint.
const anyMember = "any member"

func (s *leaseStresser) run(ctx context.Context, c *conns, interval uint64) {
	rng := rand.New(rand.NewPCG(uint64(s.cfg.Seed), 1<<63|interval))
	tick := time.NewTicker(s.cfg.LeaseKeepAliveInterval)
	defer tick.Stop()
	for {
		s.round(ctx, c.all, rng)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *leaseStresser) aliveIDs() []clientv3.LeaseID {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]clientv3.LeaseID, 0, len(s.alive))
	for id := range s.alive {
		ids = append(ids, id)
	}
	slices.Sort(ids) // map order would make a seeded run unrepeatable
	return ids
}

func (s *leaseStresser) round(ctx context.Context, cli *clientv3.Client, rng *rand.Rand) {
	for _, id := range s.aliveIDs() {
		s.mu.Lock()
		l := s.alive[id]
		s.mu.Unlock()
		// A fault that kept every keepalive out for nearly a whole TTL
		// may rightly have let the lease expire (see lostEarly); an
		// earlier loss is etcd's fault, an unexpected error.
		var sent time.Time
		mayBeGone := func() bool { return !s.lostEarly(l, sent.Sub(l.renewed)) }
		err := s.call(ctx, "lease-keepalive", mayBeGone, func(rctx context.Context) error {
			sent = time.Now()
			_, err := cli.KeepAliveOnce(rctx, id)
			return err
		})
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			s.mu.Lock()
			l.renewed = time.Now()
			s.mu.Unlock()
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			// A lost lease cannot be kept alive: stop tracking it. Lost
			// before it could have expired, it is etcd's fault, and the
			// next Check says so.
			s.mu.Lock()
			delete(s.alive, id)
			if !mayBeGone() && len(s.lost) < maxTracked {
				s.lost = append(s.lost, lostLease{id: id, ttl: l.ttl, renewed: sent.Sub(l.renewed)})
			}
			s.mu.Unlock()
		}
	}
	for try := 0; try < s.cfg.LeaseCount && len(s.aliveIDs()) < s.cfg.LeaseCount; try++ {
		l := s.grantWithKeys(ctx, cli, s.cfg.LeaseTTL, false)
		if l != nil {
			s.mu.Lock()
			s.alive[l.id] = l
			s.mu.Unlock()
		}
		if ctx.Err() != nil {
			return
		}
	}
	if l := s.grantWithKeys(ctx, cli, s.cfg.ShortLeaseTTL, true); l != nil {
		s.mu.Lock()
		s.short = s.track(s.short, l)
		s.mu.Unlock()
	}
	if ctx.Err() != nil {
		return
	}
	if ids := s.aliveIDs(); len(ids) > 0 && rng.IntN(2) == 0 {
		id := ids[rng.IntN(len(ids))]
		err := s.call(ctx, "lease-revoke", nil, func(rctx context.Context) error {
			_, err := cli.Revoke(rctx, id)
			return err
		})
		s.mu.Lock()
		if l := s.alive[id]; l != nil {
			// After an error the lease may or may not be revoked: track it
			// neither as alive nor as revoked.
			delete(s.alive, id)
			if err == nil {
				s.revoked = s.track(s.revoked, l)
			}
		}
		s.mu.Unlock()
	}
}

// lostEarly says that a keepalive sent since after l's last renewal
// should have found l alive. The renewal that returned at l.renewed was
// applied at most RequestTimeout before, so etcd keeps l at least until
// l.renewed - RequestTimeout + TTL; the new keepalive is answered at most
// RequestTimeout after it was sent. A keepalive sent earlier than
// TTL - 2*RequestTimeout after the renewal must therefore find the lease.
func (s *leaseStresser) lostEarly(l *leaseRecord, since time.Duration) bool {
	return since < l.ttl-2*s.cfg.RequestTimeout
}

// track appends l to list, forgetting the oldest past maxTracked. s.mu held.
func (s *leaseStresser) track(list []*leaseRecord, l *leaseRecord) []*leaseRecord {
	if len(list) >= maxTracked {
		list = slices.Delete(list, 0, 1)
		s.forgotten++
	}
	return append(list, l)
}

// grantWithKeys grants a lease and attaches KeysPerLease keys to it. It
// returns nil if the grant failed; keys whose put failed are left out.
func (s *leaseStresser) grantWithKeys(ctx context.Context, cli *clientv3.Client, ttl time.Duration, short bool) *leaseRecord {
	var resp *clientv3.LeaseGrantResponse
	err := s.call(ctx, "lease-grant", nil, func(rctx context.Context) error {
		var err error
		resp, err = cli.Grant(rctx, int64(ttl/time.Second))
		return err
	})
	if err != nil {
		return nil
	}
	now := time.Now()
	l := &leaseRecord{id: resp.ID, ttl: ttl, granted: now, renewed: now}
	prefix := leaseKeyPrefix(resp.ID)
	for i := 0; i < s.cfg.KeysPerLease && ctx.Err() == nil; i++ {
		k := fmt.Sprintf("%s%d", prefix, i)
		err := s.call(ctx, "lease-put", func() bool { return short }, func(rctx context.Context) error {
			_, err := cli.Put(rctx, k, "lease", clientv3.WithLease(resp.ID))
			return err
		})
		if err == nil {
			l.keys = append(l.keys, k)
			s.modified.Add(1)
		}
	}
	return l
}

// call waits for the limiter, runs one request with the request timeout
// and records it. mayBeGone, if not nil, says once the request is done
// whether the lease may rightly be gone (ErrLeaseNotFound then counts as
// expected). It returns the request's error, or ctx's if it never ran.
func (s *leaseStresser) call(ctx context.Context, op string, mayBeGone func() bool, f func(context.Context) error) error {
	if err := s.lim.Wait(ctx); err != nil {
		return fmt.Errorf("stresser: %s: %w", op, err)
	}
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	err := f(rctx)
	cancel()
	s.rec.finishLease(ctx, op, anyMember, start, err, mayBeGone != nil && mayBeGone())
	return err
}

// check verifies that every live lease is alive with its keys, every
// revoked lease is gone with its keys, and every short lease has expired
// with its keys, as the leader answers; that no kept-alive lease was
// reported missing before it could have expired; and that every member's
// own lease table (LeaseLeases is answered from the member's local state,
// not the leader's) agrees on the leases so verified. Verified revoked and
// short leases, and reported lost ones, are then forgotten.
func (s *leaseStresser) check(ctx context.Context, c *conns) error {
	s.mu.Lock()
	alive := make([]*leaseRecord, 0, len(s.alive))
	for _, l := range s.alive {
		alive = append(alive, l)
	}
	revoked := slices.Clone(s.revoked)
	short := slices.Clone(s.short)
	forgotten := s.forgotten
	lost := s.lost
	s.lost = nil
	s.mu.Unlock()
	if forgotten > 0 {
		plog.Warningf("lease check: %d revoked or short leases were forgotten unverified (more than %d since the last check)", forgotten, maxTracked)
	}
	slices.SortFunc(alive, func(a, b *leaseRecord) int { return cmp.Compare(a.id, b.id) })

	cli := c.all
	var errs []error
	for _, l := range lost {
		errs = append(errs, fmt.Errorf("lease %016x: kept alive, but a keepalive %v after its last renewal (TTL %v) found it gone",
			int64(l.id), l.renewed.Round(time.Millisecond), l.ttl))
	}
	var wantAlive, wantGone []clientv3.LeaseID
	for _, l := range alive {
		if l.overdue() {
			plog.Noticef("lease check: lease %016x not renewed for %v (TTL %v): may rightly have expired, not checked",
				int64(l.id), time.Since(l.renewed).Round(time.Second), l.ttl)
			continue
		}
		if err := s.checkAlive(ctx, cli, l); err != nil {
			errs = append(errs, err)
			continue
		}
		wantAlive = append(wantAlive, l.id)
	}
	for _, l := range revoked {
		if err := s.checkGone(ctx, cli, l, "revoked", time.Time{}); err != nil {
			errs = append(errs, err)
			continue
		}
		wantGone = append(wantGone, l.id)
	}
	now := time.Now()
	for _, l := range short {
		// A short lease may have been granted just before Pause, and a
		// leader change renews every lease: allow a full TTL plus grace
		// from the start of the check.
		deadline := now.Add(l.ttl + s.expiryGrace)
		if err := s.checkGone(ctx, cli, l, "short-TTL", deadline); err != nil {
			errs = append(errs, err)
			continue
		}
		wantGone = append(wantGone, l.id)
	}
	if ctx.Err() == nil {
		if err := s.checkMembers(ctx, c, wantAlive, wantGone); err != nil {
			errs = append(errs, err)
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stresser: lease check: %w", ctx.Err())
	}
	if len(errs) > 0 {
		return fmt.Errorf("stresser: lease check: %d of %d leases wrong: %w",
			len(errs), len(alive)+len(revoked)+len(short)+len(lost), errors.Join(errs...))
	}
	s.mu.Lock()
	s.revoked = slices.DeleteFunc(s.revoked, func(l *leaseRecord) bool { return slices.Contains(revoked, l) })
	s.short = slices.DeleteFunc(s.short, func(l *leaseRecord) bool { return slices.Contains(short, l) })
	s.forgotten = 0
	s.mu.Unlock()
	return nil
}

// memberLeases is one member's own list of leases.
type memberLeases struct {
	member string
	ids    map[clientv3.LeaseID]bool
	err    error // the list could not be had
}

// checkMembers asks every member for its own lease table and compares it
// with what the leader confirmed: every lease in alive listed, none in
// gone. A member applies a revoke a little after the leader does, so a
// disagreement is asked again, checkAttempts times checkRetryWait apart,
// before it fails the check: a member that stays wrong (a follower restored
// from a snapshot with a wrong lease table) is a real divergence.
func (s *leaseStresser) checkMembers(ctx context.Context, c *conns, alive, gone []clientv3.LeaseID) error {
	var err error
	for try := 0; try < checkAttempts; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return errors.Join(err, ctx.Err())
			case <-time.After(checkRetryWait):
			}
		}
		views := make([]memberLeases, len(c.perEndpoint))
		for i, cli := range c.perEndpoint {
			views[i] = listLeases(ctx, s.cfg.Endpoints[i], cli)
		}
		if err = compareLeaseViews(views, alive, gone); err == nil {
			return nil
		}
	}
	return err
}

// listLeases is one member's LeaseLeases, over a connection to it alone.
func listLeases(ctx context.Context, member string, cli *clientv3.Client) memberLeases {
	v := memberLeases{member: member}
	var resp *clientv3.LeaseLeasesResponse
	v.err = retry(ctx, func(rctx context.Context) error {
		var err error
		resp, err = cli.Leases(rctx)
		return err
	})
	if v.err == nil {
		v.ids = make(map[clientv3.LeaseID]bool, len(resp.Leases))
		for _, l := range resp.Leases {
			v.ids[l.ID] = true
		}
	}
	return v
}

// compareLeaseViews returns an error naming every member whose own lease
// table misses a lease of alive or holds one of gone, or that could not
// list its leases.
func compareLeaseViews(views []memberLeases, alive, gone []clientv3.LeaseID) error {
	var errs []error
	for _, v := range views {
		if v.err != nil {
			errs = append(errs, fmt.Errorf("member %s: list its leases: %w", v.member, v.err))
			continue
		}
		var missing, extra []string
		for _, id := range alive {
			if !v.ids[id] {
				missing = append(missing, fmt.Sprintf("%016x", int64(id)))
			}
		}
		for _, id := range gone {
			if v.ids[id] {
				extra = append(extra, fmt.Sprintf("%016x", int64(id)))
			}
		}
		if len(missing) > 0 {
			errs = append(errs, fmt.Errorf("member %s: its own lease table lacks %d leases the leader has alive: %s",
				v.member, len(missing), firstFew(missing)))
		}
		if len(extra) > 0 {
			errs = append(errs, fmt.Errorf("member %s: its own lease table still holds %d leases the leader has gone: %s",
				v.member, len(extra), firstFew(extra)))
		}
	}
	return errors.Join(errs...)
}

// firstFew joins up to five of ids, saying how many more there are.
func firstFew(ids []string) string {
	const few = 5
	if len(ids) <= few {
		return strings.Join(ids, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ids[:few], ", "), len(ids)-few)
}

func (s *leaseStresser) checkAlive(ctx context.Context, cli *clientv3.Client, l *leaseRecord) error {
	ttl, err := s.timeToLive(ctx, cli, l.id)
	if err != nil {
		return err
	}
	if ttl <= 0 {
		return fmt.Errorf("lease %016x: kept alive, but etcd says it is gone (TTL %d)", int64(l.id), ttl)
	}
	var resp *clientv3.GetResponse
	err = retry(ctx, func(rctx context.Context) error {
		var err error
		resp, err = cli.Get(rctx, leaseKeyPrefix(l.id), clientv3.WithPrefix())
		return err
	})
	if err != nil {
		return fmt.Errorf("lease %016x: get its keys: %w", int64(l.id), err)
	}
	have := map[string]int64{}
	for _, kv := range resp.Kvs {
		have[string(kv.Key)] = kv.Lease
	}
	for _, k := range l.keys {
		lease, ok := have[k]
		switch {
		case !ok:
			return fmt.Errorf("lease %016x: alive, but its key %s is gone", int64(l.id), k)
		case lease != int64(l.id):
			return fmt.Errorf("lease %016x: key %s is attached to lease %016x instead", int64(l.id), k, lease)
		}
	}
	return nil
}

// checkGone verifies that l does not exist and has no keys, polling until
// deadline (zero: no waiting) for it to expire.
func (s *leaseStresser) checkGone(ctx context.Context, cli *clientv3.Client, l *leaseRecord, what string, deadline time.Time) error {
	for {
		ttl, err := s.timeToLive(ctx, cli, l.id)
		if err != nil {
			return err
		}
		if ttl < 0 {
			break
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s lease %016x: still alive (TTL %ds)", what, int64(l.id), ttl)
		}
		wait := min(time.Until(deadline), 250*time.Millisecond)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s lease %016x: waiting for expiry: %w", what, int64(l.id), ctx.Err())
		case <-time.After(wait):
		}
	}
	var resp *clientv3.GetResponse
	err := retry(ctx, func(rctx context.Context) error {
		var err error
		resp, err = cli.Get(rctx, leaseKeyPrefix(l.id), clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err
	})
	if err != nil {
		return fmt.Errorf("%s lease %016x: count its keys: %w", what, int64(l.id), err)
	}
	if resp.Count != 0 {
		return fmt.Errorf("%s lease %016x: gone, but %d of its keys remain", what, int64(l.id), resp.Count)
	}
	return nil
}

// timeToLive returns the lease's remaining TTL in seconds, -1 if etcd
// does not know it.
func (s *leaseStresser) timeToLive(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) (int64, error) {
	var ttl int64
	err := retry(ctx, func(rctx context.Context) error {
		resp, err := cli.TimeToLive(rctx, id)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			ttl = -1
			return nil
		}
		if err != nil {
			return err
		}
		ttl = resp.TTL
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("lease %016x: time to live: %w", int64(id), err)
	}
	return ttl, nil
}

// retry runs a check query with a timeout, again after an error a fault
// explains, at most checkAttempts times.
func retry(ctx context.Context, f func(context.Context) error) error {
	var err error
	for try := 0; try < checkAttempts; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return errors.Join(err, ctx.Err())
			case <-time.After(checkRetryWait):
			}
		}
		rctx, cancel := context.WithTimeout(ctx, checkRequestTimeout)
		err = f(rctx)
		cancel()
		if err == nil {
			return nil
		}
		if _, expected := Classify(err); !expected || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// checkRequestTimeout bounds one query of Check; the cluster is meant to be
// healthy by then.
const checkRequestTimeout = 5 * time.Second
