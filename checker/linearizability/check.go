// Package linearizability checks a recorded client history of etcd's
// key-value API for linearizability with porcupine, against a model of
// etcd's store with one global revision.
//
// The model tracks, per recorded key, the value, mod and create revision,
// version and lease, and the leases that exist; responses must match it
// including the header revision and every mod revision. Revisions are
// global, so the history is not partitioned by key. Keys outside the
// history are written by other clients too (the bulk stressers), so the
// model lets the revision advance between recorded operations: a write
// must take a revision above every revision seen before it, a read may not
// see one below.
//
// A failed write has an unknown outcome: it may have taken effect at any
// time after its call, or never; a failed put whose unique value a
// response shows took effect at that value's mod revision, and twice (a
// client retry) if responses show it at two. A failed read or lease grant
// changed nothing and is left out. The model starts
// from the first snapshot read (history.Request.Snapshot) of the history;
// the operations that returned before it are absorbed by it.
//
// Check is bounded by a timeout; running out of time is an Unknown
// verdict, never a pass.
package linearizability

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/etcd-functional/functional/history"
)

// Verdict is the outcome of a check.
type Verdict string

// Verdicts.
const (
	Pass    Verdict = "pass"    // the history is linearizable
	Fail    Verdict = "fail"    // it is not: Result.Error names an operation
	Unknown Verdict = "unknown" // the check could not decide (timeout, no snapshot)
)

// Result is what Check found.
type Result struct {
	Verdict Verdict `json:"verdict"`
	// Ops is the number of operations the model was given (failed reads
	// left out, a write applied twice counted twice).
	Ops int `json:"ops"`
	// Duration is how long the check took.
	Duration time.Duration `json:"duration_ns"`
	// Error says why the verdict is not Pass: for Fail, the first
	// operation the model could not place, with its client, member,
	// request, response and the model's state before it.
	Error string `json:"error,omitempty"`

	// For Save, after a Fail.
	model porcupine.Model
	info  *porcupine.LinearizationInfo
	hist  history.History
}

// input is a porcupine operation's input: a recorded operation, or the
// second application of a retried write.
type input struct {
	op    *history.Op
	index int  // in the history
	retry bool // the copy that stands for a retry
	// applied is, for a failed write whose value a response showed, the
	// response it would have had: the revision it took effect at is that
	// value's mod revision.
	applied *history.Response
}

// response is what the model checks p against; nil: outcome unknown.
func (p *input) response() *history.Response {
	if p.applied != nil {
		return p.applied
	}
	return p.op.Response
}

// Check checks h for linearizability within timeout.
func Check(h history.History, timeout time.Duration) Result {
	start := time.Now()
	ops, why := prepare(h)
	res := Result{Ops: len(ops), hist: h, model: newModel()}
	if why != "" {
		res.Verdict, res.Error, res.Duration = Unknown, why, time.Since(start)
		return res
	}
	verdict := porcupine.CheckOperationsTimeout(res.model, ops, timeout)
	switch verdict {
	case porcupine.Ok:
		res.Verdict = Pass
	case porcupine.Unknown:
		res.Verdict = Unknown
		res.Error = fmt.Sprintf("the check of %d operations timed out after %v", len(ops), timeout)
	case porcupine.Illegal:
		res.Verdict = Fail
		// Check again for the partial linearizations: they cost too
		// much to collect on every check. The time left bounds it;
		// without it the error is less precise.
		left := max(timeout-time.Since(start), timeout/4)
		v, info := porcupine.CheckOperationsVerbose(res.model, ops, left)
		if v == porcupine.Illegal {
			res.info = &info
			res.Error = explain(res.model, ops, info)
		} else {
			res.Error = "not linearizable (no detail: the second, verbose check did not finish)"
		}
	}
	res.Duration = time.Since(start)
	return res
}

// Save writes, after a Fail, porcupine's visualization (a self-contained
// HTML file) and the history as JSON into dir, named prefix+".html" and
// prefix+".json", and returns their paths. After another verdict it
// writes only the history.
func (r Result) Save(dir, prefix string) (visualization, historyJSON string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	historyJSON = filepath.Join(dir, prefix+".json")
	f, err := os.Create(historyJSON)
	if err != nil {
		return "", "", err
	}
	err = r.hist.WriteJSON(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", "", fmt.Errorf("linearizability: save history: %w", err)
	}
	if r.info == nil {
		return "", historyJSON, nil
	}
	visualization = filepath.Join(dir, prefix+".html")
	if err := porcupine.VisualizePath(r.model, *r.info, visualization); err != nil {
		return "", historyJSON, fmt.Errorf("linearizability: visualize: %w", err)
	}
	return visualization, historyJSON, nil
}

