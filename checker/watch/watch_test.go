package watch

import (
	"slices"
	"strings"
	"testing"

	"github.com/etcd-functional/functional/history"
)

const prefix, prefixEnd = "/k/", "/k0"

func put(key, value string, rev, create, version int64) history.WatchEvent {
	return history.WatchEvent{Type: history.WatchPut, Key: key, Value: value, ModRevision: rev, CreateRevision: create, Version: version}
}

func del(key string, rev int64) history.WatchEvent {
	return history.WatchEvent{Type: history.WatchDelete, Key: key, ModRevision: rev}
}

func withPrev(e history.WatchEvent, p history.WatchEvent) history.WatchEvent {
	e.PrevKV = &history.WatchKeyValue{Value: p.Value, ModRevision: p.ModRevision, CreateRevision: p.CreateRevision, Version: p.Version}
	return e
}

// The truth: revision 5 is a txn that writes two keys; revision 6
// re-creates a key deleted at 5.
var (
	a2 = put("/k/a", "a1", 2, 2, 1)
	b3 = put("/k/b", "b1", 3, 3, 1)
	a4 = put("/k/a", "a2", 4, 2, 2)
	b5 = put("/k/b", "b2", 5, 3, 2)
	a5 = del("/k/a", 5)
	a6 = put("/k/a", "a3", 6, 6, 1)
	b7 = del("/k/b", 7)
)

func truth() history.WatchTruth {
	return history.WatchTruth{Key: prefix, RangeEnd: prefixEnd, From: 2, To: 8,
		Events: []history.WatchEvent{a2, b3, a4, b5, a5, a6, b7}}
}

func resp(evs ...history.WatchEvent) history.WatchResponse {
	return history.WatchResponse{Revision: evs[len(evs)-1].ModRevision, Events: evs}
}

func bookmark(rev int64) history.WatchResponse {
	return history.WatchResponse{Revision: rev, ProgressNotify: true}
}

func created(rev int64) history.WatchResponse {
	return history.WatchResponse{Revision: rev, Created: true}
}

// prefixStream is a correct watch of the prefix from revision 2 with PrevKV.
func prefixStream() history.WatchStream {
	return history.WatchStream{
		Watcher: "cluster/past", Member: history.WatchMemberCluster,
		Request: history.WatchRequest{Key: prefix, RangeEnd: prefixEnd, Revision: 2, ProgressNotify: true, PrevKV: true},
		Responses: []history.WatchResponse{
			created(7),
			resp(a2),
			resp(b3, withPrev(a4, a2)),
			bookmark(4),
			resp(withPrev(b5, b3), withPrev(a5, a4)),
			resp(a6),
			resp(withPrev(b7, b5)),
			bookmark(8),
		},
	}
}

// keyStream is a correct watch of one key from now, created at revision 3.
func keyStream() history.WatchStream {
	return history.WatchStream{
		Watcher: "m0/current", Member: "http://127.0.0.1:2379",
		Request: history.WatchRequest{Key: "/k/a", ProgressNotify: true},
		Responses: []history.WatchResponse{
			created(3), resp(a4), bookmark(4), resp(a5), resp(a6), bookmark(8),
		},
	}
}

func TestWatchCheckPassesCorrectStreams(t *testing.T) {
	res := Check([]history.WatchStream{prefixStream(), keyStream()}, truth())
	if res.Verdict != Pass || len(res.Errors) > 0 {
		t.Fatalf("correct streams: verdict %s, errors:\n%s", res.Verdict, strings.Join(res.Errors, "\n"))
	}
	if res.Streams != 2 || res.Events != 7+3 {
		t.Errorf("counted %d streams, %d events; want 2, 10", res.Streams, res.Events)
	}
}

