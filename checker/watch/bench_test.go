package watch

import (
	"fmt"
	"testing"

	"github.com/etcd-functional/functional/history"
)

// synth returns a truth of n revisions over keys keys, each revision a put
// (a txn of two puts every tenth), and streams correct copies of it: the
// shape of a case's recording.
func synth(n, keys, streams int) ([]history.WatchStream, history.WatchTruth) {
	type state struct{ create, version int64 }
	st := map[string]*state{}
	var evs []history.WatchEvent
	for rev := int64(2); rev < int64(n)+2; rev++ {
		count := 1
		if rev%10 == 0 {
			count = 2
		}
		for j := range count {
			key := fmt.Sprintf("/k/%04d", (int(rev)*7+j*13)%keys)
			s := st[key]
			if s == nil {
				s = &state{create: rev}
				st[key] = s
			}
			s.version++
			e := put(key, fmt.Sprintf("v%d", rev), rev, s.create, s.version)
			if len(evs) > 0 {
				// PrevKV from the key's previous event, if any.
				for i := len(evs) - 1; i >= 0 && i >= len(evs)-2*keys; i-- {
					if evs[i].Key == key {
						e = withPrev(e, evs[i])
						break
					}
				}
			}
			evs = append(evs, e)
		}
	}
	truth := history.WatchTruth{Key: prefix, RangeEnd: prefixEnd, From: 2, To: evs[len(evs)-1].ModRevision, Events: evs}
	var out []history.WatchStream
	for i := range streams {
		s := history.WatchStream{Watcher: fmt.Sprintf("w%d", i), Member: history.WatchMemberCluster,
			Request: history.WatchRequest{Key: prefix, RangeEnd: prefixEnd, Revision: 2, ProgressNotify: true}}
		for j := 0; j < len(evs); {
			k := j + 1
			for k < len(evs) && evs[k].ModRevision == evs[j].ModRevision {
				k++
			}
			s.Responses = append(s.Responses, history.WatchResponse{Revision: evs[j].ModRevision, Events: evs[j:k]})
			if j%100 == 0 {
				s.Responses = append(s.Responses, bookmark(evs[k-1].ModRevision))
			}
			j = k
		}
		out = append(out, s)
	}
	return out, truth
}

func TestWatchCheckSynthetic(t *testing.T) {
	streams, truth := synth(5000, 300, 3)
	if res := Check(streams, truth); res.Verdict != Pass {
		t.Fatalf("%s: %q", res.Verdict, res.Errors[:min(len(res.Errors), 5)])
	}
}

// BenchmarkCheck checks ten streams of 10000 events each, a case of about
// a minute at the default watch load; ns/event is per event checked.
func BenchmarkCheck(b *testing.B) {
	streams, truth := synth(9000, 1000, 10)
	b.ReportAllocs()
	var events int
	for b.Loop() {
		res := Check(streams, truth)
		if res.Verdict != Pass {
			b.Fatalf("%s: %q", res.Verdict, res.Errors)
		}
		events = res.Events
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(events), "ns/event")
}
