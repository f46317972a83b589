package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/snapshot"
	etcdutl "go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"

	"github.com/etcd-functional/functional/agent/wire"
)

// snapshotFile is where SaveSnapshot keeps the one snapshot it has.
const snapshotFile = "snapshot.db"

// snapshotTimeout bounds a save: a snapshot of the suite's data is small.
const snapshotTimeout = 2 * time.Minute

// SaveSnapshot saves a snapshot of the running etcd into the base dir.
func (a *Agent) SaveSnapshot() (wire.Snapshot, error) {
	if err := a.lockOp(); err != nil {
		return wire.Snapshot{}, err
	}
	defer a.op.Unlock()
	a.mu.Lock()
	p, args := a.proc, a.args
	a.mu.Unlock()
	if p == nil || p.exited() || args == nil {
		return wire.Snapshot{}, errors.New("save snapshot: etcd is not running")
	}
	urls, ok := args.lookup("listen-client-urls")
	if !ok {
		return wire.Snapshot{}, errors.New("save snapshot: etcd was started without --listen-client-urls")
	}
	ep := strings.Split(urls, ",")[0]
	path := filepath.Join(a.cfg.BaseDir, snapshotFile)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return wire.Snapshot{}, fmt.Errorf("save snapshot: remove the last one: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	ver, err := snapshot.SaveWithVersion(ctx, zap.NewNop(), clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second}, path)
	if err != nil {
		return wire.Snapshot{}, fmt.Errorf("save snapshot from %s: %w", ep, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return wire.Snapshot{}, fmt.Errorf("save snapshot: %w", err)
	}
	plog.Infof("saved a snapshot of etcd at %s in %s (%d bytes, version %s)", ep, path, fi.Size(), ver)
	return wire.Snapshot{Path: path, Size: fi.Size(), Version: ver}, nil
}

// RestoreSnapshot restores the last saved snapshot into the data dir of
// args and starts etcd with args.
func (a *Agent) RestoreSnapshot(args []string) (int, error) {
	if err := a.lockOp(); err != nil {
		return 0, err
	}
	defer a.op.Unlock()
	v, err := validateArgs(a.cfg.BaseDir, args)
	if err != nil {
		return 0, err
	}
	a.mu.Lock()
	running := a.proc != nil && !a.proc.exited()
	a.mu.Unlock()
	if running {
		return 0, errors.New("restore snapshot: etcd is running: archive it first")
	}
	snap := filepath.Join(a.cfg.BaseDir, snapshotFile)
	if _, err := os.Stat(snap); err != nil {
		return 0, fmt.Errorf("restore snapshot: no snapshot saved on this agent: %w", err)
	}
	if _, err := os.Stat(v.dataDir()); err == nil {
		return 0, fmt.Errorf("restore snapshot: data dir %s exists: archive the old member first", v.dataDir())
	}
	name, _ := v.lookup("name")
	peers, _ := v.lookup("initial-advertise-peer-urls")
	initial, _ := v.lookup("initial-cluster")
	token, _ := v.lookup("initial-cluster-token")
	if name == "" || peers == "" || initial == "" {
		return 0, errors.New("restore snapshot: the argv needs --name, --initial-advertise-peer-urls and --initial-cluster")
	}
	cfg := etcdutl.RestoreConfig{
		SnapshotPath:        snap,
		Name:                name,
		OutputDataDir:       v.dataDir(),
		OutputWALDir:        v.walDir(),
		PeerURLs:            strings.Split(peers, ","),
		InitialCluster:      initial,
		InitialClusterToken: token,
	}
	if err := etcdutl.NewV3(zap.NewNop()).Restore(cfg); err != nil {
		return 0, fmt.Errorf("restore snapshot into %s: %w", v.dataDir(), err)
	}
	plog.Infof("restored %s into %s", snap, v.dataDir())
	return a.start(v)
}

func (s *service) RPCSaveSnapshot(_ wire.Empty, reply *wire.Snapshot) (err error) {
	defer s.log(wire.MethodSaveSnapshot, &err)
	*reply, err = s.a.SaveSnapshot()
	return err
}

func (s *service) RPCRestoreSnapshot(args []string, pid *int) (err error) {
	defer s.log(wire.MethodRestoreSnapshot, &err)
	*pid, err = s.a.RestoreSnapshot(args)
	return err
}
