package stresser

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.uber.org/goleak"

	"github.com/etcd-functional/functional/checker/linearizability"
	"github.com/etcd-functional/functional/history"
	"github.com/etcd-functional/functional/internal/etcdtest"
)

// checkHistory takes the paused stresser's history and checks it; it must
// pass.
func checkHistory(t *testing.T, s *Composite) history.History {
	t.Helper()
	h, err := s.History()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[history.Kind]int{}
	failed := 0
	for _, o := range h.Ops {
		if o.Pending {
			t.Errorf("Pause left a request half-recorded: %s", o)
		}
		if o.Failed() {
			failed++
			if failed <= 5 {
				t.Logf("failed: %s", o)
			}
		} else {
			kinds[o.Request.Kind]++
		}
	}
	res := linearizability.Check(h, time.Minute)
	t.Logf("%d ops over %v (%d failed, dropped %d) by kind %v: %s, %d checked in %v", len(h.Ops), h.Duration().Round(time.Millisecond),
		failed, h.Dropped, kinds, res.Verdict, res.Ops, res.Duration)
	if res.Verdict != linearizability.Pass {
		html, js, err := res.Save(t.TempDir(), "history")
		t.Fatalf("%s: %s (files %s %s %v)", res.Verdict, res.Error, html, js, err)
	}
	for _, k := range []history.Kind{history.Get, history.Put, history.Delete, history.Txn, history.LeaseGrant} {
		if kinds[k] == 0 {
			t.Errorf("no successful %s in %v", k, h.Duration())
		}
	}
	if len(h.Ops) == 0 || !h.Ops[0].Request.Snapshot && !h.Ops[0].Request.Writes() {
		t.Errorf("history does not start with the snapshot (or a lease cleanup): %v", h.Ops[:min(1, len(h.Ops))])
	}
	return h
}

// TestHistoryStresserLinearizable runs the history stresser beside the
// bulk load on a real healthy cluster, through two intervals, and checks
// each interval's history for linearizability.
func TestHistoryStresserLinearizable(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ignore := goleak.IgnoreCurrent()
	cfg := testConfig(c.ClientURLs(), NameKeys, NameLease, NameHistory)
	s := mustNew(t, cfg)
	if _, err := s.History(); err != nil {
		t.Fatalf("History before Stress: %v", err)
	}
	if err := s.Stress(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if _, err := s.History(); err == nil {
		t.Error("History while running: no error")
	}
	st := s.Pause()
	if st.Unexpected > 0 {
		t.Fatalf("unexpected errors: %v", st.Errors)
	}
	h1 := checkHistory(t, s)

	// Compacted as the tester does between cases: reads at a past
	// revision may now fail, as expected.
	cli, err := newClient(c.ClientURLs())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(context.Background(), revision(t, cli)); err != nil {
		t.Fatal(err)
	}
	cli.Close()

	// A member killed and restarted in the next interval: failed and
	// unknown-outcome requests, still linearizable.
	s.Resume()
	time.Sleep(time.Second)
	if err := c.Member(0).Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := c.Member(0).Restart(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	st = s.Pause()
	if st.Unexpected > 0 {
		t.Errorf("unexpected errors: %v", st.Errors)
	}
	t.Logf("second interval: %v, errors %v", st, st.Errors)
	h2 := checkHistory(t, s)
	if h2.From != h1.To || h2.Duration() <= 0 || h2.Duration() > 30*time.Second {
		t.Errorf("second window [%v, %v) after the first [%v, %v)", h2.From, h2.To, h1.From, h1.To)
	}
	// Only writes of unknown outcome are carried over from the first.
	for _, o := range h2.Ops {
		if o.Call < h1.To && !o.Unknown() {
			t.Errorf("second window holds %s from the first", o)
		}
	}
	tampered(t, h1)

	// A read at a compacted revision fails as expected, not as a bug.
	hs := s.members[len(s.members)-1].(*historyStresser)
	hc := &historyClient{id: 9, member: history.Cluster, cli: s.conns.all, mods: map[string]int64{}}
	if _, err := hs.do(context.Background(), hc, history.Request{Kind: history.Get, Key: historyPrefix, Revision: 1}); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("read at revision 1 after compaction: %v", err)
	}
	if st := s.rec.snapshot(time.Now()); st.Unexpected != 0 || st.Errors[classCompacted] != 1 {
		t.Errorf("read at a compacted revision counted as %v", st.Errors)
	}
	s.Close()
	// The restart started the member's own goroutines and health probes.
	goleak.VerifyNone(t, ignore,
		goleak.IgnoreAnyFunction("github.com/etcd-functional/functional/internal/etcdtest.(*Member).launch.func1"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"))
}

func TestHistoryConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Endpoints = []string{"127.0.0.1:2379"}
	cfg.Names = []string{NameHistory}
	cfg.History = HistoryConfig{}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("zero HistoryConfig accepted")
	}
	for _, f := range []string{"History.Clients", "History.Keys", "History.QPS", "History.MaxOps"} {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error does not name %s: %v", f, err)
		}
	}
	s, err := New(func() Config { c := cfg; c.Names = []string{NameKeys}; return c }())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.History(); err == nil {
		t.Error("History without the history stresser: no error")
	}
}

// tampered shows that the checker sees a wrong answer in a real history:
// one read's mod revision off by one fails the check, naming that read.
func tampered(t *testing.T, h history.History) {
	t.Helper()
	h.Ops = slices.Clone(h.Ops)
	for i := len(h.Ops) - 1; i >= 0; i-- {
		o := h.Ops[i]
		if o.Request.Kind != history.Get || o.Request.Revision != 0 || o.Failed() || len(o.Response.KVs) == 0 {
			continue
		}
		resp := *o.Response
		resp.KVs = slices.Clone(resp.KVs)
		resp.KVs[0].ModRevision++
		h.Ops[i].Response = &resp
		res := linearizability.Check(h, time.Minute)
		if res.Verdict != linearizability.Fail || !strings.Contains(res.Error, fmt.Sprintf("operation #%d,", i)) ||
			!strings.Contains(res.Error, "mod revision") {
			t.Fatalf("read #%d with a wrong mod revision: %s: %s", i, res.Verdict, res.Error)
		}
		html, js, err := res.Save(t.TempDir(), "tampered")
		if err != nil || html == "" || js == "" {
			t.Fatalf("save: %q %q %v", html, js, err)
		}
		t.Logf("tampered read found: %s", res.Error)
		return
	}
	t.Fatal("no read with a key to tamper with")
}

// TestHistoryStresserMemberPaused pauses a member (SIGSTOP, SIGCONT), the
// fault behind etcd #20418 (a stale read after the member resumes, fixed
// in v3.6.9), while the history is recorded: with a fixed etcd the
// history of requests that hung and timed out is still linearizable.
func TestHistoryStresserMemberPaused(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cfg := testConfig(c.ClientURLs(), NameKeys, NameHistory)
	cfg.RequestTimeout = 2 * time.Second
	s := mustNew(t, cfg)
	if err := s.Stress(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	pid := c.Member(0).PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	s.Pause()
	h := checkHistory(t, s)
	hung := 0
	for _, o := range h.Ops {
		if o.Member == cfg.Endpoints[0] && o.Failed() && o.Return-o.Call >= cfg.RequestTimeout {
			hung++
		}
	}
	if hung == 0 {
		t.Errorf("no request to the paused member %s timed out: the fault missed the history", cfg.Endpoints[0])
	}
}
