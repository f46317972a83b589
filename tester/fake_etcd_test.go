package tester

import (
	"context"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeEtcds serve, on the client ports of a fake cluster's members, just
// what the tester's probes ask of etcd: Status and Put. Their raft state
// (who leads, at which term, who is down) is the test's to set, so that a
// test can move leadership or flip health at a moment of its choosing.
type fakeEtcds struct {
	mu     sync.Mutex
	leader uint64 // raft ID; member i has ID i+1
	term   uint64
	down   map[int]bool
	// view overrides what member i reports as leader and term.
	view map[int][2]uint64
	// onStatus, if set, runs before member i answers a Status, with
	// the number of Statuses it has answered so far (under the lock).
	onStatus func(i, calls int)
	calls    map[int]int
	// putErr, if set, fails a Put through member i.
	putErr func(i int) error
	// puts is when each Put arrived, through any member.
	puts []time.Time
	// stuckUntilPutAfter makes member i refuse reads until a Put arrives
	// after the time given: a member that becomes ready only after a
	// client write.
	stuckUntilPutAfter map[int]time.Time
	// readyAt makes member i refuse reads until then.
	readyAt map[int]time.Time
}

func fakeID(i int) uint64 { return uint64(i + 1) }

// startFakeEtcds serves a fake etcd on every member's client port of c.
func startFakeEtcds(t *testing.T, c *Cluster) *fakeEtcds {
	t.Helper()
	fe := &fakeEtcds{leader: fakeID(0), term: 5, down: map[int]bool{}, view: map[int][2]uint64{}, calls: map[int]int{},
		stuckUntilPutAfter: map[int]time.Time{}, readyAt: map[int]time.Time{}}
	for i, m := range c.members {
		ln, err := net.Listen("tcp", net.JoinHostPort(m.Host, strconv.Itoa(m.ClientPort)))
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer()
		pb.RegisterMaintenanceServer(s, &fakeMaintenance{fe: fe, i: i})
		pb.RegisterKVServer(s, &fakeKV{fe: fe, i: i})
		done := make(chan struct{})
		go func() { defer close(done); s.Serve(ln) }()
		t.Cleanup(func() { s.Stop(); <-done })
	}
	// The members' clients dialled before anything listened: wait until
	// each gets through, so that a test starts from a reachable cluster.
	for _, m := range c.members {
		deadline := time.Now().Add(10 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := memberStatus(ctx, m)
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("fake etcd of %s not reachable: %v", m.Name, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	fe.calls = map[int]int{}
	return fe
}

// putsAfter returns the arrival times of the Puts after t.
func (fe *fakeEtcds) putsAfter(t time.Time) []time.Time {
	fe.mu.Lock()
	defer fe.mu.Unlock()
	var after []time.Time
	for _, p := range fe.puts {
		if p.After(t) {
			after = append(after, p)
		}
	}
	return after
}

func (fe *fakeEtcds) set(f func(fe *fakeEtcds)) {
	fe.mu.Lock()
	defer fe.mu.Unlock()
	f(fe)
}

type fakeMaintenance struct {
	pb.UnimplementedMaintenanceServer
	fe *fakeEtcds
	i  int
}

func (m *fakeMaintenance) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	fe := m.fe
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if fe.onStatus != nil {
		fe.onStatus(m.i, fe.calls[m.i])
	}
	fe.calls[m.i]++
	if fe.down[m.i] {
		return nil, status.Error(codes.Unavailable, "fake etcd down")
	}
	lead, term := fe.leader, fe.term
	if v, ok := fe.view[m.i]; ok {
		lead, term = v[0], v[1]
	}
	return &pb.StatusResponse{Header: &pb.ResponseHeader{MemberId: fakeID(m.i), RaftTerm: term}, Leader: lead, RaftTerm: term}, nil
}

type fakeKV struct {
	pb.UnimplementedKVServer
	fe *fakeEtcds
	i  int
}

func (k *fakeKV) Range(context.Context, *pb.RangeRequest) (*pb.RangeResponse, error) {
	fe := k.fe
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if fe.down[k.i] {
		return nil, status.Error(codes.Unavailable, "fake etcd down")
	}
	if t, ok := fe.readyAt[k.i]; ok && time.Now().Before(t) {
		return nil, status.Error(codes.Unavailable, "fake etcd not ready yet")
	}
	if t, ok := fe.stuckUntilPutAfter[k.i]; ok && !slices.ContainsFunc(fe.puts, func(p time.Time) bool { return p.After(t) }) {
		return nil, status.Error(codes.Unavailable, "fake etcd not ready until written to")
	}
	return &pb.RangeResponse{Header: &pb.ResponseHeader{MemberId: fakeID(k.i)}}, nil
}

func (k *fakeKV) Put(context.Context, *pb.PutRequest) (*pb.PutResponse, error) {
	fe := k.fe
	fe.mu.Lock()
	down, putErr := fe.down[k.i], fe.putErr
	fe.mu.Unlock()
	if down {
		return nil, status.Error(codes.Unavailable, "fake etcd down")
	}
	if putErr != nil {
		if err := putErr(k.i); err != nil {
			return nil, err
		}
	}
	fe.mu.Lock()
	fe.puts = append(fe.puts, time.Now())
	fe.mu.Unlock()
	return &pb.PutResponse{Header: &pb.ResponseHeader{MemberId: fakeID(k.i)}}, nil
}
