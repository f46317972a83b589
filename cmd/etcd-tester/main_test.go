package main

import (
	"bytes"
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFlagsDefaults(t *testing.T) {
	cfg, opts, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("default flags do not validate: %v", err)
	}
	if !slices.Equal(cfg.AgentEndpoints, []string{"localhost:9027"}) || cfg.Limit != 1 || !cfg.PeerProxy || !cfg.ConsistencyCheck ||
		cfg.RecoveryTimeout != 30*time.Second || cfg.Seed == 0 || cfg.MetricsAddr != ":9028" || cfg.ReportDir != "report" ||
		cfg.Stresser.QPS != 1000 || !slices.Equal(cfg.Stresser.Names, []string{"keys", "lease", "history"}) || opts.logLevel != "INFO" ||
		!cfg.WatchCheck || !cfg.EtcdCorruptCheck || cfg.AllowUnknown || cfg.Stresser.SkipPastReads || cfg.LinearizabilityTimeout != time.Minute {
		t.Errorf("defaults: %+v %+v", cfg, opts)
	}
}

func TestParseFlags(t *testing.T) {
	cfg, opts, err := parseFlags([]string{
		"-agent-endpoints", "10.0.0.1:9027, 10.0.0.2:9027,10.0.0.3:9027",
		"-client-ports", "2379,2379,2379", "-peer-ports", "2380,2380,2380",
		"-cases", "SIGKILL_LEADER,SIGTERM_ALL", "-schedule-cases", "1,0,1",
		"-election-timeout", "2s", "-seed", "0", "-stresser", "nop", "-limit", "-1",
		"-metrics-addr", "", "-list-cases", "-require-all-cases",
	}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.AgentEndpoints) != 3 || cfg.AgentEndpoints[1] != "10.0.0.2:9027" || !slices.Equal(cfg.ScheduleCases, []int{1, 0, 1}) ||
		!slices.Equal(cfg.Cases, []string{"SIGKILL_LEADER", "SIGTERM_ALL"}) || cfg.Limit != -1 || cfg.MetricsAddr != "" || !opts.listCases || !cfg.RequireAllCases {
		t.Errorf("parsed %+v", cfg)
	}
	// The recovery timeout follows the election timeout unless given.
	if cfg.RecoveryTimeout != 60*time.Second || cfg.Seed != 0 {
		t.Errorf("recovery timeout %v, seed %d; want 60s and the explicit 0", cfg.RecoveryTimeout, cfg.Seed)
	}
	// The history stresser's shape and the stress request timeout.
	cfg, _, err = parseFlags([]string{"-stress-history-clients", "16", "-stress-history-qps", "800", "-stress-request-timeout", "1500ms"}, &bytes.Buffer{})
	if err != nil || cfg.Stresser.History.Clients != 16 || cfg.Stresser.History.QPS != 800 || cfg.Stresser.RequestTimeout != 1500*time.Millisecond {
		t.Errorf("history flags: %v %+v", err, cfg.Stresser)
	}
	cfg, _, _ = parseFlags([]string{"-stress-history-clients", "0"}, &bytes.Buffer{})
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "History.Clients") {
		t.Errorf("-stress-history-clients 0: %v", err)
	}
	cfg, _, _ = parseFlags([]string{"-election-timeout", "2s", "-recovery-timeout", "5s"}, &bytes.Buffer{})
	if cfg.RecoveryTimeout != 5*time.Second {
		t.Errorf("explicit recovery timeout: %v", cfg.RecoveryTimeout)
	}
	cfg, _, _ = parseFlags([]string{"-recovery-timeout", "0"}, &bytes.Buffer{})
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "-recovery-timeout") {
		t.Errorf("-recovery-timeout 0: %v", err)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-client-ports", "2379,x"},
		{"-schedule-cases", "one"},
		{"-limit", "many"},
		{"stray"},
	} {
		if _, _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	_, _, err := parseFlags([]string{"-h"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	for _, f := range []string{"agent-endpoints", "client-ports", "peer-ports", "peer-proxy", "limit", "cases", "list-cases",
		"schedule-cases", "stresser", "stress-qps", "stress-key-size", "stress-key-large-size", "stress-key-suffix-range",
		"stress-key-txn-ops", "consistency-check", "exit-on-failure", "heartbeat-interval", "election-timeout",
		"recovery-timeout", "case-delay", "snapshot-count", "seed", "metrics-addr", "report-dir", "agent-token-file",
		"agent-cert-file", "agent-key-file", "agent-ca-file", "defrag-interval", "log-level", "require-all-cases", "replay"} {
		if !strings.Contains(out.String(), "  -"+f+" ") && !strings.Contains(out.String(), "  -"+f+"\n") {
			t.Errorf("-h does not document -%s", f)
		}
	}
	if !strings.Contains(out.String(), "Exit status") {
		t.Error("-h does not document the exit status")
	}
}
