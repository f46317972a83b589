package htmlreport

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/etcd-functional/functional/stresser"
)

// caseNames is the tester's catalogue as -list-cases prints it: a full
// round has 29 cases.
var caseNames = []string{
	"SIGTERM_ONE_FOLLOWER", "SIGTERM_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT", "SIGTERM_LEADER",
	"SIGTERM_LEADER_UNTIL_TRIGGER_SNAPSHOT", "SIGTERM_QUORUM", "SIGTERM_ALL", "SIGKILL_ONE_FOLLOWER",
	"SIGKILL_LEADER", "SIGKILL_QUORUM", "SIGKILL_ALL", "SIGSTOP_ONE_FOLLOWER", "SIGSTOP_LEADER",
	"SIGSTOP_QUORUM", "SIGQUIT_AND_REMOVE_ONE_FOLLOWER", "BLACKHOLE_PEER_PORT_TX_RX_ONE_FOLLOWER",
	"BLACKHOLE_PEER_PORT_TX_RX_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT", "BLACKHOLE_PEER_PORT_TX_RX_LEADER",
	"BLACKHOLE_PEER_PORT_TX_RX_QUORUM", "BLACKHOLE_PEER_PORT_TX_RX_ALL", "DELAY_PEER_PORT_TX_RX_ONE_FOLLOWER",
	"DELAY_PEER_PORT_TX_RX_LEADER", "DELAY_PEER_PORT_TX_RX_QUORUM", "DELAY_PEER_PORT_TX_RX_ALL",
	"RANDOM_DELAY_PEER_PORT_TX_RX_ONE_FOLLOWER", "RANDOM_DELAY_PEER_PORT_TX_RX_LEADER",
	"RANDOM_DELAY_PEER_PORT_TX_RX_QUORUM", "RANDOM_DELAY_PEER_PORT_TX_RX_ALL", "NO_FAIL_WITH_STRESS",
	"NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS",
}

// synthOpts shapes a synthetic run.
type synthOpts struct {
	rounds, cases int
	failed        map[[2]int]bool // {round, index} of failed cases
	interrupted   bool            // the run stopped in its last round
	additive      bool            // checks, unavailability, config, versions
}

// synthStats is the load of one case as the stresser records it, per
// second: steady QPS, a dip with deadline errors and slow requests while
// the fault holds, and a tail of unavailable errors while it recovers.
func synthStats(rng *rand.Rand, start time.Time, warm, fault, recov, tail int) *stresser.Stats {
	st := &stresser.Stats{Start: start, Errors: map[string]int64{}, Ops: map[string]stresser.OpStats{}}
	total := warm + fault + recov + tail
	for i := 0; i < total; i++ {
		sec := stresser.SecondStat{Unix: start.Unix() + int64(i)}
		ok, p50, p99 := 950+rng.Int64N(100), 2*time.Millisecond, 9*time.Millisecond
		errs := map[string]int64{}
		switch {
		case i >= warm && i < warm+fault:
			ok = 300 + rng.Int64N(200)
			errs[stresser.ClassDeadline] = 20 + rng.Int64N(40)
			p50, p99 = 6*time.Millisecond, time.Duration(400+rng.IntN(600))*time.Millisecond
		case i >= warm+fault && i < warm+fault+recov:
			ok = 600 + rng.Int64N(200)
			errs[stresser.ClassUnavailable] = 5 + rng.Int64N(20)
			p50, p99 = 4*time.Millisecond, 120*time.Millisecond
		}
		sec.Success, sec.P50, sec.P99 = ok, p50+time.Duration(rng.IntN(500))*time.Microsecond, p99
		for c, n := range errs {
			sec.Failure += n
			st.Errors[c] += n
		}
		if len(errs) > 0 {
			sec.Errors = errs
		}
		st.Success += sec.Success
		st.Failure += sec.Failure
		st.Series = append(st.Series, sec)
	}
	st.Duration = time.Duration(total) * time.Second
	st.QPS = float64(st.Success+st.Failure) / st.Duration.Seconds()
	st.Ops["put"] = stresser.OpStats{Success: st.Success / 2, Failure: st.Failure / 2}
	st.Ops["range"] = stresser.OpStats{Success: st.Success - st.Success/2, Failure: st.Failure - st.Failure/2}
	st.Latency = stresser.Latency{Count: st.Success + st.Failure, P50: 2 * time.Millisecond, P90: 5 * time.Millisecond,
		P99: 300 * time.Millisecond, Max: time.Second}
	return st
}

