package agent

import (
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
)

// KeepFaults renews the fault lease: the faults in place (and any injected
// before it ends) last until lease from now, after which the agent heals
// them. It returns the new end of the lease. Renewing when no fault is in
// place is not an error: a tester renews for as long as it may hold one.
//
// It does not wait for a.op: a renewal only moves the lease's end, and a
// graceful stop holds a.op for up to the SIGTERM wait (30 s), longer than
// a lease; a renewal queued behind it would time out at the tester, which
// would then warn that the faults may end. expireLease takes a.op, so it
// still never acts in the middle of an operation.
func (a *Agent) KeepFaults(lease time.Duration) (time.Time, error) {
	if err := checkLease(lease); err != nil {
		return time.Time{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return time.Time{}, errClosed
	}
	a.setLeaseLocked(time.Now().Add(lease))
	return a.leaseUntil, nil
}

// extendLeaseLocked (re)starts the lease after a fault was injected: it
// ends no sooner than the default lease from now, and no sooner than a
// renewal had set. a.mu held.
func (a *Agent) extendLeaseLocked() {
	if until := time.Now().Add(a.cfg.FaultLease); until.After(a.leaseUntil) {
		a.setLeaseLocked(until)
	}
}

// setLeaseLocked makes the lease end at until; a.mu held. The timer is
// not stopped by a later renewal: expireLease finds the lease renewed and
// waits on.
func (a *Agent) setLeaseLocked(until time.Time) {
	a.leaseUntil = until
	if a.leaseTimer == nil {
		a.leaseTimer = time.AfterFunc(time.Until(until), a.expireLease)
		return
	}
	a.leaseTimer.Reset(time.Until(until))
}

// faultsLocked describes the faults in place that the lease covers; a.mu
// held.
func (a *Agent) faultsLocked() []string {
	var fs []string
	for _, p := range a.dropped {
		fs = append(fs, fmt.Sprintf("port %d dropped", p))
	}
	if a.latency > 0 || a.jitter > 0 {
		fs = append(fs, fmt.Sprintf("peer latency %v±%v", a.latency, a.jitter))
	}
	switch st := a.currentStateLocked(); {
	case st == wire.StatePaused:
		fs = append(fs, "etcd paused")
	case st == wire.StateStopped && a.faultStopped:
		fs = append(fs, a.stoppedFaultLocked())
	}
	return fs
}

// stoppedFaultLocked describes the fault of an etcd Stop or Kill ended;
// a.mu held. The signal is unknown when an earlier agent process stopped it.
func (a *Agent) stoppedFaultLocked() string {
	if a.lastStopSignal == "" {
		return "etcd stopped (by an earlier agent process)"
	}
	return fmt.Sprintf("etcd stopped (by %s)", a.lastStopSignal)
}

// expireLease runs when the lease timer fires. If the lease has not been
// renewed meanwhile and faults are in place, nobody holds them any more:
// the agent heals them, as the tester would have, and records it. It takes
// a.op like any operation, so that it never acts in the middle of one.
func (a *Agent) expireLease() {
	if a.lockOp() != nil {
		return // closed: Close heals everything
	}
	defer a.op.Unlock()
	a.mu.Lock()
	if a.leaseUntil.IsZero() {
		a.mu.Unlock()
		return
	}
	if wait := time.Until(a.leaseUntil); wait > 0 {
		a.leaseTimer.Reset(wait) // renewed since the timer was set
		a.mu.Unlock()
		return
	}
	a.leaseUntil = time.Time{}
	a.mu.Unlock()
	// Asking etcd which failpoints are armed takes a request: not under
	// a.mu, which Status needs. a.op keeps every operation out meanwhile.
	armed, fpAddr := a.armedFailpoints()
	a.mu.Lock()
	faults := a.faultsLocked()
	for _, fp := range armed {
		faults = append(faults, fmt.Sprintf("failpoint %s armed (%s)", fp.Name, fp.Term))
	}
	p, paused := a.proc, a.currentStateLocked() == wire.StatePaused
	restart := a.currentStateLocked() == wire.StateStopped && a.faultStopped && a.args != nil
	var network []string
	for _, f := range faults {
		if strings.HasPrefix(f, "port ") || strings.HasPrefix(f, "peer latency ") {
			network = append(network, f)
		}
	}
	if len(faults) > 0 {
		// Recorded before healing, so that whoever sees a fault healed
		// also sees why.
		a.faultsExpiredAt, a.faultsExpired = time.Now(), faults
	}
	a.mu.Unlock()
	if len(faults) == 0 {
		return
	}
	plog.Warningf("fault lease expired with faults in place and nobody renewing it (is the tester gone?): healing %s", strings.Join(faults, ", "))

	var healed []string
	failed := false
	outcome := func(what string, err error) {
		if err != nil {
			plog.Errorf("fault lease expired: healing %s: %v", what, err)
			what += " (healing failed: " + err.Error() + ")"
			failed = true
		}
		healed = append(healed, what)
	}
	for _, fp := range armed {
		outcome(fmt.Sprintf("failpoint %s armed (%s)", fp.Name, fp.Term), disarm(fpAddr, fp))
	}
	if len(network) > 0 {
		outcome(strings.Join(network, ", "), a.healNetwork())
	}
	if paused {
		err := p.signal(syscall.SIGCONT)
		if err == nil {
			a.mu.Lock()
			if a.proc == p && a.state == wire.StatePaused {
				a.state = wire.StateStarted
				a.save()
			}
			a.mu.Unlock()
		}
		outcome("etcd paused", err)
	}
	if restart {
		a.mu.Lock()
		args, what := a.args, a.stoppedFaultLocked()
		a.mu.Unlock()
		_, err := a.start(args)
		outcome(what, err)
	}
	if failed {
		a.mu.Lock()
		a.faultsExpired = healed
		a.mu.Unlock()
		return
	}
	plog.Warningf("fault lease expired: healed %s", strings.Join(healed, "; "))
}
