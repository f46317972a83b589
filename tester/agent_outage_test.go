package tester_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/tester"
)

// Issue 6: an agent that restarts or cannot be reached for a while during
// a run. The tester reconnects with backoff for its client's RetryFor and
// either goes on or fails the case naming the agent; it never hangs.

// killWatch is a real agent client that reports its endpoint once the
// tester's Kill through it has returned: the fault is in place and no call
// is in flight, so taking the agent away then cuts no reply.
type killWatch struct {
	client.Agent
	killed     chan<- string
	restarting chan<- string
}

// Restart reports that the recovery has begun calling the agent.
func (k killWatch) Restart(ctx context.Context) (int, error) {
	select {
	case k.restarting <- k.Endpoint():
	default:
	}
	return k.Agent.Restart(ctx)
}

func (k killWatch) Kill(ctx context.Context) error {
	err := k.Agent.Kill(ctx)
	if err == nil {
		select {
		case k.killed <- k.Endpoint():
		default: // never blocks the tester
		}
	}
	return err
}

// watchKills makes cfg's agents report their Kill on the first channel
// returned, and the start of a Restart on the second.
func watchKills(cfg *tester.Config, ccfg client.Config) (killed, restarting <-chan string) {
	k := make(chan string, len(cfg.AgentEndpoints))
	r := make(chan string, len(cfg.AgentEndpoints))
	cfg.DialAgent = func(ep string) (client.Agent, error) {
		a, err := client.New(ep, ccfg)
		return killWatch{a, k, r}, err
	}
	return k, r
}

