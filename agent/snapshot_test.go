package agent_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/client"
)

// TestSaveAndRestoreSnapshot: the agent saves a snapshot of its etcd and
// restores a new member from it after the old one is archived; the keys
// written before the snapshot are read back, the one after it is not.
// Restoring over a running etcd, or with no snapshot, is refused.
func TestSaveAndRestoreSnapshot(t *testing.T) {
	s := serve(t, agent.Config{EtcdPath: etcdBinary(t)})
	c := s.client(t, client.Config{})
	sn := c.(client.Snapshotter)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := newMember(t, "snap0", false)
	_, err := sn.RestoreSnapshot(ctx, m.args)
	expectErr(t, "RestoreSnapshot with none saved", err, "no snapshot saved")
	if _, err := c.Start(ctx, m.args); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.clientURL()}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for k := range 20 {
		if _, err := cli.Put(ctx, fmt.Sprintf("before/%d", k), "v"); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := sn.SaveSnapshot(ctx)
	if err != nil || snap.Size == 0 {
		t.Fatalf("SaveSnapshot: %+v %v", snap, err)
	}
	if _, err := cli.Put(ctx, "after", "v"); err != nil {
		t.Fatal(err)
	}
	_, err = sn.RestoreSnapshot(ctx, m.args)
	expectErr(t, "RestoreSnapshot over a running etcd", err, "etcd is running")
	if _, err := c.Archive(ctx, "before-restore"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.RestoreSnapshot(ctx, m.args); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	resp, err := cli.Get(ctx, "before/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 20 {
		t.Fatalf("keys written before the snapshot after the restore: %v %v, want 20", resp, err)
	}
	if resp, err := cli.Get(ctx, "after"); err != nil || resp.Count != 0 {
		t.Fatalf("key written after the snapshot: %v %v, want gone", resp, err)
	}
}
