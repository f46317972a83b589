package tester

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// Failpoint faults: an etcd built with gofail failpoints (make build
// FAILPOINTS=1) is armed, through its agent, to panic or sleep at a named
// point of its code. They hit the narrow windows a SIGKILL from outside
// hits only by luck — between saving raft entries and applying them, in
// the middle of a backend commit — where etcd's worst bugs have lived
// (#14370 lost an acknowledged write at raftBeforeSave).

// failpoint is one failpoint armed with one term on a member. Undo
// disarms it, or restarts the etcd it made panic (a new process starts
// with every failpoint disarmed).
type failpoint struct{ name, term string }

func (f failpoint) String() string { return "failpoint " + f.name + "=" + f.term }
func (failpoint) Scope() Scope     { return ScopeProcess }

func (f failpoint) Inject(ctx context.Context, c *Cluster, i int) error {
	return c.agentCall(ctx, i, agentCallTimeout, "arm "+f.name+" on", func(ctx context.Context, a client.Agent) error {
		return a.ArmFailpoint(ctx, f.name, f.term)
	})
}

func (f failpoint) Undo(ctx context.Context, c *Cluster, i int) error {
	return c.agentCall(ctx, i, agentCallTimeout, "disarm "+f.name+" of", func(ctx context.Context, a client.Agent) error {
		st, err := a.Status(ctx)
		if err != nil {
			return err
		}
		if st.State == wire.StateStarted && st.Pid != 0 {
			return a.DisarmFailpoint(ctx, f.name)
		}
		_, err = a.Restart(ctx)
		return err
	})
}

// Present: a status cannot show an armed failpoint, so the record stays
// until Undo has succeeded.
func (failpoint) Present(*Cluster, int, wire.Status) bool { return true }

// Failpoints that the load reaches within a hold: on the write path of
// raft, the WAL and the backend. The ones reached only by compaction,
// defragmentation, snapshots or membership changes would not fire while
// a case holds, and a failpoint that never fires proves nothing.
var loadFailpoints = []string{
	"raftBeforeSave", "raftAfterSave", "raftBeforeLeaderSend", "raftBeforeFollowerSend", "raftBeforeAdvance",
	"walBeforeSync", "walAfterSync",
	"beforeApplyOneEntryNormal", "beforeCommit", "afterCommit",
	"commitBeforePreCommitHook", "commitAfterPreCommitHook",
	"beforeStartDBTxn", "afterStartDBTxn", "beforeWritebackBuf", "afterWritebackBuf",
}

// failpointCase arms a failpoint on its targets, holds the fault (a case
// whose failpoint fired on none of them fails, naming it: an armed
// failpoint that never fired proved nothing), and recovers by disarming it
// and restarting the members it made panic.
//
// FAILPOINTS draws, from the case's seeded source, one of the
// loadFailpoints the members have and a target (one follower, the
// leader, a quorum or all), and arms it to panic: over rounds it covers
// upstream's failpoints × panic × targets. FAILPOINTS_WITH_DISK_IO_LATENCY
// makes the leader sleep after every save of raft entries, as a slow disk
// would.
type failpointCase struct {
	diskLatency time.Duration // 0: the panic case
	fp          failpoint     // what the last Inject armed
	targets     []int
}

func (fc *failpointCase) Name() string {
	if fc.diskLatency > 0 {
		return "FAILPOINTS_WITH_DISK_IO_LATENCY"
	}
	return "FAILPOINTS"
}

func (fc *failpointCase) Describe() string {
	if fc.diskLatency > 0 {
		return fmt.Sprintf("make the leader sleep %v after every save of raft entries (gofail raftAfterSave=sleep), as a slow disk would, then disarm it,", fc.diskLatency)
	}
	return "arm a failpoint on etcd's write path (gofail, drawn from the seed) to panic on one follower, the leader, a quorum or all, then disarm it and restart who panicked,"
}

func (fc *failpointCase) Requires(env Env) error {
	if env.Members < 3 {
		return fmt.Errorf("needs at least 3 members for follower, leader and quorum targets; there are %d agents", env.Members)
	}
	if env.NoFailpoints != "" {
		return fmt.Errorf("%s; build etcd with failpoints: make run FAILPOINTS=1", env.NoFailpoints)
	}
	return nil
}