// prepare turns h into porcupine operations. It returns why h cannot be
// checked, if it cannot.
func prepare(h history.History) ([]porcupine.Operation, string) {
	snap := slices.IndexFunc(h.Ops, func(o history.Op) bool { return o.Request.Snapshot && !o.Failed() })
	if snap < 0 {
		if len(h.Ops) == 0 {
			return nil, ""
		}
		return nil, "no successful snapshot read in the history: the model has no state to start from"
	}
	snapCall := h.Ops[snap].Call
	// Infinity for porcupine: later than every return.
	var inf int64
	for _, o := range h.Ops {
		inf = max(inf, int64(o.Return)+1, int64(o.Call)+1)
	}
	seen := observed(h)
	var ops []porcupine.Operation
	for i := range h.Ops {
		o := &h.Ops[i]
		if i < snap && !o.Unknown() && o.Return < snapCall {
			continue // before the snapshot, which shows its effect
		}
		if o.Failed() && !o.Unknown() {
			continue // a failed read or grant changed nothing
		}
		p := porcupine.Operation{ClientId: o.Client, Input: &input{op: o, index: i},
			Call: int64(o.Call), Return: int64(o.Return)}
		if !o.Unknown() {
			ops = append(ops, p)
			continue
		}
		// An unknown write may apply any time after its call: as long
		// as its return is infinite. If a response shows a value only it
		// wrote, it took effect before that response came back, at the
		// value's mod revision: the model then checks it as a write
		// answered with that revision, which spares porcupine trying it
		// everywhere (with many failed writes that search explodes).
		p.Return = inf
		if resp, ret, ok := inferred(o, seen, 0); ok {
			p.Input.(*input).applied, p.Return = resp, int64(ret)
		}
		ops = append(ops, p)
		// A retry by the client library may have applied it a second
		// time. That is taken when a response shows its value at a
		// second mod revision: a second application nobody saw would
		// have to be tried at every position, and a few dozen such
		// choices make the search explode (BENCHMARK.md). clientv3
		// retries a write only when it was not sent, so an unseen
		// second application is not expected.
		if resp, ret, ok := inferred(o, seen, 1); ok {
			ops = append(ops, porcupine.Operation{ClientId: o.Client,
				Input: &input{op: o, index: i, retry: true, applied: resp}, Call: int64(o.Call), Return: int64(ret)})
		}
	}
	return ops, ""
}

// values lists the values a write request puts.
func values(r history.Request) []string {
	switch r.Kind {
	case history.Put:
		return []string{r.Value}
	case history.Txn:
		var vs []string
		for _, o := range slices.Concat(r.Then, r.Else) {
			vs = append(vs, values(o)...)
		}
		return vs
	}
	return nil
}

// sighting is the earliest a value was seen at one mod revision.
type sighting struct {
	mod int64
	at  time.Duration // the return of the first response that showed it
}

// inferred returns, for a failed write whose values a response showed,
// the response its nth application (0: first, 1: a retry's) would have had
// and the latest it can have taken effect.
// Only puts, and txns whose then-branch holds only puts, are inferred:
// their answer holds nothing but the revision.
func inferred(o *history.Op, seen map[string][]sighting, nth int) (*history.Response, time.Duration, bool) {
	req := o.Request
	switch req.Kind {
	case history.Put:
	case history.Txn:
		if len(req.Then) == 0 {
			return nil, 0, false
		}
		for _, t := range req.Then {
			if t.Kind != history.Put {
				return nil, 0, false
			}
		}
	default:
		return nil, 0, false
	}
	var first sighting
	for i, v := range values(req) {
		if req.Kind == history.Txn && i >= len(req.Then) {
			break // an else-branch put: the txn failed
		}
		sgs := seen[v]
		if len(sgs) <= nth || sgs[nth].at < o.Call {
			continue
		}
		sg := sgs[nth]
		if first.mod == 0 || sg.mod < first.mod || (sg.mod == first.mod && sg.at < first.at) {
			first = sg
		}
	}
	if first.mod == 0 {
		return nil, 0, false
	}
	resp := &history.Response{Revision: first.mod}
	if req.Kind == history.Txn {
		resp.Succeeded = true
		resp.Results = make([]history.Response, len(req.Then))
	}
	return resp, first.at, true
}

// observed maps every value a successful response showed to the two
// lowest mod revisions it was shown with (a value is written by one
// request, so a second one means it was applied twice), each with the
// earliest return that showed it so.
func observed(h history.History) map[string][]sighting {
	seen := map[string][]sighting{}
	var walk func(r *history.Response, t time.Duration)
	walk = func(r *history.Response, t time.Duration) {
		for _, kv := range r.KVs {
			sgs := seen[kv.Value]
			i := slices.IndexFunc(sgs, func(s sighting) bool { return s.mod == kv.ModRevision })
			if i >= 0 {
				sgs[i].at = min(sgs[i].at, t)
				continue
			}
			sgs = append(sgs, sighting{kv.ModRevision, t})
			slices.SortFunc(sgs, func(a, b sighting) int { return cmp.Compare(a.mod, b.mod) })
			seen[kv.Value] = sgs[:min(len(sgs), 2)]
		}
		for i := range r.Results {
			walk(&r.Results[i], t)
		}
	}
	for _, o := range h.Ops {
		if o.Response != nil {
			walk(o.Response, o.Return)
		}
	}
	return seen
}