// synth builds a results.json as the tester writes it (the same JSON
// names; stresser.Stats itself for the load) and returns its bytes.
func synth(t testing.TB, o synthOpts) []byte {
	rng := rand.New(rand.NewPCG(7, uint64(o.rounds*100+o.cases)))
	start := time.Date(2026, 11, 30, 14, 0, 0, 0, time.UTC)
	now := start
	schedule := caseNames[:o.cases]
	type caseJSON struct {
		Case                  string            `json:"case"`
		Index                 int               `json:"index"`
		Passed                bool              `json:"passed"`
		Error                 string            `json:"error,omitempty"`
		Targets               []string          `json:"targets"`
		InjectTime            time.Time         `json:"inject_time,omitzero"`
		RecoverTime           time.Time         `json:"recover_time,omitzero"`
		HealthyTime           time.Time         `json:"healthy_time,omitzero"`
		RecoverySeconds       float64           `json:"recovery_seconds"`
		FirstWriteSeconds     float64           `json:"first_write_seconds"`
		Stress                *stresser.Stats   `json:"stress,omitempty"`
		Archives              map[string]string `json:"archives,omitempty"`
		Checks                []check           `json:"checks,omitempty"`
		UnavailabilitySeconds *float64          `json:"unavailability_seconds,omitempty"`
	}
	type roundJSON struct {
		Round           int        `json:"round"`
		Passed          bool       `json:"passed"`
		Cases           []caseJSON `json:"cases"`
		CompactRevision int64      `json:"compact_revision,omitempty"`
	}
	rep := map[string]any{
		"seed": 1764511200, "recovery_timeout_seconds": 30.0,
		"agents":   []string{"127.0.0.1:19027", "127.0.0.1:19028", "127.0.0.1:19029"},
		"schedule": schedule, "started": start,
		"skipped": []skip{{"SIGQUIT_AND_REMOVE_LEADER", "needs -peer-proxy"}},
	}
	if o.additive {
		rep["config"] = map[string]any{"stresser": map[string]any{"names": []string{"keys", "lease"}, "qps": 1000},
			"case_delay": "3s", "election_timeout": "1s", "consistency_check": true}
		rep["etcd_versions"] = map[string]string{"s1": "3.6.16", "s2": "3.6.16", "s3": "3.6.16"}
		rep["tester_version"] = "v0.0.0-synthetic"
		rep["findings"] = []finding{{Round: 1, Index: 2, Case: "SIGQUIT_AND_REMOVE_ONE_FOLLOWER", What: "ready only after a client write",
			Members: []string{"s3"}, Time: start.Add(time.Minute),
			Detail: "not healthy after 15.000s without a client write (s3: status: connection refused); healthy 0.210s after the tester began to write"}}
	}
	var rounds []roundJSON
	passed := true
	for r := 1; r <= o.rounds; r++ {
		rd := roundJSON{Round: r, Passed: true, Cases: []caseJSON{}}
		for i, name := range schedule {
			if o.interrupted && r == o.rounds && i == len(schedule)/2 {
				break
			}
			idx := i + 1
			c := caseJSON{Case: name, Index: idx, Passed: true, Targets: []string{fmt.Sprintf("s%d", 1+rng.IntN(3))}}
			warm, fault, recov, tail := 1, 3, 1+rng.IntN(3), 2
			if name == "NO_FAIL_WITH_STRESS" {
				// A case held long: its series needs downsampling.
				fault = 600
			}
			begin := now
			c.InjectTime = begin.Add(time.Duration(warm) * time.Second)
			c.RecoverTime = c.InjectTime.Add(time.Duration(fault) * time.Second)
			rs := float64(recov) - 0.5 + rng.Float64()
			c.HealthyTime = c.RecoverTime.Add(time.Duration(rs * float64(time.Second)))
			c.RecoverySeconds = rs
			c.FirstWriteSeconds = rs * 0.8
			if name != "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS" {
				c.Stress = synthStats(rng, begin, warm, fault, recov, tail)
			}
			if o.additive {
				u := rs + float64(fault)*0.3
				c.UnavailabilitySeconds = &u
				c.Checks = []check{{Name: "hash", Verdict: "pass"}, {Name: "stresser", Verdict: "pass",
					Figures: map[string]float64{"unexpected": 0}}}
			}
			if o.failed[[2]int{r, idx}] {
				c.Passed, rd.Passed, passed = false, false, false
				c.HealthyTime, c.RecoverySeconds, c.FirstWriteSeconds = time.Time{}, 0, 0
				c.Error = "after recovery (timeout 30s): s2: context deadline exceeded; member s2 is not healthy: <leader unknown>"
				c.Archives = map[string]string{}
				for m := 1; m <= 3; m++ {
					c.Archives[fmt.Sprintf("s%d", m)] = fmt.Sprintf("/tmp/etcd-agent-%d/failure_archive/20261130-140102_round%d_case%d_%s", m, r, idx, name)
				}
				c.Checks = append(c.Checks, check{Name: "linearizability", Verdict: "fail",
					Error:   "history is not linearizable: get k17 returned 4 after put k17=5 was acknowledged",
					Figures: map[string]float64{"operations": 15234, "seconds": 1.7},
					Files:   []string{fmt.Sprintf("round%d_case%d/linearizability.html", r, idx)}})
			}
			rd.Cases = append(rd.Cases, c)
			now = c.RecoverTime.Add(time.Duration(recov+tail) * time.Second)
		}
		rd.CompactRevision = int64(r * 48213)
		rounds = append(rounds, rd)
	}
	rep["rounds"] = rounds
	rep["passed"] = passed && !o.interrupted
	rep["interrupted"] = o.interrupted
	rep["finished"] = now
	if o.interrupted {
		rep["error"] = "interrupted"
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// synthDir writes a synthetic results.json into a new directory.
func synthDir(t testing.TB, o synthOpts) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ResultsFile), synth(t, o), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}
