package tester

import (
	"fmt"
	"strconv"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
)

// EtcdSettings are the tuning settings the tester gives every member, named
// by what they do rather than by how one release spells them: v3.5 calls
// several of them --experimental-…, v3.6 renamed them and kept the old
// names as deprecated aliases, and v3.7 removed the aliases (a v3.7 member
// given a v3.5 spelling exits at once with "flag provided but not defined").
type EtcdSettings struct {
	HeartbeatInterval time.Duration // --heartbeat-interval, whole milliseconds
	ElectionTimeout   time.Duration // --election-timeout, whole milliseconds
	SnapshotCount     int           // --snapshot-count; 0 leaves etcd's default
	// SnapshotCatchupEntries is how many raft entries a leader keeps for
	// a slow follower after a snapshot; 0 leaves etcd's default (5000).
	// Releases before v3.5.14 have no such setting (EtcdFlagNotes says so).
	SnapshotCatchupEntries int
	// CorruptCheck turns on etcd's own corruption checks: the check of a
	// member's data against its peers' before it serves (initial corrupt
	// check) and the leader's check of its followers' hashes after every
	// compaction (compact hash check, from v3.5.5).
	CorruptCheck bool
	// CorruptCheckTime, when > 0, runs etcd's periodic cross-member
	// corruption check this often.
	CorruptCheckTime time.Duration
}

// MinEtcdVersion is the oldest release EtcdFlags knows the flags of.
var MinEtcdVersion = wire.EtcdVersion{Major: 3, Minor: 5, Patch: 0}

// SupportedEtcdVersion returns an error naming v and what is allowed if
// the tester cannot run it. Releases newer than the newest it knows (v3.7)
// are assumed to spell flags as v3.7 does.
func SupportedEtcdVersion(v wire.EtcdVersion) error {
	if v.Major != 3 || v.Compare(MinEtcdVersion) < 0 {
		return fmt.Errorf("etcd %v: not supported; the tester knows the flags of etcd %v and newer 3.x releases", v, MinEtcdVersion)
	}
	return nil
}

// StatusEtcdVersion is the release of the agent's etcd binary as its
// Status reports it, or an error naming the agent and why the release is
// unknown or not supported: the tester must not guess a member's flags.
func StatusEtcdVersion(agent string, st wire.Status) (wire.EtcdVersion, error) {
	if st.EtcdVersion == "" {
		why := st.EtcdVersionError
		if why == "" {
			why = "the agent does not report it (an agent older than Status.EtcdVersion?)"
		}
		return wire.EtcdVersion{}, fmt.Errorf("agent %s: etcd version unknown: %s", agent, why)
	}
	v, err := wire.ParseEtcdVersion(st.EtcdVersion)
	if err != nil {
		return wire.EtcdVersion{}, fmt.Errorf("agent %s: %w", agent, err)
	}
	if err := SupportedEtcdVersion(v); err != nil {
		return wire.EtcdVersion{}, fmt.Errorf("agent %s: %w", agent, err)
	}
	return v, nil
}

// Releases where a flag appeared or changed its name.
var (
	etcdCompactHashCheck = wire.EtcdVersion{Major: 3, Minor: 5, Patch: 5}  // --experimental-compact-hash-check-enabled
	etcdCatchupEntries   = wire.EtcdVersion{Major: 3, Minor: 5, Patch: 14} // --experimental-snapshot-catchup-entries
	etcdNewSpelling      = wire.EtcdVersion{Major: 3, Minor: 6, Patch: 0}  // --snapshot-catchup-entries, --feature-gates, --corrupt-check-time
)

// EtcdFlags returns s as the flags release v knows, in a fixed order.
// Settings v has no flag for are left out; EtcdFlagNotes names them. v must
// pass SupportedEtcdVersion.
func EtcdFlags(v wire.EtcdVersion, s EtcdSettings) []string {
	newSpelling := v.Compare(etcdNewSpelling) >= 0
	var flags []string
	add := func(name, value string) { flags = append(flags, "--"+name+"="+value) }
	if s.HeartbeatInterval > 0 {
		add("heartbeat-interval", strconv.FormatInt(s.HeartbeatInterval.Milliseconds(), 10))
	}
	if s.ElectionTimeout > 0 {
		add("election-timeout", strconv.FormatInt(s.ElectionTimeout.Milliseconds(), 10))
	}
	if s.SnapshotCount > 0 {
		add("snapshot-count", strconv.Itoa(s.SnapshotCount))
	}
	if s.SnapshotCatchupEntries > 0 {
		switch {
		case newSpelling:
			add("snapshot-catchup-entries", strconv.Itoa(s.SnapshotCatchupEntries))
		case v.Compare(etcdCatchupEntries) >= 0:
			add("experimental-snapshot-catchup-entries", strconv.Itoa(s.SnapshotCatchupEntries))
		}
	}
	if s.CorruptCheck {
		switch {
		case newSpelling:
			// v3.6 made both checks feature gates; one flag holds every gate.
			add("feature-gates", "InitialCorruptCheck=true,CompactHashCheck=true")
		default:
			add("experimental-initial-corrupt-check", "true")
			if v.Compare(etcdCompactHashCheck) >= 0 {
				add("experimental-compact-hash-check-enabled", "true")
			}
		}
	}
	if s.CorruptCheckTime > 0 {
		name := "experimental-corrupt-check-time"
		if newSpelling {
			name = "corrupt-check-time"
		}
		add(name, s.CorruptCheckTime.String())
	}
	return flags
}

// EtcdFlagNotes names the settings of s that release v cannot take, and
// what etcd does instead, for the run's log and report: a run of an old
// release should not silently differ from what the settings say.
func EtcdFlagNotes(v wire.EtcdVersion, s EtcdSettings) []string {
	var notes []string
	if s.SnapshotCatchupEntries > 0 && v.Compare(etcdCatchupEntries) < 0 {
		notes = append(notes, fmt.Sprintf("etcd %v has no snapshot catch-up entries setting (it came in %v): etcd's own 5000 apply instead of %d",
			v, etcdCatchupEntries, s.SnapshotCatchupEntries))
	}
	if s.CorruptCheck && v.Compare(etcdCompactHashCheck) < 0 {
		notes = append(notes, fmt.Sprintf("etcd %v has no compact hash check (it came in %v): only the initial corruption check runs",
			v, etcdCompactHashCheck))
	}
	return notes
}
