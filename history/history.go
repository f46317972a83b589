// Package history records what clients of an etcd cluster asked and what
// they were told, for checkers to judge afterwards.
//
// A History is a list of operations, each with the client that issued it,
// the member (or the whole cluster) it was sent to, its call and return
// times on a monotonic clock, the request, and the full response or the
// error. Generating load and recording it is the stresser's job; judging a
// history (for example for linearizability) is a checker's; this package
// is the record between them and knows nothing of either.
//
// A Recorder collects operations from concurrent clients, bounded in
// memory: an operation is reserved with Call before the request is sent
// and completed with Return, so that a request cut off half-way is still
// on record (as failed, outcome unknown) and a request the Recorder has no
// room for is never sent at all. Cut takes the operations of a time window
// out of the Recorder, e.g. one per test case.
package history

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"
)

// Cluster is Op.Member for a request sent through a client balanced over
// every member.
const Cluster = "cluster"

// Kind is the kind of a request.
type Kind string

// Request kinds.
const (
	Get         Kind = "get"          // Key, or the range [Key, End); at Revision if > 0
	Put         Kind = "put"          // Key = Value, attached to Lease if != 0
	Delete      Kind = "delete"       // Key, or the range [Key, End)
	Txn         Kind = "txn"          // if all Compares hold then Then else Else
	LeaseGrant  Kind = "lease-grant"  // a lease of TTL seconds
	LeaseRevoke Kind = "lease-revoke" // Lease, deleting the keys attached to it
)

// Request is what a client asked. Only the fields of its Kind are set.
type Request struct {
	Kind Kind   `json:"kind"`
	Key  string `json:"key,omitempty"`
	// End makes Get and Delete cover the range [Key, End); empty means
	// Key alone. A prefix is the range [prefix, clientv3.GetPrefixRangeEnd(prefix)).
	End string `json:"end,omitempty"`
	// Revision makes a Get read the keys as of that revision; 0 is the
	// latest.
	Revision int64  `json:"revision,omitempty"`
	Value    string `json:"value,omitempty"`
	// Lease is the lease a Put attaches its key to, or the lease
	// LeaseRevoke revokes.
	Lease int64 `json:"lease,omitempty"`
	// TTL is LeaseGrant's TTL in seconds.
	TTL int64 `json:"ttl,omitempty"`
	// Compares, Then and Else make up a Txn. Then and Else hold only
	// Get, Put and Delete.
	Compares []Compare `json:"compares,omitempty"`
	Then     []Request `json:"then,omitempty"`
	Else     []Request `json:"else,omitempty"`
	// Snapshot marks a Get over every key the recorder's client uses,
	// sent while none of its other requests was in flight: its response
	// is the whole state of those keys, from which a checker may start.
	Snapshot bool `json:"snapshot,omitempty"`
}

// Writes reports whether r may change the store (so that, when it fails,
// it may still have taken effect).
func (r Request) Writes() bool {
	switch r.Kind {
	case Put, Delete, LeaseRevoke:
		return true
	case Txn:
		for _, o := range slices.Concat(r.Then, r.Else) {
			if o.Writes() {
				return true
			}
		}
	}
	return false
}

// String is a short form of r for messages, e.g. `put("k", "v")`.
func (r Request) String() string {
	key := fmt.Sprintf("%q", r.Key)
	if r.End != "" {
		key = fmt.Sprintf("[%q, %q)", r.Key, r.End)
	}
	switch r.Kind {
	case Get:
		s := "get(" + key
		if r.Revision > 0 {
			s += fmt.Sprintf(", rev=%d", r.Revision)
		}
		if r.Snapshot {
			s += ", snapshot"
		}
		return s + ")"
	case Put:
		if r.Lease != 0 {
			return fmt.Sprintf("put(%s, %q, lease=%x)", key, r.Value, r.Lease)
		}
		return fmt.Sprintf("put(%s, %q)", key, r.Value)
	case Delete:
		return "delete(" + key + ")"
	case Txn:
		var b strings.Builder
		b.WriteString("txn(if ")
		for i, c := range r.Compares {
			if i > 0 {
				b.WriteString(" && ")
			}
			b.WriteString(c.String())
		}
		b.WriteString(" then ")
		writeOps(&b, r.Then)
		b.WriteString(" else ")
		writeOps(&b, r.Else)
		b.WriteString(")")
		return b.String()
	case LeaseGrant:
		return fmt.Sprintf("lease-grant(ttl=%d)", r.TTL)
	case LeaseRevoke:
		return fmt.Sprintf("lease-revoke(%x)", r.Lease)
	}
	return string(r.Kind)
}

func writeOps(b *strings.Builder, ops []Request) {
	b.WriteString("[")
	for i, o := range ops {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(o.String())
	}
	b.WriteString("]")
}

// Target is what a Compare looks at.
type Target string

// Compare targets.
const (
	TargetValue  Target = "value"
	TargetMod    Target = "mod"     // mod revision; 0 for a missing key
	TargetCreate Target = "create"  // create revision; 0 for a missing key
	TargetVer    Target = "version" // 0 for a missing key
)

