package tester

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, h http.Handler, path string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d", path, rec.Code)
	}
	return rec.Body.String()
}

func TestMetricsExposition(t *testing.T) {
	m := newMetrics()
	now := time.Now()
	m.caseDone(CaseResult{Case: "SIGKILL_LEADER", Passed: true, HealthyTime: now, RecoverySeconds: 1.5})
	m.caseDone(CaseResult{Case: "SIGKILL_LEADER", Passed: false, HealthyTime: now, RecoverySeconds: 40})
	// A case that never became healthy has no recovery time to observe.
	m.caseDone(CaseResult{Case: "SIGTERM_ALL", Passed: false})
	m.caseDone(CaseResult{Case: "SIGQUIT_AND_REMOVE_ONE_FOLLOWER", Passed: true, HealthyTime: now,
		Findings: []Finding{{What: FindingNeededWrite, Members: []string{"etcd-1"}}}})
	m.roundDone(false)
	m.roundDone(true)

	out := scrape(t, m.handler(""), "/metrics")
	for _, want := range []string{
		"etcd_tester_rounds_total 2",
		"etcd_tester_round_failures_total 1",
		`etcd_tester_cases_total{case="SIGKILL_LEADER"} 2`,
		`etcd_tester_cases_total{case="SIGTERM_ALL"} 1`,
		`etcd_tester_case_failures_total{case="SIGKILL_LEADER"} 1`,
		`etcd_tester_case_failures_total{case="SIGTERM_ALL"} 1`,
		`etcd_tester_recovery_seconds_bucket{case="SIGKILL_LEADER",le="2"} 1`,
		`etcd_tester_recovery_seconds_bucket{case="SIGKILL_LEADER",le="64"} 2`,
		`etcd_tester_recovery_seconds_count{case="SIGKILL_LEADER"} 2`,
		`etcd_tester_recovery_seconds_sum{case="SIGKILL_LEADER"} 41.5`,
		`etcd_tester_findings_total{case="SIGQUIT_AND_REMOVE_ONE_FOLLOWER",what="ready only after a client write"} 1`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("exposition lacks %q", want)
		}
	}
	if strings.Contains(out, `etcd_tester_recovery_seconds_count{case="SIGTERM_ALL"}`) {
		t.Error("a case that never recovered has a recovery time")
	}
	// Each run has its own registry: a second one starts from zero.
	if out := scrape(t, newMetrics().handler(""), "/metrics"); !strings.Contains(out, "etcd_tester_rounds_total 0\n") {
		t.Errorf("second registry:\n%s", out)
	}
}

func TestStatusPage(t *testing.T) {
	m := newMetrics()
	var p statusPage
	if err := json.Unmarshal([]byte(scrape(t, m.handler(""), "/status")), &p); err != nil || p.Round != 0 || len(p.Agents) != 0 {
		t.Fatalf("before the cluster: %+v, %v", p, err)
	}
	c, fakes := fakeCluster(t, 3)
	startAll(t, fakes)
	fakes[2].setFail("Status", io.ErrUnexpectedEOF)
	m.setCluster(c)
	m.setCase(4, 2, "SIGSTOP_LEADER")
	if err := json.Unmarshal([]byte(scrape(t, m.handler(""), "/status")), &p); err != nil {
		t.Fatal(err)
	}
	if p.Round != 4 || p.CaseIndex != 2 || p.Case != "SIGSTOP_LEADER" || len(p.Agents) != 3 {
		t.Fatalf("status %+v", p)
	}
	if a := p.Agents[0]; a.Member != "etcd-0" || a.Endpoint != fakes[0].ep || a.State != "started" {
		t.Errorf("agent 0: %+v", a)
	}
	if a := p.Agents[2]; a.Error == "" || a.State != "" {
		t.Errorf("silent agent: %+v", a)
	}
}

func TestMetricsServerStops(t *testing.T) {
	m := newMetrics()
	stop, addr, err := serve("127.0.0.1:0", m.handler(""))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "etcd_tester_rounds_total") {
		t.Errorf("served:\n%s", b)
	}
	stop()
	if _, err := http.Get("http://" + addr + "/metrics"); err == nil {
		t.Error("server still answers after stop")
	}
	http.DefaultClient.CloseIdleConnections()
	// A taken address is a setup error naming the flag.
	stop2, addr2, _ := serve("127.0.0.1:0", m.handler(""))
	defer stop2()
	if _, _, err := serve(addr2, m.handler("")); err == nil || !strings.Contains(err.Error(), "-metrics-addr") {
		t.Errorf("second listener on %s: %v", addr2, err)
	}
}