// waitKill waits for the tester's Kill and returns the killed member's
// agent index. It fails the test if Run returns first.
func waitKill(t *testing.T, ta *testAgents, killed <-chan string, runErr <-chan error) int {
	t.Helper()
	select {
	case ep := <-killed:
		return slices.Index(ta.Endpoints, ep)
	case err := <-runErr:
		t.Fatalf("Run returned before it killed a member: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("no member killed within 2 minutes")
	}
	return -1
}

// awaitRun waits for Run's result, failing the test after bound.
func awaitRun(t *testing.T, runErr <-chan error, cancel context.CancelFunc, bound time.Duration) error {
	t.Helper()
	select {
	case err := <-runErr:
		return err
	case <-time.After(bound):
		cancel()
		t.Fatalf("Run still running %v after the agent went away; cancelled: %v", bound, <-runErr)
		return nil
	}
}

// The killed member's agent goes away during the hold and is back 2 s
// later, after the recovery began: the recovery's Restart keeps retrying
// and goes through once the agent answers again, and the case passes.
func TestRunAgentBackAfterOutage(t *testing.T) {
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{"SIGKILL_ONE_FOLLOWER"}
	cfg.CaseDelay = time.Second
	cfg.StressWarmup = 500 * time.Millisecond
	killed, restarting := watchKills(&cfg, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- tester.Run(ctx, cfg) }()

	i := waitKill(t, ta, killed, runErr)
	ta.Down(i)
	t.Logf("agent %d (%s) down: its member was killed", i, ta.Endpoints[i])
	// The hold ends; the recovery calls the agent that is down.
	select {
	case <-restarting:
	case err := <-runErr:
		t.Fatalf("Run returned before the recovery called the agent: %v", err)
	case <-time.After(2 * time.Minute):
		cancel()
		t.Fatalf("no Restart within 2 minutes; Run: %v", <-runErr)
	}
	if err := ta.Up(i); err != nil {
		cancel()
		<-runErr
		t.Fatal(err)
	}
	upAt := time.Now()
	t.Logf("agent %d up again", i)

	err := awaitRun(t, runErr, cancel, 2*time.Minute)
	r := readResults(t, cfg.ReportDir)
	if len(r.Rounds) != 1 || len(r.Rounds[0].Cases) != 1 {
		t.Fatalf("Run: %v; results %+v", err, r)
	}
	c := r.Rounds[0].Cases[0]
	if err != nil || !c.Passed {
		t.Fatalf("Run: %v; case error %q; want the case to pass once the agent is back", err, c.Error)
	}
	if want := "etcd-" + string(rune('0'+i)); len(c.Targets) != 1 || c.Targets[0] != want {
		t.Fatalf("targets %v, want %s", c.Targets, want)
	}
	// Recovery ended after the agent came back: the Restart that healed
	// the member was retried across the outage, not made before it.
	if !c.RecoverTime.After(upAt) {
		t.Errorf("recovered at %v, before the agent was back at %v", c.RecoverTime, upAt)
	}
}

// The killed member's agent goes away for good: the recovery fails within
// the client's retry bound with an error naming the agent's endpoint, and
// the run ends, failed, within about one retry window: the steps after the
// one that found the agent gone do not wait out the window again.
func TestRunAgentGoneFailsCase(t *testing.T) {
	const retryFor = 5 * time.Second
	ta := startAgents(t, 3)
	cfg := ta.config(t)
	cfg.Cases = []string{"SIGKILL_ONE_FOLLOWER"}
	cfg.CaseDelay = time.Second
	cfg.StressWarmup = 500 * time.Millisecond
	killed, _ := watchKills(&cfg, client.Config{RetryFor: retryFor, DialTimeout: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- tester.Run(ctx, cfg) }()

	i := waitKill(t, ta, killed, runErr)
	ta.Down(i)
	downAt := time.Now()
	ep := ta.Endpoints[i]
	t.Logf("agent %d (%s) down for good: its member was killed", i, ep)

	// The recovery's Restart waits out one retry window and finds the
	// agent gone; every later call to it (the salvage's, the final heal
	// and terminate) fails at once, and the run ends rather than
	// re-bootstrapping without it. Waiting out the window at every step
	// took about 7 windows.
	err := awaitRun(t, runErr, cancel, cfg.CaseDelay+8*retryFor+20*time.Second)
	took := time.Since(downAt)
	t.Logf("Run returned %v after the agent went away: %v", took.Round(time.Millisecond), err)
	if limit := cfg.CaseDelay + 2*retryFor + 15*time.Second; took > limit {
		t.Errorf("the run ended %v after the agent went away; want within about one retry window (%v, limit %v)", took, retryFor, limit)
	}
	if err == nil || !strings.Contains(err.Error(), "is gone") || !strings.Contains(err.Error(), "cannot go on") {
		t.Errorf("Run: %v; want it ended, naming the gone agent", err)
	}
	if code := tester.ExitCode(err); code != tester.ExitFail || !errors.Is(err, tester.ErrFailed) || !strings.Contains(err.Error(), ep) {
		t.Errorf("Run: %v (exit %d); want a failed run (exit %d) naming %s", err, code, tester.ExitFail, ep)
	}
	r := readResults(t, cfg.ReportDir)
	if r.Passed || r.Interrupted || len(r.Rounds) != 1 || len(r.Rounds[0].Cases) != 1 {
		t.Fatalf("results: %+v", r)
	}
	c := r.Rounds[0].Cases[0]
	t.Logf("case error: %s", c.Error)
	if c.Passed || !strings.Contains(c.Error, "recover: heal stopped of etcd-"+string(rune('0'+i))) ||
		!strings.Contains(c.Error, "agent "+ep) || !strings.Contains(c.Error, "unreachable") {
		t.Errorf("case: passed %v, error %q; want the recovery failed, naming agent %s as unreachable", c.Passed, c.Error, ep)
	}
	// The recovery began when the 1 s hold ended, after the outage, and
	// gave up within the retry bound twice over (the Restart, then the
	// Status asking whether the member is still down) plus a margin.
	if took := c.RecoverTime.Sub(downAt); took > cfg.CaseDelay+2*retryFor+5*time.Second {
		t.Errorf("the recovery failed %v after the agent went away; want within the hold %v + 2 × RetryFor %v + 2s", took, cfg.CaseDelay, retryFor)
	}
}
