package client_test

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

var stubFailpoints = []wire.Failpoint{{Name: "raftAfterSave", Term: "sleep(10)"}, {Name: "raftBeforeSave"}}

const stubFailpointCount = 7

func (x *stubService) RPCFailpoints(a wire.Empty, reply *[]wire.Failpoint) error {
	*reply = stubFailpoints
	return x.do(wire.MethodFailpoints, a)
}
func (x *stubService) RPCArmFailpoint(a wire.ArmFailpoint, _ *wire.Empty) error {
	return x.do(wire.MethodArmFailpoint, a)
}
func (x *stubService) RPCDisarmFailpoint(name string, _ *wire.Empty) error {
	return x.do(wire.MethodDisarmFailpoint, name)
}
func (x *stubService) RPCFailpointCount(name string, n *int) error {
	*n = stubFailpointCount
	return x.do(wire.MethodFailpointCount, name)
}

func failpointer(t *testing.T, c client.Agent) client.Failpointer {
	t.Helper()
	fp, ok := c.(client.Failpointer)
	if !ok {
		t.Fatalf("client %T does not implement client.Failpointer", c)
	}
	return fp
}

// TestFailpointMethodsMapToTheirWireMethods calls each failpoint method once
// against the stub and checks the wire method, its argument and the reply.
func TestFailpointMethodsMapToTheirWireMethods(t *testing.T) {
	t.Parallel()
	s := newStub(t)
	fp := failpointer(t, newClient(t, s.addr, client.Config{RetryFor: 5 * time.Second}))
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		call      func() (any, error)
		method    string
		args      any
		wantReply any
	}{
		{"Failpoints", func() (any, error) { return fp.Failpoints(ctx) }, wire.MethodFailpoints, wire.Empty{}, stubFailpoints},
		{"ArmFailpoint", func() (any, error) { return nil, fp.ArmFailpoint(ctx, "raftBeforeSave", "1*panic") },
			wire.MethodArmFailpoint, wire.ArmFailpoint{Name: "raftBeforeSave", Term: "1*panic"}, nil},
		{"DisarmFailpoint", func() (any, error) { return nil, fp.DisarmFailpoint(ctx, "raftBeforeSave") },
			wire.MethodDisarmFailpoint, "raftBeforeSave", nil},
		{"FailpointCount", func() (any, error) { return fp.FailpointCount(ctx, "raftAfterSave") },
			wire.MethodFailpointCount, "raftAfterSave", stubFailpointCount},
	} {
		before, _ := s.record()
		reply, err := tc.call()
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if tc.wantReply != nil && !reflect.DeepEqual(reply, tc.wantReply) {
			t.Errorf("%s returned %#v, want %#v", tc.name, reply, tc.wantReply)
		}
		after, _ := s.record()
		if got, want := after[len(before):], []stubCall{{tc.method, tc.args}}; !reflect.DeepEqual(got, want) {
			t.Errorf("%s sent %#v, want %#v", tc.name, got, want)
		}
	}
}

// TestFailpointReadsAreResentAfterALostConnection: listing and counting
// change nothing, so a call whose connection died mid-call is sent again;
// arming and disarming are not, and say the outcome is unknown.
func TestFailpointReadsAreResentAfterALostConnection(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		method string
		call   func(client.Failpointer) error
		resent bool
	}{
		{wire.MethodFailpoints, func(fp client.Failpointer) error { _, err := fp.Failpoints(context.Background()); return err }, true},
		{wire.MethodFailpointCount, func(fp client.Failpointer) error {
			_, err := fp.FailpointCount(context.Background(), "raftAfterSave")
			return err
		}, true},
		{wire.MethodArmFailpoint, func(fp client.Failpointer) error {
			return fp.ArmFailpoint(context.Background(), "raftBeforeSave", "panic")
		}, false},
		{wire.MethodDisarmFailpoint, func(fp client.Failpointer) error {
			return fp.DisarmFailpoint(context.Background(), "raftBeforeSave")
		}, false},
	} {
		t.Run(tc.method, func(t *testing.T) {
			t.Parallel()
			s := newStub(t)
			fp := failpointer(t, newClient(t, s.addr, client.Config{RetryFor: 5 * time.Second}))
			s.setBehaviour(cutOnce(tc.method))
			err := tc.call(fp)
			calls, _ := s.record()
			n := countMethod(calls, tc.method)
			switch {
			case tc.resent && (err != nil || n != 2):
				t.Errorf("%s with the first connection cut: error %v, sent %d times; want success after 2", tc.method, err, n)
			case !tc.resent && (err == nil || !strings.Contains(err.Error(), "may or may not have taken effect") || n != 1):
				t.Errorf("%s with the connection cut: error %v, sent %d times; want one send and an error saying the outcome is unknown", tc.method, err, n)
			}
		})
	}
}