// Compare is one condition of a Txn: Target of Key Op (Value or Number).
type Compare struct {
	Key    string `json:"key"`
	Target Target `json:"target"`
	// Op is one of "=", "!=", "<", ">".
	Op     string `json:"op"`
	Value  string `json:"value,omitempty"`  // for TargetValue
	Number int64  `json:"number,omitempty"` // for the revisions and version
}

func (c Compare) String() string {
	if c.Target == TargetValue {
		return fmt.Sprintf("value(%q) %s %q", c.Key, c.Op, c.Value)
	}
	return fmt.Sprintf("%s(%q) %s %d", c.Target, c.Key, c.Op, c.Number)
}

// KV is a key as a response showed it.
type KV struct {
	Key            string `json:"key"`
	Value          string `json:"value"`
	ModRevision    int64  `json:"mod"`
	CreateRevision int64  `json:"create"`
	Version        int64  `json:"version"`
	Lease          int64  `json:"lease,omitempty"`
}

// Response is what a client was told.
type Response struct {
	// Revision is the response header's revision.
	Revision int64 `json:"revision"`
	// KVs and Count answer a Get (Count is the number of keys in the
	// range, which may exceed len(KVs) only with a limit).
	KVs   []KV  `json:"kvs,omitempty"`
	Count int64 `json:"count,omitempty"`
	// Deleted answers a Delete.
	Deleted int64 `json:"deleted,omitempty"`
	// Succeeded and Results answer a Txn: whether the compares held, and
	// one result per operation of the branch taken (their Revision is 0:
	// the Txn's header revision covers them).
	Succeeded bool       `json:"succeeded,omitempty"`
	Results   []Response `json:"results,omitempty"`
	// Lease and TTL answer a LeaseGrant.
	Lease int64 `json:"lease,omitempty"`
	TTL   int64 `json:"ttl,omitempty"`
}

// Op is one recorded operation.
type Op struct {
	// Client numbers the client that issued the request; a client has
	// one request in flight at a time.
	Client int `json:"client"`
	// Member is the endpoint the client is pinned to, or Cluster.
	Member string `json:"member"`
	// Call and Return are when the request was sent and when its answer
	// came back, measured from the Recorder's start on a monotonic clock.
	Call   time.Duration `json:"call_ns"`
	Return time.Duration `json:"return_ns"`
	// Pending says the answer had not come back when the history was
	// cut; Return is the cut's time and Error says so.
	Pending  bool      `json:"pending,omitempty"`
	Request  Request   `json:"request"`
	Response *Response `json:"response,omitempty"` // nil if the request failed
	Error    string    `json:"error,omitempty"`
}

// Failed reports whether the request failed (or never came back).
func (o Op) Failed() bool { return o.Response == nil }

// Unknown reports whether o's outcome is unknown: a write that failed may
// have taken effect at any time after its call, or not at all.
func (o Op) Unknown() bool { return o.Failed() && o.Request.Writes() }

// String describes o for messages.
func (o Op) String() string {
	s := fmt.Sprintf("client %d on %s [%v, %v]: %s", o.Client, o.Member,
		o.Call.Round(time.Microsecond), o.Return.Round(time.Microsecond), o.Request)
	if o.Failed() {
		return s + " failed: " + o.Error
	}
	return s + " -> " + o.Response.String()
}

// String is a short form of r for messages.
func (r Response) String() string {
	var parts []string
	parts = append(parts, fmt.Sprintf("rev=%d", r.Revision))
	if len(r.KVs) > 0 || r.Count > 0 {
		parts = append(parts, fmt.Sprintf("count=%d", r.Count))
		for _, kv := range r.KVs {
			parts = append(parts, kv.String())
		}
	}
	if r.Deleted > 0 {
		parts = append(parts, fmt.Sprintf("deleted=%d", r.Deleted))
	}
	if r.Succeeded {
		parts = append(parts, "succeeded")
	}
	for _, res := range r.Results {
		parts = append(parts, "{"+res.String()+"}")
	}
	if r.Lease != 0 {
		parts = append(parts, fmt.Sprintf("lease=%x ttl=%d", r.Lease, r.TTL))
	}
	return strings.Join(parts, " ")
}

func (kv KV) String() string {
	s := fmt.Sprintf("%q=%q(mod=%d create=%d ver=%d", kv.Key, kv.Value, kv.ModRevision, kv.CreateRevision, kv.Version)
	if kv.Lease != 0 {
		s += fmt.Sprintf(" lease=%x", kv.Lease)
	}
	return s + ")"
}

// History is the operations of one time window.
type History struct {
	// Start is the wall-clock time of the Recorder's start, to which the
	// operations' times are relative.
	Start time.Time `json:"start"`
	// From and To bound the window: every operation was called in
	// [From, To), but for writes of unknown outcome a stresser may carry
	// over from the window before (they may take effect in this one).
	From time.Duration `json:"from_ns"`
	To   time.Duration `json:"to_ns"`
	// Ops are in the order of their calls.
	Ops []Op `json:"ops"`
	// Dropped counts the requests in the window the Recorder had no room
	// for; they were never sent, so the history is still complete.
	Dropped int `json:"dropped,omitempty"`
}

