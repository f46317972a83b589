package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/internal/agenttest"
	"github.com/etcd-functional/functional/tester"
)

// BenchmarkSoak runs the etcd-tester command through a few hundred short
// cases against real agents and etcd, and reports what a run of any length
// must keep flat: the tester's resident memory, and the bytes it writes
// per case (results.json, summary.txt, index.html rewritten, a line of
// cases.jsonl appended), each near the start and near the end of the run.
// "Start" is the first window after results.json holds as many rounds in
// full as it keeps (it grows until then, by design), "end" the last.
//
//	go test -run '^$' -bench Soak -benchtime 1x ./cmd/etcd-tester/
func BenchmarkSoak(b *testing.B) {
	const rounds, perRound, window = 10, 30, 20
	ta := agenttest.Start(b, 3)
	bin := testerBinary(b)
	sched := strings.TrimSuffix(strings.Repeat("0,", perRound), ",")
	ports := func(ps []int) string {
		s := make([]string, len(ps))
		for i, p := range ps {
			s[i] = strconv.Itoa(p)
		}
		return strings.Join(s, ",")
	}
	for range b.N {
		report := filepath.Join(b.TempDir(), "report")
		cmd := exec.Command(bin, "-agent-endpoints", strings.Join(ta.Endpoints, ","),
			"-client-ports", ports(ta.ClientPorts), "-peer-ports", ports(ta.PeerPorts),
			"-report-dir", report, "-metrics-addr", "", "-seed", "7",
			"-cases", "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS", "-schedule-cases", sched,
			"-limit", strconv.Itoa(rounds), "-case-delay", "10ms", "-log-level", "WARNING")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		pid := cmd.Process.Pid
		total := rounds * perRound
		marks := []int{150, 150 + window, total - window - 1, total - 1}
		var rss, written [4]float64
		for k, m := range marks {
			if err := waitCases(report, m, done); err != nil {
				b.Fatalf("%v\n%s", err, out.String())
			}
			rss[k], written[k] = procFigures(b, pid)
		}
		if err := <-done; err != nil {
			sum, _ := os.ReadFile(filepath.Join(report, tester.SummaryFile))
			b.Fatalf("etcd-tester: %v\n%s", err, sum)
		}
		b.ReportMetric(rss[0]/1e6, "rss-start-MB")
		b.ReportMetric(rss[3]/1e6, "rss-end-MB")
		b.ReportMetric((written[1]-written[0])/float64(marks[1]-marks[0]), "bytes/case-start")
		b.ReportMetric((written[3]-written[2])/float64(marks[3]-marks[2]), "bytes/case-end")
		b.ReportMetric(float64(total), "cases")
	}
}

// waitCases waits until cases.jsonl under dir holds n lines.
func waitCases(dir string, n int, done <-chan error) error {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		b, _ := os.ReadFile(filepath.Join(dir, tester.CasesFile))
		if bytes.Count(b, []byte("\n")) >= n {
			return nil
		}
		select {
		case err := <-done:
			return fmt.Errorf("etcd-tester ended (%v) before case %d", err, n)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no case %d within 10 minutes", n)
		}
	}
}

// procFigures reads pid's resident memory and the bytes it has written.
func procFigures(b *testing.B, pid int) (rss, written float64) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			rss = kb * 1024
		}
	}
	io, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(io), "\n") {
		if v, ok := strings.CutPrefix(l, "wchar: "); ok {
			written, _ = strconv.ParseFloat(v, 64)
		}
	}
	return rss, written
}
