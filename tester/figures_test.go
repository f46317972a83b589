package tester

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// figureTolerance is the accuracy the figures promise.
const figureTolerance = 50 * time.Millisecond

func within(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	d := got.Sub(want)
	t.Logf("%s: measured %v after the true moment", what, d)
	if d < 0 || d > figureTolerance {
		t.Errorf("%s measured %v off the true moment; want within [0, %v]", what, d, figureTolerance)
	}
}

// Members whose health flips at a known moment: the recovery figure lands
// within 50 ms of it, though one member's probes hang until then (as a
// paused member's do): probes overlap, so the hung one stretches nothing.
func TestRecoveryFigureExact(t *testing.T) {
	flip := time.Now().Add(400 * time.Millisecond)
	errDown := errors.New("down")
	probe := func(ctx context.Context, i int) (*pb.StatusResponse, error) {
		if time.Now().After(flip) {
			return &pb.StatusResponse{}, nil
		}
		if i == 2 {
			<-ctx.Done() // hangs for the probe's whole timeout
			return nil, ctx.Err()
		}
		return nil, errDown
	}
	judge := func(_ []*pb.StatusResponse, errs []error) map[string]string {
		r := map[string]string{}
		for i, err := range errs {
			if err != nil {
				r[memberName(i)] = err.Error()
			}
		}
		return r
	}
	healthy, err := waitHealthyFine(context.Background(), 3, figureInterval, 10*time.Second, probe, judge)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "recovery", healthy, flip)

	// Never healthy: the reasons of the last round, when time runs out.
	flip = time.Now().Add(time.Hour)
	_, err = waitHealthyFine(context.Background(), 3, figureInterval, 300*time.Millisecond, probe, judge)
	var ue *UnhealthyError
	if !errors.As(err, &ue) || ue.Reasons["etcd-0"] != "down" {
		t.Errorf("never healthy: %v", err)
	}
}

// Writes that fail from injection until a known moment, through every
// member (one of them hanging until its timeout): the unavailability is
// that moment less the injection, within 50 ms; the first write after a
// mark is within 50 ms of the mark when writes succeed by then.
func TestWriteFiguresExact(t *testing.T) {
	inject := time.Now().Add(100 * time.Millisecond)
	back := inject.Add(300 * time.Millisecond)
	errDown := errors.New("no leader")
	put := func(ctx context.Context, i int) error {
		now := time.Now()
		if now.Before(inject) || !now.Before(back) {
			return nil
		}
		if i == 1 {
			<-ctx.Done()
			return ctx.Err()
		}
		return errDown
	}
	w := newWriteFigures()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); probeWrites(ctx, 3, figureInterval, 300*time.Millisecond, put, w) }()
	defer func() { cancel(); <-done }()

	time.Sleep(time.Until(back.Add(200 * time.Millisecond)))
	mark := time.Now()
	w.setMark(mark)
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	first, err := w.waitFirstWrite(wctx)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "first write after the mark", first, mark)
	// Rounds that began before back may still be hanging: wait them out.
	time.Sleep(400 * time.Millisecond)
	cancel()
	<-done
	d, ok := w.unavailability(inject)
	if !ok {
		t.Fatal("unavailability not measured")
	}
	within(t, "unavailability", inject.Add(d), back)
}

// Rounds end out of order: a failure that started later than a success
// makes the success not count; a success that started before the last
// failure does not end the unavailability.
func TestWriteFiguresOrderByStart(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	w := newWriteFigures()
	w.add(at(30), at(31), nil)              // a success …
	w.add(at(20), at(300), errors.New("x")) // … after a failure that ended late
	w.add(at(40), at(500), errors.New("x")) // the last failure
	w.add(at(35), at(36), nil)              // before the last failure: does not count
	w.add(at(60), at(62), nil)
	w.add(at(50), at(70), nil) // earliest-started success after it
	if d, ok := w.unavailability(t0); !ok || d != 70*time.Millisecond {
		t.Errorf("unavailability %v %v, want 70ms", d, ok)
	}
	if d, ok := newWriteFigures().unavailability(t0); !ok || d != 0 {
		t.Errorf("no failure: %v %v, want 0", d, ok)
	}
}
