package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is one running etcd: either a child this agent started, or one an
// earlier agent process started and this one adopted from its records.
type process struct {
	pid       int
	startTime uint64        // from /proc/<pid>/stat, to tell a reused pid apart
	done      chan struct{} // closed once the process has exited and is reaped
	adopted   bool
	// waitState is how it ended; set before done is closed, nil for an
	// adopted process (not our child: its parent reaps it).
	waitState *os.ProcessState
}

// startProcess runs bin with args, output appended to logPath, in a session
// (and so a process group) of its own: a Ctrl-C meant for the agent does not
// reach etcd (the agent stops etcd itself, gracefully), and when the agent
// dies while etcd is paused, etcd's process group is not an orphaned group
// of the agent's session, to which the kernel would send SIGHUP (which kills
// etcd) and SIGCONT: a paused etcd must stay paused for the next agent.
// env is the process's environment; nil means the agent's own.
func startProcess(bin string, args []string, dir, logPath string, env []string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec %s: %w", bin, err)
	}
	p := &process{pid: cmd.Process.Pid, done: make(chan struct{})}
	p.startTime, _ = procStartTime(p.pid)
	go func() {
		// Owned by the process: it ends when etcd exits, and the agent
		// never leaves etcd running when it shuts down.
		cmd.Wait()
		p.waitState = cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

// adoptProcess takes over a process an earlier agent started, if pid still
// names that process: same start time, and its executable is bin.
func adoptProcess(pid int, startTime uint64, bin string) (*process, error) {
	st, err := procStartTime(pid)
	if err != nil {
		return nil, err
	}
	if st != startTime {
		return nil, fmt.Errorf("pid %d was reused by another process", pid)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	want, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return nil, err
	}
	if exe != want {
		return nil, fmt.Errorf("pid %d runs %s, not %s", pid, exe, want)
	}
	p := &process{pid: pid, startTime: st, done: make(chan struct{}), adopted: true}
	go func() {
		// Not our child, so it cannot be waited for: poll until it is
		// gone (its new parent reaps it).
		for alive(pid, startTime) {
			time.Sleep(20 * time.Millisecond)
		}
		close(p.done)
	}()
	return p, nil
}

func alive(pid int, startTime uint64) bool {
	st, err := procStartTime(pid)
	if err != nil || st != startTime {
		return false
	}
	state, _ := procState(pid)
	return state != "Z" && state != "X"
}

// procStartTime reads the start time (field 22 of /proc/<pid>/stat).
func procStartTime(pid int) (uint64, error) {
	fields, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	if len(fields) < 20 {
		return 0, fmt.Errorf("pid %d: short /proc stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// procState reads the one-letter state (R, S, T for stopped, Z, ...).
func procState(pid int) (string, error) {
	fields, err := procStat(pid)
	if err != nil {
		return "", err
	}
	return fields[0], nil
}

// procStat returns the fields of /proc/<pid>/stat after the command name,
// starting with the state (field 3).
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("pid %d: malformed /proc stat", pid)
	}
	return strings.Fields(s[i+1:]), nil
}

// waitStopped waits, for at most timeout, until every thread of the
// process has stopped after a SIGSTOP. The kernel stops each thread when it
// next runs, not when the signal is sent, and etcd answers requests until
// its last thread has stopped.
func (p *process) waitStopped(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		stopped, err := threadsStopped(p.pid)
		switch {
		case p.exited():
			return fmt.Errorf("pid %d exited while being paused", p.pid)
		case err == nil && stopped:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("pid %d: not every thread stopped %v after SIGSTOP (%v)", p.pid, timeout, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// threadsStopped reports whether every thread of pid is stopped (state T),
// or gone.
func threadsStopped(pid int) (bool, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "stat"))
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread exited
		}
		if err != nil {
			return false, err
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) == 0 || (fields[0] != "T" && fields[0] != "Z" && fields[0] != "X") {
			return false, nil
		}
	}
	return true, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) signal(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	if err := syscall.Kill(p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("send %s to pid %d: %w", signalName(sig), p.pid, err)
	}
	return nil
}

// stopStep is one rung of the stop ladder: a signal and how long to wait for
// the process to exit after it.
type stopStep struct {
	sig  syscall.Signal
	wait time.Duration
}

// killWait bounds the wait after SIGKILL; only an unkillable process (stuck
// in the kernel) outlasts it.
const killWait = 30 * time.Second

// stop climbs the ladder until the process exits, and returns the signal
// that ended it and how long the stop took. A stopped (paused) process is
// continued after each signal so that it can act on it.
func (p *process) stop(steps []stopStep) (string, time.Duration, error) {
	start := time.Now()
	if p.exited() {
		return "", 0, nil
	}
	steps = append(steps, stopStep{syscall.SIGKILL, killWait})
	for _, s := range steps {
		if err := p.signal(s.sig); err != nil {
			return "", time.Since(start), err
		}
		if err := p.signal(syscall.SIGCONT); err != nil {
			return "", time.Since(start), err
		}
		select {
		case <-p.done:
			return signalName(s.sig), time.Since(start), nil
		case <-time.After(s.wait):
		}
	}
	return "", time.Since(start), fmt.Errorf("pid %d still alive %v after SIGKILL", p.pid, killWait)
}

func signalName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	case syscall.SIGSTOP:
		return "SIGSTOP"
	case syscall.SIGCONT:
		return "SIGCONT"
	}
	return sig.String()
}
