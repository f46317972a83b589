package stresser

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// memberState is what one member says of its own data.
type memberState struct {
	endpoint   string
	rev        int64  // its current revision
	hash       uint32 // HashKV at common
	compactRev int64
	err        error
}

// clusterStates asks every member for its revision, then for its HashKV at
// the lowest revision any of them has (a revision all of them hold), the
// way a hash checker compares members.
func clusterStates(ctx context.Context, cli *clientv3.Client, endpoints []string) (states []memberState, common int64) {
	states = make([]memberState, len(endpoints))
	for i, ep := range endpoints {
		states[i].endpoint = ep
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := cli.Status(rctx, ep)
		cancel()
		if err != nil {
			states[i].err = err
			continue
		}
		states[i].rev = st.Header.Revision
		if common == 0 || st.Header.Revision < common {
			common = st.Header.Revision
		}
	}
	for i := range states {
		if states[i].err != nil {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		h, err := cli.HashKV(rctx, states[i].endpoint, common)
		cancel()
		if err != nil {
			states[i].err = err
			continue
		}
		states[i].hash, states[i].compactRev = h.Hash, h.CompactRevision
	}
	return states, common
}

func agree(states []memberState) bool {
	for _, s := range states {
		if s.err != nil || s.rev != states[0].rev || s.hash != states[0].hash || s.compactRev != states[0].compactRev {
			return false
		}
	}
	return true
}

func describe(states []memberState, common int64) string {
	var b strings.Builder
	for i, s := range states {
		if s.err != nil {
			fmt.Fprintf(&b, "member %d (%s): %v\n", i, s.endpoint, s.err)
			continue
		}
		fmt.Fprintf(&b, "member %d (%s): revision %d, HashKV at %d = %08x (compact revision %d)\n",
			i, s.endpoint, s.rev, common, s.hash, s.compactRev)
	}
	return b.String()
}

// TestPastReadTxnDivergence is the proof on real releases that the key
// stresser's past-read txns reach etcd #18667: on v3.6.16 a txn whose
// branch holds a put and a read at a compacted revision is refused by the
// member that serves it and applied by the others, so the members diverge
// for good (revision and HashKV), and so does v3.5.15; v3.7.3, where it
// is fixed, stays in agreement under the same traffic. Each release runs from
// bin/etcd-vX.Y.Z (make etcd ETCD_VERSION=vX.Y.Z; $ETCD_BIN_DIR overrides
// the directory) and is skipped, with the reason, when it is not built.
func TestPastReadTxnDivergence(t *testing.T) {
	for _, tc := range []struct {
		release string
		diverge bool
	}{
		// Measured here: v3.5.15 diverges the same way (members at
		// revisions 239/233/242, three hashes), though #18667 is filed
		// against v3.6.
		{"v3.5.15", true},
		{"v3.6.8", true},
		{"v3.6.16", true},
		{"v3.7.3", false},
	} {
		t.Run(tc.release, func(t *testing.T) {
			bin, err := etcdtest.ReleaseBinary(tc.release)
			if err != nil {
				t.Skipf("etcd %s not built: %v", tc.release, err)
			}
			start := time.Now()
			c := etcdtest.StartCluster(t, 3, etcdtest.WithBinary(bin))
			cli := c.Client(t)
			cfg := pastTrafficConfig(c.ClientURLs())
			cfg.KeyWeights = KeyWeights{Put: 0.3, Txn: 0.7}
			s := mustNew(t, cfg)
			if err := s.Stress(context.Background()); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			s.Pause()
			compacted := compactNow(t, cli)
			s.Resume()
			time.Sleep(2 * time.Second)
			st := s.Close()
			t.Logf("etcd %s: compacted at %d, then %d txn-past ok, %d failed; errors %v",
				tc.release, compacted, st.Ops["txn-past"].Success, st.Ops["txn-past"].Failure, st.Errors)
			if st.Errors[ClassCompacted] == 0 {
				t.Fatalf("no request met a compacted revision: the traffic did not read below the compaction; ops %+v", st.Ops)
			}

			// Members that merely lag catch up within a moment; wait for
			// agreement up to 10 s before calling it divergence.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var states []memberState
			var common int64
			deadline := time.Now().Add(10 * time.Second)
			for {
				states, common = clusterStates(ctx, cli, c.ClientURLs())
				if agree(states) || !time.Now().Before(deadline) {
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			t.Logf("etcd %s after %v:\n%s", tc.release, time.Since(start).Round(100*time.Millisecond), describe(states, common))
			switch {
			case tc.diverge && agree(states):
				t.Errorf("etcd %s: members agree; etcd #18667 should have made them diverge", tc.release)
			case !tc.diverge && !agree(states):
				t.Errorf("etcd %s: members diverged under past-read txns:\n%s", tc.release, describe(states, common))
			}
		})
	}
}
