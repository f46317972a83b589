package tester

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/stresser"
)

// TestReportStaysBounded: however many cases a run plays, results.json
// keeps the totals of all, every failure, and only the latest rounds in
// full; cases.jsonl gets every case, one line each, of about the same
// size, with the series of passed cases left out.
func TestReportStaysBounded(t *testing.T) {
	dir := t.TempDir()
	out, err := openCasesFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	r := Report{Rounds: []RoundResult{}, Skipped: []Skip{}}
	series := make([]stresser.SecondStat, 20)
	const rounds, perRound = 60, 29
	var sizes []int
	for round := 1; round <= rounds; round++ {
		r.trimRounds()
		r.Rounds = append(r.Rounds, RoundResult{Round: round, Passed: true})
		rr := &r.Rounds[len(r.Rounds)-1]
		for k := 1; k <= perRound; k++ {
			res := CaseResult{Case: "SIGKILL_LEADER", Index: k, Passed: k != 7 || round%10 != 0,
				RecoverySeconds: float64(k) / 10, HealthyTime: time.Now(),
				Stress: &stresser.Stats{QPS: 1000, Series: series}}
			r.addCase(rr, res)
			if err := out.append(round, res); err != nil {
				t.Fatal(err)
			}
		}
		b, _ := json.Marshal(r)
		sizes = append(sizes, len(b))
	}
	if first, last := sizes[15], sizes[len(sizes)-1]; last > first+first/10 {
		t.Errorf("results.json grew from %d bytes (round 16) to %d (round %d); want it flat", first, last, rounds)
	}
	kept := 0
	for _, rd := range r.Rounds {
		kept += len(rd.Cases)
	}
	if kept < reportKeepCases || kept > reportKeepCases+2*perRound || r.RoundsDropped+len(r.Rounds) != rounds {
		t.Errorf("kept %d cases in %d rounds, %d dropped; want %d..%d cases", kept, len(r.Rounds), r.RoundsDropped, reportKeepCases, reportKeepCases+2*perRound)
	}
	tot := r.Totals["SIGKILL_LEADER"]
	if tot.Runs != rounds*perRound || tot.Failed != rounds/10 || len(r.Failures) != rounds/10 || tot.Recovery.Count != rounds*perRound {
		t.Errorf("totals %+v, %d failures kept", tot, len(r.Failures))
	}
	if tot.Recovery.Min != 0.1 || tot.Recovery.Max != 2.9 {
		t.Errorf("recovery distribution %+v", tot.Recovery)
	}

	f, err := os.Open(filepath.Join(dir, CasesFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	lines, withSeries := 0, 0
	for sc.Scan() {
		var l CaseLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %d: %v", lines+1, err)
		}
		if l.Stress != nil && len(l.Stress.Series) > 0 {
			if l.Passed {
				t.Fatalf("line %d: a passed case kept its series", lines+1)
			}
			withSeries++
		}
		lines++
	}
	if lines != rounds*perRound || withSeries != rounds/10 {
		t.Errorf("%s: %d lines, %d with a series; want %d and %d", CasesFile, lines, withSeries, rounds*perRound, rounds/10)
	}
}

// Findings outlive the rounds kept in full: every one is listed in
// results.json (and counted per case) and in the summary, with its case.
func TestFindingsKeptAndSummarised(t *testing.T) {
	r := Report{Rounds: []RoundResult{}, Skipped: []Skip{}}
	f := Finding{What: FindingNeededWrite, Members: []string{"etcd-2"}, Time: time.Now(), Detail: "not healthy after 15.000s without a client write"}
	const rounds, perRound = 20, 29
	for round := 1; round <= rounds; round++ {
		rr := r.startRound(round)
		for k := 1; k <= perRound; k++ {
			res := CaseResult{Case: "SIGQUIT_AND_REMOVE_ONE_FOLLOWER", Index: k, Passed: true, HealthyTime: time.Now()}
			if k == 5 && round%5 == 0 {
				res.Findings = []Finding{f}
			}
			r.addCase(rr, res)
		}
		r.endRound(rr)
	}
	if r.RoundsDropped == 0 {
		t.Fatal("no round dropped: the test proves nothing")
	}
	if len(r.Findings) != rounds/5 || r.Findings[0].Round != 5 || r.Findings[0].Index != 5 || r.Totals["SIGQUIT_AND_REMOVE_ONE_FOLLOWER"].Findings != rounds/5 {
		t.Errorf("findings %+v, totals %+v", r.Findings, r.Totals["SIGQUIT_AND_REMOVE_ONE_FOLLOWER"])
	}
	var b strings.Builder
	r.summary(&b)
	want := "finding round 5 case 5 SIGQUIT_AND_REMOVE_ONE_FOLLOWER: etcd-2 ready only after a client write: not healthy after 15.000s without a client write"
	if !strings.Contains(b.String(), want) {
		t.Errorf("summary lacks %q:\n%s", want, b.String())
	}
}
