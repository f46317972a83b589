package linearizability

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/history"
)

const (
	m1 = "http://127.0.0.1:2379"
	m2 = "http://127.0.0.1:2380"
)

// hb builds crafted histories; times are in milliseconds.
type hb struct{ h history.History }

func newHB() *hb {
	b := &hb{}
	// The snapshot: k=v0 (mod 5, create 5, version 1), revision 10.
	b.ok(0, history.Cluster, 0, 1, history.Request{Kind: history.Get, Key: "k", End: "l", Snapshot: true},
		&history.Response{Revision: 10, Count: 1, KVs: []history.KV{hkv("k", "v0", 5, 5, 1)}})
	return b
}

// fork copies b, so that two histories can go on from one prefix.
func (b *hb) fork() *hb {
	c := *b
	c.h.Ops = slices.Clone(b.h.Ops)
	return &c
}

func hkv(key, value string, mod, create, version int64) history.KV {
	return history.KV{Key: key, Value: value, ModRevision: mod, CreateRevision: create, Version: version}
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func (b *hb) ok(client int, member string, call, ret int, req history.Request, resp *history.Response) *hb {
	b.h.Ops = append(b.h.Ops, history.Op{Client: client, Member: member, Call: ms(call), Return: ms(ret), Request: req, Response: resp})
	b.h.To = max(b.h.To, ms(ret))
	return b
}

func (b *hb) failed(client int, call, ret int, req history.Request) *hb {
	b.h.Ops = append(b.h.Ops, history.Op{Client: client, Member: m1, Call: ms(call), Return: ms(ret), Request: req, Error: "context deadline exceeded"})
	b.h.To = max(b.h.To, ms(ret))
	return b
}

func put(k, v string) history.Request { return history.Request{Kind: history.Put, Key: k, Value: v} }
func get(k string) history.Request    { return history.Request{Kind: history.Get, Key: k} }
func rev(r int64) *history.Response   { return &history.Response{Revision: r} }
func read(r int64, kvs ...history.KV) *history.Response {
	return &history.Response{Revision: r, Count: int64(len(kvs)), KVs: kvs}
}

func mustVerdict(t *testing.T, h history.History, want Verdict, wantErr ...string) Result {
	t.Helper()
	res := Check(h, 10*time.Second)
	if res.Verdict != want {
		t.Fatalf("verdict %s, want %s: %s", res.Verdict, want, res.Error)
	}
	for _, w := range wantErr {
		if !strings.Contains(res.Error, w) {
			t.Errorf("error %q\n does not say %q", res.Error, w)
		}
	}
	t.Logf("%s in %v (%d ops): %s", res.Verdict, res.Duration, res.Ops, res.Error)
	return res
}

func TestStaleRead(t *testing.T) {
	h := newHB().
		ok(1, m1, 2, 3, put("k", "v1"), rev(11)).
		ok(2, m2, 4, 5, get("k"), read(11, hkv("k", "v0", 5, 5, 1))).h
	res := mustVerdict(t, h, Fail, "operation #2", m2, `"k" has value "v0", want "v1"`, "rev=11")
	dir := t.TempDir()
	html, js, err := res.Save(dir, "case-1-linearizability")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{html, js} {
		if st, err := os.Stat(p); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", p, err)
		}
	}
	f, _ := os.Open(js)
	defer f.Close()
	back, err := history.ReadJSON(f)
	if err != nil || len(back.Ops) != 3 {
		t.Fatalf("saved history: %v, %d ops", err, len(back.Ops))
	}
}

func TestVanishedWrite(t *testing.T) {
	h := newHB().
		ok(1, m1, 2, 3, put("j", "v1"), rev(11)).
		ok(2, history.Cluster, 4, 5, history.Request{Kind: history.Get, Key: "a", End: "z"}, read(12, hkv("k", "v0", 5, 5, 1))).h
	mustVerdict(t, h, Fail, "operation #2", "has 1 keys (count 1), want 2")
}

func TestRevisionGoesBack(t *testing.T) {
	h := newHB().
		ok(1, m1, 2, 3, put("k", "v1"), rev(14)).
		ok(2, m2, 4, 5, get("j"), read(13)).h
	mustVerdict(t, h, Fail, "operation #2", "header revision 13 is below revision 14")
}

func TestWrongModRevision(t *testing.T) {
	h := newHB().
		ok(1, m1, 2, 3, put("k", "v1"), rev(11)).
		ok(2, m2, 4, 5, get("k"), read(12, hkv("k", "v1", 12, 5, 2))).h
	mustVerdict(t, h, Fail, "operation #2", `"k" has mod revision 12, want 11`)
}

