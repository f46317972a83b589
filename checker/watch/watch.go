// Package watch checks recorded watch streams against the guarantees etcd
// gives watchers, and against the ground truth of what the cluster did.
//
// The rules are those of etcd's robustness tests:
//
//   - ordered: revisions never go back within a stream;
//   - unique: no key and revision twice;
//   - atomic: one revision is never split across responses;
//   - bookmarkable: no event at or below a progress notification's revision;
//   - reliable: no event of the watched keys missing between the stream's
//     start and the last revision it saw (an event or a bookmark);
//   - resumable: a watch from revision R starts with the first event at or
//     after R;
//   - prevkv: an event's PrevKV is the key's state before the event;
//   - iscreate: a put creates its key (create revision == mod revision)
//     exactly when its version is 1 and the key did not exist before;
//   - filter: only watched keys;
//   - truth: every event is one of the ground truth, with the same content.
//
// Check names the watcher, its member, the rule and the revisions of every
// failure. The checker trusts the ground truth it is given; a truth that
// does not cover a stream makes the verdict unknown, never a pass.
package watch

import (
	"cmp"
	"fmt"
	"iter"
	"slices"
	"time"

	"github.com/etcd-functional/functional/history"
)

// Verdict is the outcome of a check.
type Verdict string

const (
	Pass    Verdict = "pass"
	Fail    Verdict = "fail"
	Unknown Verdict = "unknown" // something could not be checked; never a pass
)

// Result is what Check found.
type Result struct {
	Verdict Verdict `json:"verdict"`
	// Streams and Events count what was checked.
	Streams int `json:"streams"`
	Events  int `json:"events"`
	// Dropped counts events the recorders received but did not keep
	// (their cap); the streams were checked up to where they stop.
	Dropped  int           `json:"dropped,omitempty"`
	Duration time.Duration `json:"duration"`
	// Errors are the failures (Verdict fail) or what could not be checked
	// (Verdict unknown), each naming watcher, member, rule and revisions.
	Errors []string `json:"errors,omitempty"`
}

// maxPerRule bounds the messages of one rule on one stream: a broken
// stream otherwise repeats the same failure for every event.
const maxPerRule = 5

// Check checks every stream against the rules and against the first truth
// that covers its keys. Several truths serve streams of different key
// ranges, e.g. the full watch of the case and the writes of a helper that
// alone writes its key.
func Check(streams []history.WatchStream, truths ...history.WatchTruth) Result {
	start := time.Now()
	res := Result{Verdict: Pass, Streams: len(streams)}
	var unknown []string
	idx := make([]*truthIndex, len(truths))
	for i := range truths {
		t, err := newTruthIndex(&truths[i])
		if err != nil {
			unknown = append(unknown, fmt.Sprintf("unknown: ground truth %d (%q..%q, revisions %d..%d) is unusable: %v",
				i, truths[i].Key, truths[i].RangeEnd, truths[i].From, truths[i].To, err))
		}
		idx[i] = t
	}
	for i := range streams {
		s := &streams[i]
		res.Events += s.Events()
		res.Dropped += s.Dropped
		c := newStreamCheck(s)
		c.checkOwn()
		var t *truthIndex
		for j, ti := range idx {
			if ti != nil && truths[j].Covers(s.Request) {
				t = ti
				break
			}
		}
		if t == nil {
			c.unknown("no ground truth covers its keys")
		} else {
			c.checkTruth(t)
		}
		res.Errors = append(res.Errors, c.errs...)
		unknown = append(unknown, c.unknowns...)
	}
	switch {
	case len(res.Errors) > 0:
		res.Verdict = Fail
	case len(unknown) > 0:
		res.Verdict = Unknown
		res.Errors = unknown
	}
	res.Duration = time.Since(start)
	return res
}

// flatEvent is an event with the index of the response it came in.
type flatEvent struct {
	*history.WatchEvent
	resp int
}

type keyRev struct {
	key string
	rev int64
}

