// Command etcd-tester runs an etcd cluster, one member per etcd-agent,
// through fault cases under load and checks that it recovers and stays
// consistent. See package tester.
//
// Exit status: 0 if every case of every round passed; 1 if a case failed,
// the cluster never formed, a case was skipped under -require-all-cases,
// or the run was interrupted (after healing the faults it injected); 2 on
// bad flags or when the agents could not be reached or set up; 130 on a
// second interrupt, which exits at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/etcd-functional/functional/htmlreport"
	"github.com/etcd-functional/functional/internal/logfmt"
	"github.com/etcd-functional/functional/stresser"
	"github.com/etcd-functional/functional/tester"
)

func main() {
	cfg, opts, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-tester: %s\n", oneLine(err))
		os.Exit(tester.ExitSetup)
	}
	if opts.listCases {
		for _, l := range tester.ListCases(cfg) {
			fmt.Println(l)
		}
		os.Exit(0)
	}
	if opts.fromJSON != "" {
		if err := htmlreport.WriteFrom(opts.fromJSON, cfg.ReportDir); err != nil {
			fmt.Fprintf(os.Stderr, "etcd-tester: -report-from: %v\n", err)
			os.Exit(tester.ExitSetup)
		}
		os.Exit(0)
	}
	if err := logfmt.Setup(opts.logLevel); err != nil {
		fmt.Fprintf(os.Stderr, "etcd-tester: -log-level: %v\n", err)
		os.Exit(tester.ExitSetup)
	}

	// The first interrupt signal cancels the run, which then heals the
	// faults it injected and writes its report; a second one exits at
	// once. The goroutine lives as long as the process.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, interruptSignals...)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "etcd-tester: %v: healing injected faults and writing the report; signal again to exit at once\n", s)
		cancel()
		s = <-sigs
		fmt.Fprintf(os.Stderr, "etcd-tester: %v again: exiting now; faults may remain injected\n", s)
		os.Exit(tester.ExitInterrupted)
	}()

	err = tester.Run(ctx, cfg)
	signal.Stop(sigs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-tester: %s (exit status %d)\n", oneLine(err), tester.ExitCode(err))
	}
	os.Exit(tester.ExitCode(err))
}

// interruptSignals all end a run the way Ctrl-C does: heal, report, exit 1.
// SIGTERM is what service managers and timeout(1) send, SIGHUP what a
// closed terminal or ssh session sends, and SIGQUIT (Ctrl-\) would
// otherwise make the Go runtime dump its goroutines and exit at once,
// leaving every injected fault in place.
var interruptSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}

// oneLine puts the several problems of a joined error on one line.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

type options struct {
	listCases bool
	logLevel  string
	fromJSON  string // -report-from
}

