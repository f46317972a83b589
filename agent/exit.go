package agent

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/etcd-functional/functional/agent/wire"
)

// exitStatus is how an etcd process ended, as wire.Status reports it.
type exitStatus struct {
	text   string // wire.Status.LastExit; empty: no process has ended
	code   int    // -1 when killed by a signal or unknown
	signal string
}

// exitStatus returns how p ended; p must have exited.
func (p *process) exitStatus() exitStatus {
	if p.waitState == nil {
		return exitStatus{text: fmt.Sprintf("unknown (pid %d was adopted from an earlier agent, which alone could reap it)", p.pid), code: -1}
	}
	ws, ok := p.waitState.Sys().(syscall.WaitStatus)
	switch {
	case !ok:
		return exitStatus{text: p.waitState.String(), code: p.waitState.ExitCode()}
	case ws.Signaled():
		name := unix.SignalName(ws.Signal())
		if name == "" {
			name = ws.Signal().String()
		}
		s := exitStatus{text: "killed by " + name, code: -1, signal: name}
		if ws.CoreDump() {
			s.text += " (core dumped)"
		}
		return s
	default:
		return exitStatus{text: fmt.Sprintf("exit code %d", ws.ExitStatus()), code: ws.ExitStatus()}
	}
}

// noteExitLocked records how the current process ended, if it has; a.mu
// held. Called on every stop and kill, before a start replaces the
// process, and by Status, so that an exit of etcd's own is seen too.
func (a *Agent) noteExitLocked() {
	if a.proc != nil && a.proc.exited() {
		a.lastExit = a.proc.exitStatus()
	}
}

// exitFieldsLocked fills st's LastExit fields; a.mu held.
func (a *Agent) exitFieldsLocked(st *wire.Status) {
	a.noteExitLocked()
	st.LastExit, st.LastExitCode, st.LastExitSignal = a.lastExit.text, a.lastExit.code, a.lastExit.signal
}