// Duration is the length of the window.
func (h History) Duration() time.Duration { return h.To - h.From }

// WriteJSON writes h as JSON, one operation a line for diffing and grep.
func (h History) WriteJSON(w io.Writer) error {
	// Encode the envelope without the ops, then the ops one a line, so
	// that a history of many thousand operations stays readable.
	head, err := json.Marshal(struct {
		Start   time.Time     `json:"start"`
		From    time.Duration `json:"from_ns"`
		To      time.Duration `json:"to_ns"`
		Dropped int           `json:"dropped,omitempty"`
	}{h.Start, h.From, h.To, h.Dropped})
	if err != nil {
		return err
	}
	var b strings.Builder
	b.Write(head[:len(head)-1])
	b.WriteString(`,"ops":[`)
	for i, o := range h.Ops {
		line, err := json.Marshal(o)
		if err != nil {
			return fmt.Errorf("history: encode op %d: %w", i, err)
		}
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("\n")
		b.Write(line)
	}
	b.WriteString("\n]}\n")
	_, err = io.WriteString(w, b.String())
	return err
}

// ReadJSON reads a history WriteJSON wrote.
func ReadJSON(r io.Reader) (History, error) {
	var h History
	if err := json.NewDecoder(r).Decode(&h); err != nil {
		return History{}, fmt.Errorf("history: decode: %w", err)
	}
	return h, nil
}

// Recorder collects the operations of concurrent clients. It holds at most
// a fixed number of operations between two Cuts; the zero value is not
// usable, call NewRecorder.
type Recorder struct {
	start time.Time
	max   int

	mu      sync.Mutex
	base    int  // sequence number of ops[0]
	ops     []Op // called, in call order
	done    []bool
	dropped int
}

// NewRecorder returns a Recorder holding at most maxOps operations between
// Cuts; its clock starts now.
func NewRecorder(maxOps int) *Recorder {
	if maxOps < 1 {
		maxOps = 1
	}
	return &Recorder{start: time.Now(), max: maxOps}
}

// Start is the wall-clock time the Recorder's clock counts from.
func (r *Recorder) Start() time.Time { return r.start }

// Now is the time since the Recorder's start on the monotonic clock.
func (r *Recorder) Now() time.Duration { return time.Since(r.start) }

// Call records that client is about to send req to member, and returns
// the operation's id for Return. It returns ok == false, and counts a
// dropped request, when the Recorder is full: the caller must then not send
// the request, so that the history stays complete.
func (r *Recorder) Call(client int, member string, req Request) (id int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ops) >= r.max {
		r.dropped++
		return 0, false
	}
	// Take the time under the lock so that ops stay in call order.
	r.ops = append(r.ops, Op{Client: client, Member: member, Call: r.Now(), Request: req})
	r.done = append(r.done, false)
	return r.base + len(r.ops) - 1, true
}

// Return records the answer to operation id: resp if err is nil, else the
// error. An operation already cut away is ignored.
func (r *Recorder) Return(id int, resp *Response, err error) {
	now := r.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	i := id - r.base
	if i < 0 || i >= len(r.ops) || r.done[i] {
		return
	}
	o := &r.ops[i]
	o.Return = now
	if err != nil {
		o.Error = err.Error()
	} else {
		o.Response = resp
	}
	r.done[i] = true
}

// Len is the number of operations held.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

// Cut removes every operation called before to and returns those called in
// [from, to), with the requests dropped since the previous Cut. An
// operation still in flight is returned as Pending (failed, returned at
// to); its later Return is ignored.
func (r *Recorder) Cut(from, to time.Duration) History {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, _ := slices.BinarySearchFunc(r.ops, to, func(o Op, t time.Duration) int { return cmpDur(o.Call, t) })
	lo, _ := slices.BinarySearchFunc(r.ops[:n], from, func(o Op, t time.Duration) int { return cmpDur(o.Call, t) })
	h := History{Start: r.start, From: from, To: to, Ops: make([]Op, 0, n-lo), Dropped: r.dropped}
	for i := lo; i < n; i++ {
		o := r.ops[i]
		if !r.done[i] {
			o.Pending, o.Return, o.Error = true, max(to, o.Call), "pending when the history was cut"
		}
		h.Ops = append(h.Ops, o)
	}
	// Shift the rest down in place: a fresh slice would make the
	// Recorder's memory grow with the count of Cuts.
	m := copy(r.ops, r.ops[n:])
	clear(r.ops[m:])
	r.ops = r.ops[:m]
	copy(r.done, r.done[n:])
	r.done = r.done[:m]
	r.base += n
	r.dropped = 0
	return h
}

func cmpDur(a, b time.Duration) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
