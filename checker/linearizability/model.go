package linearizability

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"

	"github.com/etcd-functional/functional/history"
)

// state is one state etcd's key-value store may be in, as far as the
// recorded keys go. States are immutable once built: a step copies.
//
// Other clients (the bulk stressers) write other keys of the same store,
// so the global revision moves on between recorded operations without a
// record: rev is the highest revision the recorded operations imply, and
// the next write must take a higher one, the next read at least this one.
type state struct {
	rev    int64
	kvs    []kv    // sorted by key
	leases []int64 // sorted; the leases known to exist
	// gone are the leases most recently revoked, at most maxGone, oldest
	// first. A lease in neither list may exist: the snapshot cannot show
	// a lease without keys. Forgetting a revoked lease only makes the
	// model more lenient.
	gone []int64
}

const maxGone = 16

// kv is one key of a state. A write whose outcome is unknown took effect at
// a revision nobody was told: its mod revision is then 0 and lies in
// [lo, hi] (hi 0: no upper bound yet) until a read shows it.
type kv struct {
	key, value  string
	mod, create int64 // 0: unknown, see lo and hi
	createIsMod bool  // the unknown write created the key: create == mod
	lo, hi      int64
	version     int64
	lease       int64
}

func (s *state) clone() *state {
	return &state{rev: s.rev, kvs: slices.Clone(s.kvs), leases: slices.Clone(s.leases), gone: slices.Clone(s.gone)}
}

func (s *state) find(key string) (int, bool) {
	return slices.BinarySearchFunc(s.kvs, key, func(k kv, key string) int { return strings.Compare(k.key, key) })
}

func (s *state) hasLease(id int64) bool {
	_, ok := slices.BinarySearch(s.leases, id)
	return ok
}

func (s *state) leaseGone(id int64) bool { return slices.Contains(s.gone, id) }

// addLease records that lease id exists.
func (s *state) addLease(id int64) {
	if i, ok := slices.BinarySearch(s.leases, id); !ok {
		s.leases = slices.Insert(s.leases, i, id)
	}
}

func inRange(key, from, end string) bool {
	if end == "" {
		return key == from
	}
	return key >= from && key < end
}

func (s *state) rangeIdx(from, end string) []int {
	var idx []int
	for i, k := range s.kvs {
		if inRange(k.key, from, end) {
			idx = append(idx, i)
		}
	}
	return idx
}

func equalStates(a, b *state) bool {
	return a.rev == b.rev && slices.Equal(a.kvs, b.kvs) && slices.Equal(a.leases, b.leases) && slices.Equal(a.gone, b.gone)
}

// seed makes hashState's hashes the same in every check of a process.
var seed = maphash.MakeSeed()

func hashState(s *state) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	var buf [8]byte
	num := func(v int64) {
		binary.LittleEndian.PutUint64(buf[:], uint64(v))
		h.Write(buf[:])
	}
	num(s.rev)
	for _, k := range s.kvs {
		h.WriteString(k.key)
		h.WriteByte(0)
		h.WriteString(k.value)
		h.WriteByte(0)
		num(k.mod)
		num(k.create)
		num(k.version)
		num(k.lease)
		num(k.lo)
		num(k.hi)
	}
	for _, l := range s.leases {
		num(l)
	}
	num(-1)
	for _, l := range s.gone {
		num(l)
	}
	return h.Sum64()
}

func (s *state) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rev>=%d", s.rev)
	for _, k := range s.kvs {
		fmt.Fprintf(&b, " %q=%q(mod=%s ver=%d", k.key, k.value, k.modString(), k.version)
		if k.lease != 0 {
			fmt.Fprintf(&b, " lease=%x", k.lease)
		}
		b.WriteString(")")
	}
	if len(s.leases) > 0 {
		fmt.Fprintf(&b, " leases=%x", s.leases)
	}
	if len(s.gone) > 0 {
		fmt.Fprintf(&b, " revoked=%x", s.gone)
	}
	return b.String()
}

func (k kv) modString() string {
	if k.mod != 0 {
		return fmt.Sprint(k.mod)
	}
	if k.hi == 0 {
		return fmt.Sprintf("?>=%d", k.lo)
	}
	return fmt.Sprintf("?in[%d,%d]", k.lo, k.hi)
}

// bound narrows the unknown mod revisions: every write applied so far took
// a revision at most hi.
func (s *state) bound(hi int64) {
	for i := range s.kvs {
		k := &s.kvs[i]
		if k.mod == 0 && (k.hi == 0 || hi < k.hi) {
			k.hi = hi
		}
	}
}