type streamCheck struct {
	s        *history.WatchStream
	events   []flatEvent
	seen     map[keyRev]int // response of each event
	created  int64          // header revision of the Created response, 0 if none
	lastSeen int64          // highest revision of an event or a bookmark
	errs     []string
	unknowns []string
	count    map[string]int // messages per rule
}

func newStreamCheck(s *history.WatchStream) *streamCheck {
	c := &streamCheck{s: s, count: map[string]int{}}
	for i, r := range s.Responses {
		if r.Created && c.created == 0 {
			c.created = r.Revision
		}
		if r.ProgressNotify {
			c.lastSeen = max(c.lastSeen, r.Revision)
		}
		for j := range r.Events {
			e := &r.Events[j]
			c.events = append(c.events, flatEvent{e, i})
			c.lastSeen = max(c.lastSeen, e.ModRevision)
		}
	}
	return c
}

func (c *streamCheck) failf(rule, format string, args ...any) {
	c.count[rule]++
	switch n := c.count[rule]; {
	case n <= maxPerRule:
		c.errs = append(c.errs, fmt.Sprintf("watcher %s (member %s, %s): %s: %s",
			c.s.Watcher, c.s.Member, describe(c.s.Request), rule, fmt.Sprintf(format, args...)))
	case n == maxPerRule+1:
		c.errs = append(c.errs, fmt.Sprintf("watcher %s (member %s): %s: more failures not shown",
			c.s.Watcher, c.s.Member, rule))
	}
}

func (c *streamCheck) unknown(format string, args ...any) {
	c.unknowns = append(c.unknowns, fmt.Sprintf("unknown: watcher %s (member %s, %s): %s",
		c.s.Watcher, c.s.Member, describe(c.s.Request), fmt.Sprintf(format, args...)))
}

func describe(r history.WatchRequest) string {
	var keys string
	switch r.RangeEnd {
	case "":
		keys = fmt.Sprintf("key %q", r.Key)
	case "\x00":
		keys = fmt.Sprintf("keys >= %q", r.Key)
	default:
		keys = fmt.Sprintf("keys [%q, %q)", r.Key, r.RangeEnd)
	}
	if r.Revision == 0 {
		return keys + " from now"
	}
	return fmt.Sprintf("%s from revision %d", keys, r.Revision)
}

// checkOwn applies the rules that need nothing but the stream itself.
func (c *streamCheck) checkOwn() {
	c.seen = make(map[keyRev]int, len(c.events))
	var prev *flatEvent
	var bookmark int64 // highest progress notification so far
	lastRespRev, lastResp := int64(0), -1
	for i, r := range c.s.Responses {
		if r.ProgressNotify {
			bookmark = max(bookmark, r.Revision)
			continue
		}
		if len(r.Events) == 0 {
			continue
		}
		if first := r.Events[0].ModRevision; lastResp >= 0 && first == lastRespRev {
			c.failf("atomic", "revision %d split across responses %d and %d", first, lastResp, i)
		}
		lastRespRev, lastResp = r.Events[len(r.Events)-1].ModRevision, i
		for _, e := range r.Events {
			if bookmark > 0 && e.ModRevision <= bookmark {
				c.failf("bookmarkable", "%v in response %d after a progress notification at revision %d", e, i, bookmark)
			}
		}
	}
	for i := range c.events {
		e := &c.events[i]
		if prev != nil && e.ModRevision < prev.ModRevision {
			c.failf("ordered", "%v (response %d) after %v (response %d): revision went back from %d to %d",
				e.WatchEvent, e.resp, prev.WatchEvent, prev.resp, prev.ModRevision, e.ModRevision)
		}
		prev = e
		k := keyRev{e.Key, e.ModRevision}
		if j, dup := c.seen[k]; dup {
			c.failf("unique", "%v twice (responses %d and %d)", e.WatchEvent, j, e.resp)
		}
		c.seen[k] = e.resp
		if !c.s.Request.Matches(e.Key) {
			c.failf("filter", "%v is not a watched key", e.WatchEvent)
		}
		if e.Type == history.WatchPut && (e.CreateRevision == e.ModRevision) != (e.Version == 1) {
			c.failf("iscreate", "%v has create revision %d and version %d: a create has version 1 and only a create has",
				e.WatchEvent, e.CreateRevision, e.Version)
		}
	}
}

