package wire

// Disaster recovery from a snapshot, run by the agent that owns the data
// directory. MethodSaveSnapshot saves a snapshot of the agent's running
// etcd (through its client URL) into the agent's base dir, replacing the
// last one; MethodRestoreSnapshot restores that snapshot, with etcd's own
// restore code (etcdutl), into the data dir of the given etcd argv — which
// must not exist: archive the old member first — and starts etcd with that
// argv, as the seed of a new cluster (its --name, --initial-cluster,
// --initial-advertise-peer-urls and --initial-cluster-token are the
// restore's).
const (
	MethodSaveSnapshot    = ServiceName + ".RPCSaveSnapshot"    // struct{} → Snapshot
	MethodRestoreSnapshot = ServiceName + ".RPCRestoreSnapshot" // []string (etcd argv) → int (pid)
)

// Snapshot is the reply of RPCSaveSnapshot.
type Snapshot struct {
	Path string // on the agent's host
	Size int64  // bytes
	// Version is the etcd storage version the snapshot was taken from.
	Version string
}