// fix learns from a response that key k's mod (and create) revision is
// mod; it returns false if mod cannot be.
func (k *kv) fix(mod, create int64) bool {
	if k.mod != 0 {
		return k.mod == mod && (k.create == 0 || k.create == create)
	}
	if mod < k.lo || (k.hi != 0 && mod > k.hi) {
		return false
	}
	if k.createIsMod && create != mod {
		return false
	}
	k.mod, k.lo, k.hi = mod, 0, 0
	if k.createIsMod {
		k.create, k.createIsMod = mod, false
	}
	return true
}

// matchKV compares what a response showed of a key with the model's kv,
// learning unknown revisions into k. It returns why they differ, or "".
func matchKV(k *kv, got history.KV) string {
	switch {
	case got.Value != k.value:
		return fmt.Sprintf("%q has value %q, want %q", got.Key, got.Value, k.value)
	case got.Version != k.version:
		return fmt.Sprintf("%q has version %d, want %d", got.Key, got.Version, k.version)
	case got.Lease != k.lease:
		return fmt.Sprintf("%q has lease %x, want %x", got.Key, got.Lease, k.lease)
	case k.create != 0 && got.CreateRevision != k.create:
		return fmt.Sprintf("%q has create revision %d, want %d", got.Key, got.CreateRevision, k.create)
	case !k.fix(got.ModRevision, got.CreateRevision):
		return fmt.Sprintf("%q has mod revision %d, want %s", got.Key, got.ModRevision, k.modString())
	}
	return ""
}

// snapshotState is the state a successful snapshot read shows.
func snapshotState(resp *history.Response) *state {
	s := &state{rev: resp.Revision}
	for _, g := range resp.KVs {
		s.kvs = append(s.kvs, kv{key: g.Key, value: g.Value, mod: g.ModRevision, create: g.CreateRevision,
			version: g.Version, lease: g.Lease})
		if g.Lease != 0 {
			s.addLease(g.Lease)
		}
	}
	slices.SortFunc(s.kvs, func(a, b kv) int { return strings.Compare(a.key, b.key) })
	return s
}

// step returns the states s may move to by req answered by resp; resp nil
// means the outcome is unknown: the request took effect or did not. With
// no state to move to it returns why.
func step(s *state, req history.Request, resp *history.Response) ([]*state, string) {
	if resp == nil {
		out := []*state{s}
		for _, n := range applyUnknown(s, req) {
			if !equalStates(n, s) {
				out = append(out, n)
			}
		}
		return out, ""
	}
	n, why := applyKnown(s, req, resp)
	if why != "" {
		return nil, why
	}
	return []*state{n}, ""
}

// txnExec carries out the operations of a request on a copy of a state.
type txnExec struct {
	s *state
	// rev is the revision writes take; with unknown set, it is the least
	// revision they can have taken and their mod revisions stay unknown.
	rev     int64
	unknown bool
	wrote   bool
}

func (e *txnExec) put(key, value string, lease int64) string {
	if lease != 0 {
		if e.s.leaseGone(lease) {
			return fmt.Sprintf("put to %q with lease %x, which was revoked", key, lease)
		}
		e.s.addLease(lease)
	}
	n := kv{key: key, value: value, mod: e.rev, lease: lease, version: 1, create: e.rev}
	if e.unknown {
		n.mod, n.create, n.lo, n.createIsMod = 0, 0, e.rev, true
	}
	i, ok := e.s.find(key)
	if ok {
		old := e.s.kvs[i]
		n.version = old.version + 1
		// The create revision stays; if an unknown write created the
		// key it stays unknown (0, unchecked) for good: it can no
		// longer be learnt from a mod revision.
		n.create, n.createIsMod = old.create, false
		e.s.kvs[i] = n
	} else {
		e.s.kvs = slices.Insert(e.s.kvs, i, n)
	}
	e.wrote = true
	return ""
}

func (e *txnExec) del(from, end string) int64 {
	idx := e.s.rangeIdx(from, end)
	if len(idx) == 0 {
		return 0
	}
	e.s.kvs = slices.Delete(e.s.kvs, idx[0], idx[len(idx)-1]+1) // a range is contiguous in a sorted slice
	e.wrote = true
	return int64(len(idx))
}