// start is the lowest revision the stream must deliver from, and whether it
// is known.
func (c *streamCheck) start() (int64, bool) {
	if r := c.s.Request.Revision; r > 0 {
		return r, true
	}
	if c.created > 0 {
		return c.created + 1, true
	}
	return 0, false
}

// checkTruth applies the rules that compare the stream with the truth.
func (c *streamCheck) checkTruth(t *truthIndex) {
	from, known := c.start()
	if !known {
		if len(c.events) == 0 {
			return // saw nothing and does not say where it started
		}
		// Without a start, reliability is checked from the first event.
		from = c.events[0].ModRevision
	}
	if from < t.From {
		c.unknown("starts at revision %d, before the ground truth (%d..%d)", from, t.From, t.To)
		return
	}
	for _, e := range c.events {
		c.checkEvent(t, e)
	}

	// resumable: the first event is the first of the truth at or after
	// the start. A watch from now (Revision 0) resumed by clientv3 before
	// its first event restarts at the Created revision itself, so an
	// event at that revision may come first too.
	if known && len(c.events) > 0 {
		first := c.events[0]
		want, ok := t.firstFrom(from, c.s.Request)
		switch {
		case first.ModRevision < from && !(c.s.Request.Revision == 0 && first.ModRevision == c.created):
			c.failf("resumable", "watch from revision %d starts with %v, before its start", from, first.WatchEvent)
		case ok && first.ModRevision > want.ModRevision && want.ModRevision <= t.To:
			c.failf("resumable", "watch from revision %d starts with %v, but the first event at or after %d is %v",
				from, first.WatchEvent, from, want)
		}
	}

	if c.lastSeen > t.To {
		c.unknown("saw revision %d, beyond the ground truth (%d..%d); checked up to %d", c.lastSeen, t.From, t.To, t.To)
	}
	// reliable: every event of the truth from the start up to the last
	// revision the stream saw (event or bookmark) is in the stream.
	to := min(c.lastSeen, t.To)
	var missing []history.WatchEvent // the first few
	n := 0
	for e := range t.eventsIn(from, to, c.s.Request) {
		if _, ok := c.seen[keyRev{e.Key, e.ModRevision}]; !ok {
			if n++; n <= maxPerRule {
				missing = append(missing, *e)
			}
		}
	}
	if n > 0 {
		more := ""
		if n > len(missing) {
			more = fmt.Sprintf(" and %d more", n-len(missing))
		}
		c.failf("reliable", "%d events missing between revisions %d and %d (the last it saw): %v%s",
			n, from, to, missing, more)
	}
}

