package history

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// WatchMemberCluster is WatchStream.Member for a watcher whose client balances
// over every member and reconnects to another when one fails.
const WatchMemberCluster = "cluster"

// WatchStream is what one watcher saw: its request and every response, in
// the order they arrived. A watcher that ends (canceled by a compaction, say)
// and is opened again is recorded as a new stream.
type WatchStream struct {
	// Watcher names the watcher, unique within a case, e.g. "m0/past#1".
	Watcher string `json:"watcher"`
	// Member is the endpoint the watcher's client is pinned to, or
	// WatchMemberCluster.
	Member    string          `json:"member"`
	Request   WatchRequest    `json:"request"`
	Responses []WatchResponse `json:"responses"`
	// Dropped counts events received but not recorded because the stream
	// reached its cap; the responses end at a revision boundary before
	// them, so what is recorded is still a whole prefix of the stream.
	Dropped int `json:"dropped,omitempty"`
	// End says why the stream stopped before it was collected, if it did
	// (e.g. "canceled: compacted at 123"); empty if it ran to collection.
	End string `json:"end,omitempty"`
}

// Events is the number of events recorded in s.
func (s *WatchStream) Events() int {
	n := 0
	for i := range s.Responses {
		n += len(s.Responses[i].Events)
	}
	return n
}

// WatchRequest is the watch a stream asked for.
type WatchRequest struct {
	// Key and RangeEnd select keys as etcd does: RangeEnd "" is Key alone,
	// "\x00" every key >= Key, otherwise [Key, RangeEnd).
	Key      string `json:"key"`
	RangeEnd string `json:"range_end,omitempty"`
	// Revision is the start revision; 0 means from the current revision
	// (the first response, Created, tells which).
	Revision       int64 `json:"revision,omitempty"`
	ProgressNotify bool  `json:"progress_notify,omitempty"`
	PrevKV         bool  `json:"prev_kv,omitempty"`
}

// Matches reports whether key is in the request's key range.
func (r WatchRequest) Matches(key string) bool { return watchInRange(r.Key, r.RangeEnd, key) }

func watchInRange(from, end, key string) bool {
	switch end {
	case "":
		return key == from
	case "\x00":
		return key >= from
	}
	return key >= from && key < end
}

// WatchResponse is one response of a watch stream.
type WatchResponse struct {
	// Time is when the watcher received the response.
	Time time.Time `json:"time"`
	// Revision is the response header's revision.
	Revision int64 `json:"revision"`
	// Created marks the response that confirms the watch was created.
	Created bool `json:"created,omitempty"`
	// ProgressNotify marks a progress notification (a bookmark): no
	// events, and every event up to Revision has been sent.
	ProgressNotify  bool         `json:"progress_notify,omitempty"`
	CompactRevision int64        `json:"compact_revision,omitempty"`
	Canceled        bool         `json:"canceled,omitempty"`
	CancelReason    string       `json:"cancel_reason,omitempty"`
	Events          []WatchEvent `json:"events,omitempty"`
}

// WatchEventType is what an event did to its key.
type WatchEventType string

const (
	WatchPut    WatchEventType = "put"
	WatchDelete WatchEventType = "delete"
)

// WatchEvent is one event as a watcher received it. For a delete, Value,
// CreateRevision and Version are zero, as etcd sends them.
type WatchEvent struct {
	Type WatchEventType `json:"type"`
	Key  string         `json:"key"`
	// Value is the value, or for a long one a digest (see the recorder's
	// documentation): recordings stay small and compare equal all the same.
	Value          string         `json:"value,omitempty"`
	ModRevision    int64          `json:"mod_revision"`
	CreateRevision int64          `json:"create_revision,omitempty"`
	Version        int64          `json:"version,omitempty"`
	PrevKV         *WatchKeyValue `json:"prev_kv,omitempty"`
}

// IsCreate reports whether the event created its key, as clientv3 decides
// it: a put whose create revision is its mod revision.
func (e WatchEvent) IsCreate() bool {
	return e.Type == WatchPut && e.CreateRevision == e.ModRevision
}

func (e WatchEvent) String() string {
	return fmt.Sprintf("%s %q@%d", e.Type, e.Key, e.ModRevision)
}

// WatchKeyValue is the state of a key, as in an event's PrevKV.
type WatchKeyValue struct {
	Value          string `json:"value,omitempty"`
	ModRevision    int64  `json:"mod_revision"`
	CreateRevision int64  `json:"create_revision"`
	Version        int64  `json:"version"`
}

// WatchTruth is what really happened to a key range: every event in
// revisions From..To, in revision order, as a full watch on the healed
// cluster (or the writes of whoever alone writes those keys) tells it.
type WatchTruth struct {
	Key      string `json:"key"`
	RangeEnd string `json:"range_end,omitempty"`
	From     int64  `json:"from"`
	To       int64  `json:"to"`
	// Events holds every event of the range in From..To. It may also
	// hold events before From: those only tell the state of a key before
	// From, for checking PrevKV.
	Events []WatchEvent `json:"events"`
	// PrevKV says the events carry PrevKV: then the first event of a key
	// tells the key's state before it.
	PrevKV bool `json:"prev_kv,omitempty"`
}

// Covers reports whether t holds every key of r.
func (t WatchTruth) Covers(r WatchRequest) bool {
	switch {
	case !watchInRange(t.Key, t.RangeEnd, r.Key):
		return false
	case r.RangeEnd == "":
		return true
	case t.RangeEnd == "\x00":
		return true
	case t.RangeEnd == "" || r.RangeEnd == "\x00":
		return false
	}
	return r.RangeEnd <= t.RangeEnd
}

// WithWrites returns t with the events of writes that t lacks, for keys t
// holds and revisions up to t.To, in revision order. A watch cannot tell
// the truth about a revision that the watch itself gets wrong (etcd #18089
// lost the delete at the compaction revision for every watch from there,
// the ground-truth watch too); writes the client recorded can.
func (t WatchTruth) WithWrites(writes []WatchEvent) WatchTruth {
	type keyRev struct {
		key string
		rev int64
	}
	have := make(map[keyRev]bool, len(t.Events))
	for _, e := range t.Events {
		have[keyRev{e.Key, e.ModRevision}] = true
	}
	events := slices.Clone(t.Events)
	for _, w := range writes {
		if w.ModRevision > t.To || !watchInRange(t.Key, t.RangeEnd, w.Key) || have[keyRev{w.Key, w.ModRevision}] {
			continue
		}
		have[keyRev{w.Key, w.ModRevision}] = true
		events = append(events, w)
	}
	// Stable: events of one revision keep their order.
	slices.SortStableFunc(events, func(a, b WatchEvent) int { return cmp.Compare(a.ModRevision, b.ModRevision) })
	t.Events = events
	return t
}