func TestWatchCheckFindsBrokenStreams(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(s *history.WatchStream)
		rule   string
		want   []string // more text the message must hold
	}{
		{"revision goes back", func(s *history.WatchStream) {
			s.Responses[5], s.Responses[6] = s.Responses[6], s.Responses[5]
		}, "ordered", []string{"from 7 to 6"}},
		{"duplicated event", func(s *history.WatchStream) {
			r := &s.Responses[2]
			r.Events = append(r.Events, r.Events[1])
		}, "unique", []string{`put "/k/a"@4 twice`}},
		{"missing event", func(s *history.WatchStream) {
			s.Responses[2].Events = s.Responses[2].Events[1:]
		}, "reliable", []string{`[put "/k/b"@3]`, "between revisions 2 and 8"}},
		{"split revision", func(s *history.WatchStream) {
			r := s.Responses[4]
			s.Responses = slices.Insert(s.Responses, 5, resp(r.Events[1]))
			s.Responses[4] = resp(r.Events[0])
		}, "atomic", []string{"revision 5 split"}},
		{"bookmark ahead of events", func(s *history.WatchStream) {
			s.Responses[3] = bookmark(5)
		}, "bookmarkable", []string{"progress notification at revision 5", `put "/k/b"@5`}},
		{"watch from R starts late", func(s *history.WatchStream) {
			s.Request.Revision = 4
			s.Responses = slices.Delete(s.Responses, 1, 4)
		}, "resumable", []string{"watch from revision 4 starts with put \"/k/b\"@5", `put "/k/a"@4`}},
		{"wrong PrevKV", func(s *history.WatchStream) {
			s.Responses[2].Events[1].PrevKV.Value = "other"
		}, "prevkv", []string{`put "/k/a"@4 has PrevKV {value "other"`, `want {value "a1" mod 2`}},
		{"missing PrevKV", func(s *history.WatchStream) {
			s.Responses[4].Events[1].PrevKV = nil
		}, "prevkv", []string{`delete "/k/a"@5 has no PrevKV`}},
		{"wrong IsCreate", func(s *history.WatchStream) {
			s.Responses[5].Events[0].CreateRevision = 2
		}, "iscreate", []string{`put "/k/a"@6`, "create revision 2 and version 1"}},
		{"event not in truth", func(s *history.WatchStream) {
			s.Responses[1].Events[0].Value = "forged"
		}, "truth", []string{`got put value "forged"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := prefixStream()
			tt.break_(&s)
			res := Check([]history.WatchStream{s, keyStream()}, truth())
			if res.Verdict != Fail {
				t.Fatalf("verdict %s, want fail; errors: %q", res.Verdict, res.Errors)
			}
			var msg string
			for _, e := range res.Errors {
				if strings.Contains(e, ": "+tt.rule+": ") {
					msg = e
					break
				}
			}
			if msg == "" {
				t.Fatalf("no %q failure; errors:\n%s", tt.rule, strings.Join(res.Errors, "\n"))
			}
			for _, w := range append(tt.want, "watcher cluster/past", "member cluster") {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			t.Logf("%s", strings.Join(res.Errors, "\n"))
		})
	}
}

// A watch from now that clientv3 resumed before its first event restarts
// at the Created revision: an event at that revision is not a failure.
func TestWatchCheckResumedFromNow(t *testing.T) {
	s := keyStream()
	s.Responses = []history.WatchResponse{created(4), resp(a4), resp(a5), resp(a6), bookmark(8)}
	if res := Check([]history.WatchStream{s}, truth()); res.Verdict != Pass {
		t.Fatalf("verdict %s: %q", res.Verdict, res.Errors)
	}
}

// A watch from a compacted start revision gets no PrevKV for an event at
// that revision; later events must still carry it.
func TestWatchCheckNoPrevKVAtStart(t *testing.T) {
	s := prefixStream()
	s.Request.Revision = 5
	s.Responses = []history.WatchResponse{created(7), resp(b5, a5), resp(a6), resp(withPrev(b7, b5))}
	if res := Check([]history.WatchStream{s}, truth()); res.Verdict != Pass {
		t.Fatalf("verdict %s: %q", res.Verdict, res.Errors)
	}
}

func TestWatchCheckUnknownWithoutTruth(t *testing.T) {
	s := keyStream()
	s.Request.Key = "/other"
	s.Responses = []history.WatchResponse{created(3), bookmark(8)}
	res := Check([]history.WatchStream{s}, truth())
	if res.Verdict != Unknown || len(res.Errors) != 1 || !strings.Contains(res.Errors[0], "no ground truth covers") {
		t.Fatalf("verdict %s, errors %q; want unknown for lack of truth", res.Verdict, res.Errors)
	}
	late := truth()
	late.From = 3
	res = Check([]history.WatchStream{prefixStream()}, late)
	if res.Verdict != Unknown {
		t.Fatalf("stream before the truth: verdict %s, errors %q; want unknown", res.Verdict, res.Errors)
	}
	res = Check([]history.WatchStream{prefixStream()})
	if res.Verdict != Unknown {
		t.Fatalf("no truth at all: verdict %s; want unknown", res.Verdict)
	}
}

// Each stream is checked against the first truth that covers its keys.
func TestWatchCheckSeveralTruths(t *testing.T) {
	other := history.WatchTruth{Key: "/t", From: 10, To: 11, Events: []history.WatchEvent{del("/t", 10), put("/t", "x", 11, 11, 1)}}
	late := history.WatchStream{Watcher: "tombstone", Member: "m0",
		Request:   history.WatchRequest{Key: "/t", Revision: 10},
		Responses: []history.WatchResponse{created(11), resp(put("/t", "x", 11, 11, 1))}}
	res := Check([]history.WatchStream{prefixStream(), late}, truth(), other)
	if res.Verdict != Fail || len(res.Errors) != 2 ||
		!strings.Contains(res.Errors[0], "resumable") || !strings.Contains(res.Errors[1], "reliable") {
		t.Fatalf("verdict %s, errors:\n%s\nwant resumable and reliable failures of the tombstone watcher", res.Verdict, strings.Join(res.Errors, "\n"))
	}
}

// A truth watch that lost an event (as every watch from a compaction
// revision did under etcd #18089) is mended by the recorded writes.
func TestWatchCheckTruthWithWrites(t *testing.T) {
	// The truth watched from the compaction revision 5, which lost the
	// delete of /k/a at 5.
	lossy := history.WatchTruth{Key: prefix, RangeEnd: prefixEnd, From: 5, To: 8, Events: []history.WatchEvent{b5, a6, b7}}
	s := keyStream()
	s.Request.Revision = 5
	s.Responses = []history.WatchResponse{created(7), resp(a6), bookmark(8)}
	if res := Check([]history.WatchStream{s}, lossy); res.Verdict != Pass {
		t.Fatalf("stream and truth agree on the loss: %s %q", res.Verdict, res.Errors)
	}
	res := Check([]history.WatchStream{s}, lossy.WithWrites([]history.WatchEvent{withPrev(a5, a4), put("/other", "x", 5, 5, 1)}))
	if res.Verdict != Fail || !strings.Contains(strings.Join(res.Errors, "\n"), `resumable: watch from revision 5 starts with put "/k/a"@6, but the first event at or after 5 is delete "/k/a"@5`) {
		t.Fatalf("with the recorded delete: %s, errors:\n%s", res.Verdict, strings.Join(res.Errors, "\n"))
	}
	t.Logf("%s", strings.Join(res.Errors, "\n"))
}
