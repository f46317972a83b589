package etcdtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// alive reports whether a process with pid exists (signal 0 probes it).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func TestClusterServesRestartsAndCleansUp(t *testing.T) {
	var pids []int
	t.Run("cluster", func(t *testing.T) {
		c := StartCluster(t, 3, WithSnapshotCount(1000), WithTiming(50*time.Millisecond, 500*time.Millisecond))
		if got := len(c.ClientURLs()); got != 3 {
			t.Fatalf("ClientURLs: %d urls, want 3", got)
		}
		for i := 0; i < c.Size(); i++ {
			pids = append(pids, c.Member(i).PID())
		}
		cli := c.Client(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := cli.Put(ctx, "k", "v1"); err != nil {
			t.Fatalf("put: %v", err)
		}

		m := c.Member(1)
		old := m.PID()
		if err := m.Kill(); err != nil {
			t.Fatalf("kill: %v", err)
		}
		if m.Running() || alive(old) {
			t.Fatalf("member 1 (pid %d) still running after Kill", old)
		}
		// Quorum survives one member down. A put in flight when the leader
		// died times out on the server, so retry until one is applied.
		var err error
		for try := 0; try < 5; try++ {
			if _, err = cli.Put(ctx, "k", "v2"); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("put with one member down: %v", err)
		}
		if err := m.Restart(); err != nil {
			t.Fatalf("restart: %v", err)
		}
		if m.PID() == old || !m.Running() {
			t.Fatalf("restart: pid %d (old %d), running %v", m.PID(), old, m.Running())
		}
		pids = append(pids, m.PID())
		// The restarted member kept its data and caught up.
		mcli := c.Client(t)
		mcli.SetEndpoints(m.ClientURL)
		resp, err := mcli.Get(ctx, "k")
		if err != nil {
			t.Fatalf("get from restarted member: %v", err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v2" {
			t.Fatalf("restarted member has %v, want k=v2", resp.Kvs)
		}
		if _, err := os.Stat(filepath.Join(m.DataDir, "member")); err != nil {
			t.Fatalf("data dir: %v", err)
		}
	})
	// The subtest's cleanup stopped every process and waited for it.
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d still alive after cleanup", pid)
		}
	}
}

func TestBinaryFromEnv(t *testing.T) {
	t.Setenv(EnvBinary, filepath.Join(t.TempDir(), "missing-etcd"))
	if _, err := Binary(); err == nil {
		t.Fatal("Binary with a missing $ETCD_BIN: no error")
	}
	p := filepath.Join(t.TempDir(), "etcd")
	if err := os.WriteFile(p, nil, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvBinary, p)
	if got, err := Binary(); err != nil || got != p {
		t.Fatalf("Binary() = %q, %v; want %q", got, err, p)
	}
}