func TestReadAtRevision(t *testing.T) {
	at := func(k string, r int64) history.Request {
		return history.Request{Kind: history.Get, Key: k, Revision: r}
	}
	base := newHB().ok(1, m1, 2, 3, put("k", "v1"), rev(11))
	good := base.fork()
	good.ok(2, m2, 4, 5, at("k", 10), read(11, hkv("k", "v0", 5, 5, 1)))
	mustVerdict(t, good.h, Pass)
	// At revision 11 the key has been v1 since 11.
	bad := newHB().ok(1, m1, 2, 3, put("k", "v1"), rev(11)).ok(2, m2, 4, 5, at("k", 11), read(12, hkv("k", "v0", 5, 5, 1)))
	mustVerdict(t, bad.h, Fail, `has value "v0", want "v1"`)
	future := newHB().ok(2, m2, 4, 5, at("k", 12), read(11, hkv("k", "v0", 5, 5, 1)))
	mustVerdict(t, future.h, Fail, "future revision")
}

// TestConcurrentUnknownAndRetried is a correct history with concurrent
// clients, unrecorded writes of other clients moving the revision,
// failed writes that never took effect, one that did, and one applied
// twice by a retry.
func TestConcurrentUnknownAndRetried(t *testing.T) {
	h := newHB().
		failed(1, 2, 30, put("k", "x")).         // applied twice: revisions 12 and 14
		ok(2, m2, 3, 6, put("j", "y"), rev(13)). // concurrent; 11 was someone else's
		ok(3, m1, 4, 8, get("k"), read(13, hkv("k", "x", 12, 5, 2))).
		failed(2, 7, 9, put("j", "never")). // never applied
		ok(3, m1, 10, 12, get("j"), read(15, hkv("j", "y", 13, 13, 1))).
		ok(4, m2, 11, 13, get("k"), read(15, hkv("k", "x", 14, 5, 3))).
		failed(4, 14, 16, history.Request{Kind: history.Delete, Key: "j"}). // applied at 17
		ok(2, history.Cluster, 15, 20, history.Request{Kind: history.Get, Key: "a", End: "z"},
			read(18, hkv("k", "x", 14, 5, 3))).
		ok(3, m2, 21, 22, history.Request{Kind: history.Txn,
			Compares: []history.Compare{{Key: "k", Target: history.TargetMod, Op: "=", Number: 14}},
			Then:     []history.Request{put("j", "t1"), get("k")},
			Else:     []history.Request{get("j")}},
			&history.Response{Revision: 19, Succeeded: true, Results: []history.Response{{}, {Count: 1, KVs: []history.KV{hkv("k", "x", 14, 5, 3)}}}}).
		ok(2, m1, 23, 24, get("j"), read(19, hkv("j", "t1", 19, 19, 1))).h
	mustVerdict(t, h, Pass)

	// Three applications of the failed put are one too many.
	b := newHB().
		failed(1, 2, 30, put("k", "x")).
		ok(3, m1, 4, 8, get("k"), read(13, hkv("k", "x", 13, 5, 4)))
	mustVerdict(t, b.h, Fail, `"k" has version 4, want`)
}

func TestLeases(t *testing.T) {
	b := newHB().
		ok(1, m1, 2, 3, history.Request{Kind: history.LeaseGrant, TTL: 60}, &history.Response{Revision: 10, Lease: 0x55, TTL: 60}).
		ok(1, m1, 4, 5, history.Request{Kind: history.Put, Key: "j", Value: "l1", Lease: 0x55}, rev(11)).
		ok(2, m2, 6, 7, get("j"), read(11, history.KV{Key: "j", Value: "l1", ModRevision: 11, CreateRevision: 11, Version: 1, Lease: 0x55})).
		ok(1, m1, 8, 9, history.Request{Kind: history.LeaseRevoke, Lease: 0x55}, rev(12))
	good := b.fork()
	good.ok(2, m2, 10, 11, get("j"), read(12))
	mustVerdict(t, good.h, Pass)
	b.ok(2, m2, 10, 11, get("j"), read(12, history.KV{Key: "j", Value: "l1", ModRevision: 11, CreateRevision: 11, Version: 1, Lease: 0x55}))
	mustVerdict(t, b.h, Fail, "has 1 keys (count 1), want 0")

	// A put with a revoked lease cannot succeed; a lease the snapshot
	// could not show (it has no keys) can be revoked.
	reuse := good.fork()
	reuse.ok(1, m1, 12, 13, history.Request{Kind: history.Put, Key: "j", Value: "l2", Lease: 0x55}, rev(13))
	mustVerdict(t, reuse.h, Fail, "with lease 55, which was revoked")
	unseen := newHB().ok(1, m1, 2, 3, history.Request{Kind: history.LeaseRevoke, Lease: 0x77}, rev(10))
	mustVerdict(t, unseen.h, Pass)
}

func TestNoSnapshotIsUnknown(t *testing.T) {
	h := history.History{Ops: []history.Op{{Call: 1, Return: 2, Request: get("k"), Response: read(3)}}}
	mustVerdict(t, h, Unknown, "no successful snapshot")
}

func TestTimeoutIsUnknown(t *testing.T) {
	b := newHB()
	for i := range 20000 {
		b.ok(i%4, m1, 2+2*i, 3+2*i, get("k"), read(10, hkv("k", "v0", 5, 5, 1)))
	}
	res := Check(b.h, time.Microsecond)
	if res.Verdict != Unknown || !strings.Contains(res.Error, "timed out") {
		t.Fatalf("verdict %s: %s", res.Verdict, res.Error)
	}
}