// parseFlags turns the command line into a tester.Config. Validation of
// the values is tester's (Run does it before anything starts); here only
// their syntax is checked.
func parseFlags(args []string, stderr io.Writer) (tester.Config, options, error) {
	cfg := tester.DefaultConfig()
	def := cfg
	var opts options
	fs := flag.NewFlagSet("etcd-tester", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: etcd-tester [flags]

Runs an etcd cluster, one member per etcd-agent, through fault cases under
load; after each case checks that every member is healthy again under one
leader (within -recovery-timeout) and that their key spaces are equal.
Writes results.json and summary.txt to -report-dir after every case, and
serves Prometheus metrics and /status on -metrics-addr.

The first SIGINT, SIGTERM, SIGHUP or SIGQUIT heals the injected faults,
writes the report and exits 1; a second exits at once with 130.

Exit status: 0 all cases passed; 1 a case failed, the cluster never
formed, a case was skipped under -require-all-cases, or interrupted; 2 bad
flags or setup (agents unreachable).

Flags:
`)
		fs.PrintDefaults()
	}

	var endpoints, clientPorts, peerPorts, cases, schedule, stressers string
	fs.StringVar(&endpoints, "agent-endpoints", strings.Join(def.AgentEndpoints, ","), "comma list of etcd-agent `host:port`s (no scheme), one member each; the member listens on the agent's host")
	fs.StringVar(&clientPorts, "client-ports", "", "comma list of member client ports, one per agent (default 2379 for every agent)")
	fs.StringVar(&peerPorts, "peer-ports", "", "comma list of member peer ports, one per agent (default 2380 for every agent)")
	fs.BoolVar(&cfg.PeerProxy, "peer-proxy", def.PeerProxy, "members listen for peers on peer port + 1 and advertise the peer port, which the agent proxies; needed by the DELAY cases")
	fs.IntVar(&cfg.Limit, "limit", def.Limit, "number of rounds; -1 runs until interrupted")
	fs.StringVar(&cases, "cases", "", "comma list of cases to run (see -list-cases); default every case this environment supports")
	fs.BoolVar(&opts.listCases, "list-cases", false, "print every case with its description and exit")
	fs.StringVar(&schedule, "schedule-cases", "", "comma list of indices into the selected cases (as printed at start): the order of a round; repeats allowed")
	fs.StringVar(&stressers, "stresser", strings.Join(def.Stresser.Names, ","), "comma list of stressers: "+strings.Join(stresser.ValidNames, ", ")+" (nop alone: no load)")
	fs.IntVar(&cfg.Stresser.QPS, "stress-qps", def.Stresser.QPS, "requests per second over the whole cluster")
	fs.IntVar(&cfg.Stresser.KeySize, "stress-key-size", def.Stresser.KeySize, "value size of a put, in bytes")
	fs.IntVar(&cfg.Stresser.KeyLargeSize, "stress-key-large-size", def.Stresser.KeyLargeSize, "value size of a large put, in bytes")
	fs.IntVar(&cfg.Stresser.KeySuffixRange, "stress-key-suffix-range", def.Stresser.KeySuffixRange, "number of distinct keys the key stresser writes")
	fs.IntVar(&cfg.Stresser.KeyTxnOps, "stress-key-txn-ops", def.Stresser.KeyTxnOps, "puts/deletes per transaction (0: no transactions; at most 128)")
	fs.Int64Var(&cfg.Stresser.PastReadWindow, "stress-past-read-window", def.Stresser.PastReadWindow, "how many revisions back the key stresser's reads of the past reach (past compactions too)")
	fs.IntVar(&cfg.Stresser.History.Clients, "stress-history-clients", def.Stresser.History.Clients, "clients of the history stresser, each with one request in flight; a quarter (at least one) balance over the cluster, the others are pinned to one member each, round-robin")
	fs.IntVar(&cfg.Stresser.History.QPS, "stress-history-qps", def.Stresser.History.QPS, "requests per second of the history stresser, on top of -stress-qps")
	fs.DurationVar(&cfg.Stresser.RequestTimeout, "stress-request-timeout", def.Stresser.RequestTimeout, "bound on every stress request; a client pinned to a paused member waits this long before its next request")
	pastReads := fs.Bool("stress-past-reads", !def.Stresser.SkipPastReads, "reads at old revisions, and txns mixing them with writes; false only to test an old release with a known bug such as etcd #18667 (it leaves out that traffic, never a check)")
	fs.BoolVar(&cfg.EtcdCorruptCheck, "etcd-corrupt-check", def.EtcdCorruptCheck, "start members with etcd's own corruption checks on (initial check, and the leader's hash check after compaction), spelled as each release wants")
	fs.BoolVar(&cfg.ConsistencyCheck, "consistency-check", def.ConsistencyCheck, "after each case, check that every member has the same revision and KV hash")
	fs.BoolVar(&cfg.AllowUnknown, "allow-unknown", def.AllowUnknown, "pass a case whose checker could not reach a verdict (by default it fails: nothing was proven)")
	fs.DurationVar(&cfg.LinearizabilityTimeout, "linearizability-timeout", def.LinearizabilityTimeout, "bound on the linearizability check of one case's client history (the \"history\" stresser); out of time is an unknown verdict")
	fs.BoolVar(&cfg.WatchCheck, "watch-check", def.WatchCheck, "record watches on every member during each case with load and check them against the ground truth after recovery")
	fs.BoolVar(&cfg.RequireAllCases, "require-all-cases", def.RequireAllCases, "fail the run (exit 1, before it starts) if any case must be skipped in this environment, naming each and why: a PASS then means every case ran")
	fs.BoolVar(&cfg.ExitOnFailure, "exit-on-failure", def.ExitOnFailure, "stop at the first failed case (its members stay archived)")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", def.HeartbeatInterval, "etcd --heartbeat-interval")
	fs.DurationVar(&cfg.ElectionTimeout, "election-timeout", def.ElectionTimeout, "etcd --election-timeout")
	fs.DurationVar(&cfg.RecoveryTimeout, "recovery-timeout", 0, fmt.Sprintf("how long the cluster may take to be healthy after a fault is recovered (default %d × -election-timeout)", tester.RecoveryElections))
	fs.DurationVar(&cfg.CaseDelay, "case-delay", def.CaseDelay, "how long a fault is held before it is recovered")
	fs.DurationVar(&cfg.StressWarmup, "stress-warmup", def.StressWarmup, "how long the load runs before each fault is injected")
	fs.IntVar(&cfg.SnapshotCount, "snapshot-count", def.SnapshotCount, "etcd --snapshot-count (small, so the UNTIL_TRIGGER_SNAPSHOT cases end soon)")
	fs.IntVar(&cfg.SnapshotCatchupEntries, "snapshot-catchup-entries", def.SnapshotCatchupEntries, "etcd --snapshot-catchup-entries")
	fs.Int64Var(&cfg.Seed, "seed", 0, "random seed of targets, random delays and load; the same seed replays a run (default: from the clock, printed at start)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", def.MetricsAddr, `address of Prometheus /metrics and /status; "" turns it off`)
	fs.StringVar(&cfg.ReportDir, "report-dir", def.ReportDir, "directory for results.json and summary.txt")
	fs.StringVar(&cfg.AgentTokenFile, "agent-token-file", "", "file holding the bearer token the agents expect")
	fs.StringVar(&cfg.AgentCertFile, "agent-cert-file", "", "client certificate presented to the agents (TLS; with -agent-key-file)")
	fs.StringVar(&cfg.AgentKeyFile, "agent-key-file", "", "key of -agent-cert-file")
	fs.StringVar(&cfg.AgentCAFile, "agent-ca-file", "", "CA certificate that verifies the agents (turns TLS on)")
	fs.StringVar(&cfg.ExternalExecPath, "external-exec-path", "", "program of the EXTERNAL case, run as `PROGRAM enable ROUND` to inject its fault and `PROGRAM disable ROUND` to recover (a non-zero exit fails the case); without it EXTERNAL is skipped")
	fs.IntVar(&cfg.DefragInterval, "defrag-interval", def.DefragInterval, "defragment every member every this many rounds; 0 never")
	fs.StringVar(&cfg.Replay, "replay", "", "play the cases of an earlier run's `results.json` again: same rounds, same order, same members hit, same seed (its -seed, -cases, -schedule-cases and -limit win); a case whose member no longer holds its role says so")
	fs.StringVar(&opts.fromJSON, "report-from", "", "render `results.json` of an earlier run as -report-dir/index.html and exit; runs nothing")
	fs.StringVar(&opts.logLevel, "log-level", "INFO", "log level: CRITICAL, ERROR, WARNING, NOTICE, INFO, DEBUG or TRACE")

	if err := fs.Parse(args); err != nil {
		return cfg, opts, err
	}
	if fs.NArg() > 0 {
		return cfg, opts, fmt.Errorf("unexpected arguments %q; every setting is a flag (see -h)", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var errs []error
	cfg.AgentEndpoints = splitList(endpoints)
	var err error
	if cfg.ClientPorts, err = intList("-client-ports", clientPorts); err != nil {
		errs = append(errs, err)
	}
	if cfg.PeerPorts, err = intList("-peer-ports", peerPorts); err != nil {
		errs = append(errs, err)
	}
	if cfg.ScheduleCases, err = intList("-schedule-cases", schedule); err != nil {
		errs = append(errs, err)
	}
	cfg.Stresser.SkipPastReads = !*pastReads
	cfg.Cases = splitList(cases)
	cfg.Stresser.Names = splitList(stressers)
	if !set["recovery-timeout"] {
		cfg.RecoveryTimeout = cfg.DefaultRecoveryTimeout()
	}
	if !set["seed"] {
		cfg.Seed = time.Now().UnixNano()
	}
	return cfg, opts, errors.Join(errs...)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func intList(flagName, s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a number; want a comma list of integers", flagName, f)
		}
		out = append(out, n)
	}
	return out, nil
}