// checkEvent compares one received event with the truth's.
func (c *streamCheck) checkEvent(t *truthIndex, e flatEvent) {
	if e.ModRevision < t.From || e.ModRevision > t.To {
		return // outside what the truth knows
	}
	evs := t.byKey[e.Key]
	i, found := slices.BinarySearchFunc(evs, e.ModRevision, func(x *history.WatchEvent, rev int64) int {
		return cmp.Compare(x.ModRevision, rev)
	})
	if !found {
		c.failf("truth", "%v is not in the ground truth", e.WatchEvent)
		return
	}
	want := evs[i]
	if want.Type != e.Type || want.Value != e.Value || want.CreateRevision != e.CreateRevision || want.Version != e.Version {
		c.failf("truth", "%v differs from the ground truth: got %s, want %s", e.WatchEvent, content(*e.WatchEvent), content(*want))
	}
	// The key's state before the event: the truth's previous event of the
	// key, or the PrevKV of the truth's first one.
	var prev *history.WatchKeyValue
	prevKnown := true
	switch {
	case i > 0:
		if p := evs[i-1]; p.Type == history.WatchPut {
			prev = &history.WatchKeyValue{Value: p.Value, ModRevision: p.ModRevision, CreateRevision: p.CreateRevision, Version: p.Version}
		}
	case t.PrevKV && (want.PrevKV != nil || want.ModRevision > t.From):
		// A truth watched from a compaction revision gets no PrevKV
		// for events at that revision: etcd cannot read the one before.
		prev = want.PrevKV
	default:
		prevKnown = false
	}
	if !prevKnown {
		return
	}
	if e.Type == history.WatchPut && e.IsCreate() != (prev == nil) {
		if prev == nil {
			c.failf("iscreate", "%v is not a create (create revision %d) but the key did not exist before", e.WatchEvent, e.CreateRevision)
		} else {
			c.failf("iscreate", "%v is a create but the key existed before (%s)", e.WatchEvent, kvString(prev))
		}
	}
	if !c.s.Request.PrevKV {
		return
	}
	switch {
	case e.PrevKV == nil && prev == nil:
	case e.PrevKV == nil && e.ModRevision == c.s.Request.Revision:
		// etcd reads PrevKV at the event's revision - 1, which a
		// compaction at the start revision may have removed.
	case e.PrevKV == nil:
		c.failf("prevkv", "%v has no PrevKV, want %s", e.WatchEvent, kvString(prev))
	case prev == nil:
		c.failf("prevkv", "%v has PrevKV %s, but the key did not exist before", e.WatchEvent, kvString(e.PrevKV))
	case *e.PrevKV != *prev:
		c.failf("prevkv", "%v has PrevKV %s, want %s", e.WatchEvent, kvString(e.PrevKV), kvString(prev))
	}
}

func content(e history.WatchEvent) string {
	return fmt.Sprintf("%s value %q create %d version %d", e.Type, e.Value, e.CreateRevision, e.Version)
}

func kvString(kv *history.WatchKeyValue) string {
	if kv == nil {
		return "none"
	}
	return fmt.Sprintf("{value %q mod %d create %d version %d}", kv.Value, kv.ModRevision, kv.CreateRevision, kv.Version)
}

// truthIndex is a truth sorted for lookups by key and by revision.
type truthIndex struct {
	*history.WatchTruth
	byKey map[string][]*history.WatchEvent // each in revision order
}

func newTruthIndex(t *history.WatchTruth) (*truthIndex, error) {
	ti := &truthIndex{WatchTruth: t, byKey: map[string][]*history.WatchEvent{}}
	var last int64
	for i := range t.Events {
		e := &t.Events[i]
		if e.ModRevision < last {
			return nil, fmt.Errorf("not in revision order: %v after revision %d", e, last)
		}
		last = e.ModRevision
		evs := ti.byKey[e.Key]
		if n := len(evs); n > 0 && evs[n-1].ModRevision == e.ModRevision {
			return nil, fmt.Errorf("%v twice", e)
		}
		ti.byKey[e.Key] = append(evs, e)
	}
	if t.To < t.From {
		return nil, fmt.Errorf("empty revision range")
	}
	return ti, nil
}

// firstFrom returns the first event at or after rev that r watches.
func (t *truthIndex) firstFrom(rev int64, r history.WatchRequest) (history.WatchEvent, bool) {
	i, _ := slices.BinarySearchFunc(t.Events, rev, func(x history.WatchEvent, rev int64) int {
		return cmp.Compare(x.ModRevision, rev)
	})
	for ; i < len(t.Events); i++ {
		if r.Matches(t.Events[i].Key) {
			return t.Events[i], true
		}
	}
	return history.WatchEvent{}, false
}

// eventsIn yields the events in revisions from..to that r watches.
func (t *truthIndex) eventsIn(from, to int64, r history.WatchRequest) iter.Seq[*history.WatchEvent] {
	return func(yield func(*history.WatchEvent) bool) {
		i, _ := slices.BinarySearchFunc(t.Events, from, func(x history.WatchEvent, rev int64) int {
			return cmp.Compare(x.ModRevision, rev)
		})
		for ; i < len(t.Events) && t.Events[i].ModRevision <= to; i++ {
			if r.Matches(t.Events[i].Key) && !yield(&t.Events[i]) {
				return
			}
		}
	}
}
