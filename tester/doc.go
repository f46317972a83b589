// Package tester drives etcd-agents to run an etcd cluster through fault
// cases while a stresser loads it, and checks after each fault that the
// cluster recovered and stayed consistent.
//
// A run bootstraps one member per agent, then plays rounds of cases. Each
// case waits for a healthy cluster, starts the load, injects its fault on
// targets chosen from the live cluster (the leader now, followers by a
// seeded draw), holds it, recovers, pauses the load and waits — bounded —
// for every member to be healthy under one leader (serving a linearizable
// read, with no write from the tester once one has succeeded: a member
// that recovers only when written to is reported as a Finding, see
// nudge.go); then the checkers judge the members' key spaces, the load's
// leases, the clients' history and the watches. A failed case
// is recovered all the same, every member archived under the case's name,
// and the cluster bootstrapped anew.
//
// Everything a run does is in results.json and summary.txt (rewritten
// after every case) and in Prometheus metrics. A run interrupted through
// its context heals every fault it injected before it returns.
//
//	cfg := tester.DefaultConfig()
//	cfg.AgentEndpoints = []string{"10.0.0.1:9027", "10.0.0.2:9027", "10.0.0.3:9027"}
//	err := tester.Run(ctx, cfg)
//	os.Exit(tester.ExitCode(err))
//
// # Reading order
//
// run.go (Run, setup, rounds, maintain, finish) → case_run.go (one case as
// phases: prepare, inject, hold, recover, wait healthy, check; each fails
// with a *PhaseError) → cases.go and catalogue.go (Case, the catalogue as
// target × fault family, selection) → fault*.go, targets.go, ledger.go →
// checker*.go. cluster.go, health.go, figures.go, nudge.go and
// maintenance.go are the Cluster and how it is judged healthy.
//
// # Adding a fault
//
// Write one file, fault_<family>.go, with a type that implements family
// (prefix, describe, requires, draw) and Fault (String, Inject, Undo,
// Present, Scope); the ledger records Faults, so one without its undo or
// presence test does not compile, and TestEveryFaultHealsThroughTheLedger
// catches one whose undo does not take off what it put on. Then add one
// line to Catalogue: add(myFault{}, oneFollower{}, leader{}).
//
// # Adding a checker
//
// Write one file (in any package) with a type that implements Checker and
// a NewChecker that builds it from the case's *CheckContext (cluster,
// CaseResult, stresser, the case's report directory; Figure and File for
// the report), and register it once, from an init function:
//
//	func init() { tester.RegisterChecker("history", newHistoryChecker) }
//
// The command that should run it imports the package (a blank import).
package tester
