package history

import (
	"bytes"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"
)

func TestRecorderBoundedAndCut(t *testing.T) {
	r := NewRecorder(3)
	a, ok := r.Call(0, "m1", Request{Kind: Put, Key: "k", Value: "v1"})
	if !ok {
		t.Fatal("first call refused")
	}
	b, _ := r.Call(1, Cluster, Request{Kind: Get, Key: "k"})
	c, _ := r.Call(2, "m2", Request{Kind: Delete, Key: "k"})
	if _, ok := r.Call(3, "m3", Request{Kind: Get, Key: "k"}); ok {
		t.Fatal("call beyond the bound accepted")
	}
	r.Return(a, &Response{Revision: 2}, nil)
	r.Return(b, nil, errors.New("boom"))
	mid := r.Now()
	h := r.Cut(0, mid)
	if len(h.Ops) != 3 || h.Dropped != 1 {
		t.Fatalf("cut: %d ops, %d dropped; want 3, 1", len(h.Ops), h.Dropped)
	}
	if h.Ops[0].Failed() || h.Ops[0].Response.Revision != 2 || h.Ops[0].Return < h.Ops[0].Call {
		t.Errorf("op 0: %+v", h.Ops[0])
	}
	if !h.Ops[1].Failed() || h.Ops[1].Unknown() || h.Ops[1].Error != "boom" {
		t.Errorf("failed read: %+v (unknown=%v)", h.Ops[1], h.Ops[1].Unknown())
	}
	if !h.Ops[2].Pending || !h.Ops[2].Unknown() || h.Ops[2].Return != mid {
		t.Errorf("in-flight delete: %+v", h.Ops[2])
	}
	// The cut op's late answer is ignored; there is room again.
	r.Return(c, &Response{Revision: 3}, nil)
	if r.Len() != 0 {
		t.Fatalf("%d ops left after cut", r.Len())
	}
	d, ok := r.Call(0, "m1", Request{Kind: Get, Key: "k"})
	if !ok {
		t.Fatal("call refused after cut")
	}
	r.Return(d, &Response{Revision: 3}, nil)
	before := r.Now()
	e, _ := r.Call(1, "m1", Request{Kind: Get, Key: "k"})
	r.Return(e, &Response{Revision: 3}, nil)
	h = r.Cut(before, r.Now())
	if len(h.Ops) != 1 || h.Ops[0].Client != 1 || h.Dropped != 0 {
		t.Fatalf("window cut: %+v", h)
	}
}

func TestRecorderConcurrent(t *testing.T) {
	r := NewRecorder(1000)
	var wg sync.WaitGroup
	for c := range 8 {
		wg.Go(func() {
			for range 200 {
				id, ok := r.Call(c, Cluster, Request{Kind: Get, Key: "k"})
				if ok {
					r.Return(id, &Response{Revision: 1}, nil)
				}
			}
		})
	}
	cuts := 0
	for range 20 {
		h := r.Cut(0, r.Now())
		cuts += len(h.Ops) + h.Dropped
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	h := r.Cut(0, r.Now())
	if got := cuts + len(h.Ops) + h.Dropped; got != 1600 {
		t.Fatalf("%d ops and drops in all; want 1600", got)
	}
	for i := 1; i < len(h.Ops); i++ {
		if h.Ops[i].Call < h.Ops[i-1].Call {
			t.Fatal("ops not in call order")
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	h := History{Start: time.Unix(1700000000, 5).UTC(), From: 1, To: 99, Dropped: 2, Ops: []Op{
		{Client: 1, Member: "http://127.0.0.1:2379", Call: 3, Return: 9,
			Request: Request{Kind: Txn, Compares: []Compare{{Key: "k", Target: TargetMod, Op: "=", Number: 4}},
				Then: []Request{{Kind: Put, Key: "k", Value: "v", Lease: 7}}, Else: []Request{{Kind: Get, Key: "k"}}},
			Response: &Response{Revision: 5, Succeeded: true, Results: []Response{{}}}},
		{Client: 2, Member: Cluster, Call: 4, Return: 99, Pending: true, Request: Request{Kind: Delete, Key: "a", End: "b"}, Error: "x"},
	}}
	var buf bytes.Buffer
	if err := h.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	got, err := ReadJSON(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, h)
	}
}
