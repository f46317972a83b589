package history

import "testing"

func TestWatchRequestRanges(t *testing.T) {
	prefix := WatchRequest{Key: "/a/", RangeEnd: "/a0"}
	one := WatchRequest{Key: "/a/x"}
	from := WatchRequest{Key: "/a/", RangeEnd: "\x00"}
	for _, tt := range []struct {
		r    WatchRequest
		key  string
		want bool
	}{
		{prefix, "/a/x", true}, {prefix, "/a0", false}, {prefix, "/a", false},
		{one, "/a/x", true}, {one, "/a/xy", false},
		{from, "/z", true}, {from, "/a", false},
	} {
		if got := tt.r.Matches(tt.key); got != tt.want {
			t.Errorf("%+v.Matches(%q) = %v, want %v", tt.r, tt.key, got, tt.want)
		}
	}
	for _, tt := range []struct {
		truth WatchTruth
		r     WatchRequest
		want  bool
	}{
		{WatchTruth{Key: "/a/", RangeEnd: "/a0"}, one, true},
		{WatchTruth{Key: "/a/", RangeEnd: "/a0"}, prefix, true},
		{WatchTruth{Key: "/a/", RangeEnd: "/a0"}, from, false},
		{WatchTruth{Key: "/a/x"}, one, true},
		{WatchTruth{Key: "/a/x"}, prefix, false},
		{WatchTruth{Key: "/", RangeEnd: "\x00"}, from, true},
		{WatchTruth{Key: "/a/y", RangeEnd: "/a0"}, prefix, false},
	} {
		if got := tt.truth.Covers(tt.r); got != tt.want {
			t.Errorf("truth %q..%q covers %+v = %v, want %v", tt.truth.Key, tt.truth.RangeEnd, tt.r, got, tt.want)
		}
	}
}

func TestWatchTruthWithWrites(t *testing.T) {
	tr := WatchTruth{Key: "/a/", RangeEnd: "/a0", From: 5, To: 9, Events: []WatchEvent{
		{Type: WatchPut, Key: "/a/x", ModRevision: 6}, {Type: WatchPut, Key: "/a/y", ModRevision: 8},
	}}
	got := tr.WithWrites([]WatchEvent{
		{Type: WatchDelete, Key: "/a/x", ModRevision: 5}, // lost by the watch
		{Type: WatchPut, Key: "/a/x", ModRevision: 6},    // already there
		{Type: WatchPut, Key: "/b", ModRevision: 7},      // not its keys
		{Type: WatchPut, Key: "/a/z", ModRevision: 10},   // after To
		{Type: WatchPut, Key: "/a/x", ModRevision: 3},    // before From: state only
	})
	var revs []int64
	for _, e := range got.Events {
		revs = append(revs, e.ModRevision)
	}
	if want := []int64{3, 5, 6, 8}; len(revs) != len(want) || revs[0] != 3 || revs[1] != 5 || revs[2] != 6 || revs[3] != 8 {
		t.Fatalf("events at %v, want %v", revs, want)
	}
	if len(tr.Events) != 2 {
		t.Fatalf("WithWrites changed its receiver: %d events", len(tr.Events))
	}
}