// unknownState is the model's state before the first snapshot.
type unknownState struct{}

func newModel() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Init: func() []any { return []any{unknownState{}} },
		Step: func(st, in, _ any) []any {
			next, _ := modelStep(st, in.(*input))
			return next
		},
		Equal: func(a, b any) bool {
			sa, oka := a.(*state)
			sb, okb := b.(*state)
			if !oka || !okb {
				return oka == okb
			}
			return equalStates(sa, sb)
		},
		Hash: func(st any) uint64 {
			if s, ok := st.(*state); ok {
				return hashState(s)
			}
			return 0
		},
		DescribeOperation: func(in, _ any) string {
			p := in.(*input)
			s := fmt.Sprintf("#%d %s: %s", p.index, p.op.Member, p.op.Request)
			switch {
			case p.retry:
				s += fmt.Sprintf(" failed: %s; its value shows a retry applied it again -> %s", p.op.Error, p.applied)
			case p.applied != nil:
				s += fmt.Sprintf(" failed: %s; its value shows it applied -> %s", p.op.Error, p.applied)
			case p.op.Failed():
				s += " failed: " + p.op.Error
			default:
				s += " -> " + p.op.Response.String()
			}
			return s
		},
		DescribeState: func(st any) string {
			if s, ok := st.(*state); ok {
				return s.String()
			}
			return "unknown (before the snapshot)"
		},
	}
	return nm.ToModel()
}

// modelStep moves one state by one operation; with no next state it says
// why.
func modelStep(st any, p *input) ([]any, string) {
	o := p.op
	s, ok := st.(*state)
	if !ok {
		// Before the snapshot only the snapshot and writes the
		// snapshot may already show can be placed.
		switch {
		case o.Request.Snapshot && !o.Failed():
			return []any{snapshotState(o.Response)}, ""
		case o.Unknown():
			return []any{st}, ""
		}
		return nil, "placed before the first snapshot read"
	}
	next, why := step(s, o.Request, p.response())
	out := make([]any, len(next))
	for i, n := range next {
		out[i] = n
	}
	return out, why
}

// explain names the first operation the model could not place: the one
// with the earliest return among those left out of the longest partial
// linearization, with why it fits none of the model's states at the
// latest point of that linearization where its times and its header
// revision allow it.
func explain(model porcupine.Model, ops []porcupine.Operation, info porcupine.LinearizationInfo) string {
	var longest []int
	for _, part := range info.PartialLinearizations() {
		for _, l := range part {
			if len(l) > len(longest) {
				longest = l
			}
		}
	}
	states := make([]any, len(longest)+1)
	states[0] = model.Init()
	placed := map[int]bool{}
	for i, id := range longest {
		_, states[i+1] = model.Step(states[i], ops[id].Input, ops[id].Output)
		placed[id] = true
	}
	first := -1
	for id, o := range ops {
		if !placed[id] && (first < 0 || o.Return < ops[first].Return) {
			first = id
		}
	}
	if first < 0 {
		return "not linearizable"
	}
	op := ops[first]
	p := op.Input.(*input)
	// Where it could go: after every op that returned before its call,
	// before every op called after its return.
	lo, hi := 0, len(longest)
	for j, id := range longest {
		if ops[id].Return < op.Call {
			lo = j + 1
		}
	}
	for j, id := range longest {
		if ops[id].Call > op.Return {
			hi = j
			break
		}
	}
	at := lo
	for k := lo; k <= hi && p.response() != nil; k++ {
		if maxRev(states[k]) <= p.response().Revision {
			at = k
		}
	}
	var whys, desc []string
	for _, st := range states[at].([]any) {
		_, why := modelStep(st, p)
		if why == "" {
			why = "fits this state, but no order of the operations around it does"
		}
		whys = append(whys, why)
		desc = append(desc, model.DescribeState([]any{st}))
	}
	slices.Sort(whys)
	whys = slices.Compact(whys)
	var b strings.Builder
	fmt.Fprintf(&b, "not linearizable: operation #%d, %s: %s", p.index, p.op, strings.Join(whys, "; "))
	fmt.Fprintf(&b, " (placed after %d of %d operations; model state there: %s)", at, len(ops), strings.Join(desc, " or "))
	return b.String()
}

// maxRev is the highest revision among a set of model states.
func maxRev(st any) int64 {
	var r int64
	for _, s := range st.([]any) {
		if s, ok := s.(*state); ok {
			r = max(r, s.rev)
		}
	}
	return r
}