func (fc *failpointCase) Inject(ctx context.Context, c *Cluster) error {
	if fc.diskLatency > 0 {
		lead, err := c.Leader(ctx)
		if err != nil {
			return fmt.Errorf("pick leader: %w", err)
		}
		fc.fp, fc.targets = failpoint{"raftAfterSave", fmt.Sprintf("sleep(%d)", fc.diskLatency.Milliseconds())}, []int{lead}
		c.recordDrawn(fc.fp)
		return c.Inject(ctx, lead, fc.fp)
	}
	var have []wire.Failpoint
	err := c.agentCall(ctx, 0, agentCallTimeout, "list the failpoints of", func(ctx context.Context, a client.Agent) error {
		var err error
		have, err = a.Failpoints(ctx)
		return err
	})
	if err != nil {
		return err
	}
	var names []string
	for _, n := range loadFailpoints {
		if slices.ContainsFunc(have, func(f wire.Failpoint) bool { return f.Name == n }) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return fmt.Errorf("the members have none of the failpoints the load reaches (%s)", strings.Join(loadFailpoints, ", "))
	}
	r := c.rand()
	name := names[r.IntN(len(names))]
	t := []target{oneFollower{}, leader{}, quorum{}, all{}}[r.IntN(4)]
	// A failpoint of one role is armed where that role is: on followers
	// only, a leader's would never fire.
	switch name {
	case "raftBeforeLeaderSend":
		t = leader{}
	case "raftBeforeFollowerSend":
		t = oneFollower{}
	}
	if fc.targets, err = t.pick(ctx, c); err != nil {
		return fmt.Errorf("pick %s: %w", strings.ToLower(t.suffix()), err)
	}
	// The panic names the failpoint, so that the member's log says which.
	fc.fp = failpoint{name, fmt.Sprintf("panic(%q)", name)}
	c.recordDrawn(fc.fp) // the report names the failpoint the seed drew
	errs := make([]error, len(fc.targets))
	for k, i := range fc.targets {
		errs[k] = c.Inject(ctx, i, fc.fp)
	}
	return errors.Join(errs...)
}

// Hold holds the fault for d, and fails if by then the failpoint has fired
// on none of the targets: a panic shows as the member's etcd gone, a sleep
// as its count. Some failpoints fire in one role only (raftBeforeLeaderSend
// on the leader), and the first panic changes the roles of the others, so
// a target where it stayed silent is logged, not failed, when it fired on
// another.
func (fc *failpointCase) Hold(ctx context.Context, c *Cluster, d time.Duration) error {
	if err := sleep(ctx, d); err != nil {
		return err
	}
	var silent []string
	for _, i := range fc.targets {
		fired := false
		err := c.agentCall(ctx, i, agentCallTimeout, "has "+fc.fp.name+" fired on", func(ctx context.Context, a client.Agent) error {
			st, err := a.Status(ctx)
			if err != nil {
				return err
			}
			if st.State != wire.StateStarted || st.Pid == 0 {
				fired = true // it panicked
				return nil
			}
			n, err := a.FailpointCount(ctx, fc.fp.name)
			fired = n > 0
			return err
		})
		if err != nil {
			return err
		}
		if !fired {
			silent = append(silent, c.members[i].Name)
		}
	}
	switch {
	case len(silent) == len(fc.targets):
		return fmt.Errorf("%s armed on %s never fired within %v: the case proved nothing", fc.fp, strings.Join(silent, ", "), d)
	case len(silent) > 0:
		plog.Noticef("%s fired, but not on %s within %v", fc.fp, strings.Join(silent, ", "), d)
	}
	return nil
}

func (fc *failpointCase) Recover(ctx context.Context, c *Cluster) error { return c.Heal(ctx) }

// panicked: the targets of a panic term panicked on purpose (see the logs
// check).
func (fc *failpointCase) panicked() []int {
	if strings.HasPrefix(fc.fp.term, "panic") {
		return fc.targets
	}
	return nil
}