// get checks a read inside a txn (or a plain read, at the latest
// revision) against the state; got nil skips the check.
func (e *txnExec) get(from, end string, got *history.Response) string {
	idx := e.s.rangeIdx(from, end)
	if got == nil {
		return ""
	}
	if got.Count != int64(len(idx)) || len(got.KVs) != len(idx) {
		var want []string
		for _, i := range idx {
			want = append(want, fmt.Sprintf("%q", e.s.kvs[i].key))
		}
		what := fmt.Sprintf("range [%q, %q)", from, end)
		if end == "" {
			what = fmt.Sprintf("key %q", from)
		}
		return fmt.Sprintf("%s has %d keys (count %d), want %d: [%s]", what, len(got.KVs), got.Count, len(idx), strings.Join(want, " "))
	}
	for j, i := range idx {
		k := &e.s.kvs[i]
		if got.KVs[j].Key != k.key {
			return fmt.Sprintf("range shows key %q where the model has %q", got.KVs[j].Key, k.key)
		}
		if why := matchKV(k, got.KVs[j]); why != "" {
			return why
		}
	}
	return ""
}

// compare evaluates c: 1 holds, 0 does not, -1 cannot tell (an unknown
// revision).
func (s *state) compare(c history.Compare) int {
	i, ok := s.find(c.Key)
	var k kv
	if ok {
		k = s.kvs[i]
	}
	if c.Target == history.TargetValue {
		if !ok {
			// etcd: a value compare on a missing key fails.
			return 0
		}
		return b2i(cmpOp(strings.Compare(k.value, c.Value), c.Op))
	}
	var v int64
	switch c.Target {
	case history.TargetVer:
		v = k.version
	case history.TargetMod:
		v = k.mod
		if ok && k.mod == 0 {
			return -1
		}
	case history.TargetCreate:
		v = k.create
		if ok && k.create == 0 {
			return -1
		}
	}
	return b2i(cmpOp(cmp.Compare(v, c.Number), c.Op))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func cmpOp(r int, op string) bool {
	switch op {
	case "=", "==":
		return r == 0
	case "!=":
		return r != 0
	case "<":
		return r < 0
	case ">":
		return r > 0
	}
	return false
}

// applyKnown applies req, which was answered by resp, to s.
func applyKnown(s *state, req history.Request, resp *history.Response) (*state, string) {
	R := resp.Revision
	if R < s.rev {
		return nil, fmt.Sprintf("header revision %d is below revision %d the model has already reached", R, s.rev)
	}
	e := &txnExec{s: s.clone(), rev: R}
	switch req.Kind {
	case history.Get:
		if req.Revision > 0 && req.Revision < R {
			if why := e.s.getAt(req, resp); why != "" {
				return nil, why
			}
		} else {
			if req.Revision > R {
				return nil, fmt.Sprintf("read at revision %d succeeded with header revision %d (a future revision)", req.Revision, R)
			}
			if why := e.get(req.Key, req.End, resp); why != "" {
				return nil, why
			}
		}
	case history.Put:
		if why := e.put(req.Key, req.Value, req.Lease); why != "" {
			return nil, why
		}
	case history.Delete:
		if n := e.del(req.Key, req.End); n != resp.Deleted {
			return nil, fmt.Sprintf("deleted %d keys, want %d", resp.Deleted, n)
		}
	case history.Txn:
		ok := 1
		for _, c := range req.Compares {
			switch r := e.s.compare(c); {
			case r == 0:
				ok = 0
			case r < 0 && ok == 1:
				ok = -1
			}
			if ok == 0 {
				break
			}
		}
		switch {
		case ok == 1 && !resp.Succeeded:
			return nil, "txn failed, but its compares hold in the model"
		case ok == 0 && resp.Succeeded:
			return nil, "txn succeeded, but its compares do not hold in the model"
		case ok < 0 && resp.Succeeded:
			// Learn what an equality on an unknown revision says.
			for _, c := range req.Compares {
				if i, found := e.s.find(c.Key); found && c.Op == "=" && e.s.kvs[i].mod == 0 && c.Target == history.TargetMod {
					k := &e.s.kvs[i]
					if !k.fix(c.Number, k.create) {
						return nil, fmt.Sprintf("txn succeeded on %s, but the model has mod revision %s", c, k.modString())
					}
				}
			}
		}
		branch := req.Else
		if resp.Succeeded {
			branch = req.Then
		}
		if len(resp.Results) != len(branch) {
			return nil, fmt.Sprintf("txn answered %d results for a branch of %d operations", len(resp.Results), len(branch))
		}
		for i, o := range branch {
			if why := e.txnOp(o, &resp.Results[i]); why != "" {
				return nil, fmt.Sprintf("txn operation %d (%s): %s", i, o, why)
			}
		}
	case history.LeaseGrant:
		if resp.Lease == 0 || e.s.hasLease(resp.Lease) || e.s.leaseGone(resp.Lease) {
			return nil, fmt.Sprintf("granted lease %x, which already exists or was revoked", resp.Lease)
		}
		e.s.addLease(resp.Lease)
	case history.LeaseRevoke:
		if e.s.leaseGone(req.Lease) {
			return nil, fmt.Sprintf("revoked lease %x, which was already revoked", req.Lease)
		}
		e.revoke(req.Lease)
	default:
		return nil, fmt.Sprintf("unknown request kind %q", req.Kind)
	}
	if e.wrote {
		if R <= s.rev {
			return nil, fmt.Sprintf("write at header revision %d, not above revision %d the model has already reached", R, s.rev)
		}
		e.s.bound(R - 1)
	} else {
		e.s.bound(R)
	}
	e.s.rev = R
	return e.s, ""
}

func (e *txnExec) txnOp(o history.Request, got *history.Response) string {
	switch o.Kind {
	case history.Get:
		return e.get(o.Key, o.End, got)
	case history.Put:
		return e.put(o.Key, o.Value, o.Lease)
	case history.Delete:
		if n := e.del(o.Key, o.End); got != nil && n != got.Deleted {
			return fmt.Sprintf("deleted %d keys, want %d", got.Deleted, n)
		}
	}
	return ""
}

func (e *txnExec) revoke(lease int64) {
	if i, ok := slices.BinarySearch(e.s.leases, lease); ok {
		e.s.leases = slices.Delete(e.s.leases, i, i+1)
	}
	if len(e.s.gone) == maxGone {
		e.s.gone = slices.Delete(e.s.gone, 0, 1)
	}
	e.s.gone = append(e.s.gone, lease)
	kept := e.s.kvs[:0]
	for _, k := range e.s.kvs {
		if k.lease == lease {
			e.wrote = true
			continue
		}
		kept = append(kept, k)
	}
	e.s.kvs = kept
}

// getAt checks a read at a past revision at, answered by resp. The model
// keeps no past, but a key whose current mod revision is at or below at
// held the same then, and nothing read can be newer than at.
func (s *state) getAt(req history.Request, resp *history.Response) string {
	shown := map[string]history.KV{}
	for _, g := range resp.KVs {
		if g.ModRevision > req.Revision {
			return fmt.Sprintf("read at revision %d shows %q with mod revision %d", req.Revision, g.Key, g.ModRevision)
		}
		shown[g.Key] = g
	}
	for _, i := range s.rangeIdx(req.Key, req.End) {
		k := s.kvs[i]
		if k.mod == 0 || k.mod > req.Revision {
			continue
		}
		g, ok := shown[k.key]
		if !ok {
			return fmt.Sprintf("read at revision %d misses %q, which has been %q since revision %d", req.Revision, k.key, k.value, k.mod)
		}
		if why := matchKV(&k, g); why != "" {
			return fmt.Sprintf("read at revision %d: %s", req.Revision, why)
		}
	}
	return ""
}

// applyUnknown returns the states s moves to if req, whose outcome is
// unknown, took effect (a txn whose compares the model cannot decide may
// have taken either branch).
func applyUnknown(s *state, req history.Request) []*state {
	if !req.Writes() {
		return nil
	}
	e := &txnExec{s: s.clone(), rev: s.rev + 1, unknown: true}
	switch req.Kind {
	case history.Put:
		if e.put(req.Key, req.Value, req.Lease) != "" {
			return nil // the put failed for want of its lease
		}
	case history.Delete:
		e.del(req.Key, req.End)
	case history.LeaseRevoke:
		if e.s.leaseGone(req.Lease) {
			return nil
		}
		e.revoke(req.Lease)
	case history.Txn:
		ok := 1
		for _, c := range req.Compares {
			switch r := s.compare(c); {
			case r == 0:
				ok = 0
			case r < 0 && ok == 1:
				ok = -1
			}
		}
		var out []*state
		if ok != 0 {
			out = append(out, unknownBranch(s, req.Then)...)
		}
		if ok != 1 {
			out = append(out, unknownBranch(s, req.Else)...)
		}
		return out
	}
	if !e.wrote {
		return nil
	}
	e.s.rev++
	return []*state{e.s}
}

func unknownBranch(s *state, ops []history.Request) []*state {
	e := &txnExec{s: s.clone(), rev: s.rev + 1, unknown: true}
	for _, o := range ops {
		if e.txnOp(o, nil) != "" {
			return nil // etcd fails the whole txn
		}
	}
	if !e.wrote {
		return nil
	}
	e.s.rev++
	return []*state{e.s}
}
