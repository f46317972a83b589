package tester

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// EXTERNAL: a fault the user brings, as upstream's tester had it. The
// user's program is run as `PATH enable ROUND` to inject and `PATH disable
// ROUND` to recover; a non-zero exit fails the case. Its exit status and
// output (bounded) go to the report through the "external" checker.

// externalCase runs Config.ExternalExecPath. It is a pointer: it keeps
// the runs of the case being played for the checker.
type externalCase struct {
	path string

	mu   sync.Mutex
	runs []externalRun // of the current play: enable, then disable
}

// externalRun is one run of the user's program.
type externalRun struct {
	Action   string        // "enable" or "disable"
	Round    int           //
	ExitCode int           // -1 if it did not exit (killed, not started)
	Err      error         // why it failed, nil if it exited 0
	Output   []byte        // the end of stdout and stderr, bounded
	Dropped  int           // output bytes before it, not kept
	Took     time.Duration //
}

// Bounds of one run: output kept, and time (a script that hangs must
// not hang the run).
const (
	externalOutputMax = 16 << 10
	externalTimeout   = 5 * time.Minute
)

var (
	_ requirer = (*externalCase)(nil)
)

func (*externalCase) Name() string { return "EXTERNAL" }
func (e *externalCase) Describe() string {
	return "run the user's -external-exec-path program as `PROGRAM enable ROUND` to inject its fault and `PROGRAM disable ROUND` to recover (a non-zero exit fails the case)"
}

func (e *externalCase) Requires(Env) error {
	if e.path == "" {
		return errors.New("needs -external-exec-path: the program that injects (enable) and recovers (disable) the fault")
	}
	return nil
}

func (e *externalCase) Inject(ctx context.Context, c *Cluster) error {
	e.mu.Lock()
	e.runs = nil
	e.mu.Unlock()
	return e.run(ctx, "enable")
}

func (e *externalCase) Recover(ctx context.Context, c *Cluster) error {
	return errors.Join(e.run(ctx, "disable"), c.Heal(ctx))
}

func (e *externalCase) run(ctx context.Context, action string) error {
	round := caseRound(ctx)
	ctx, cancel := context.WithTimeout(ctx, externalTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.path, action, strconv.Itoa(round))
	out := &boundedBuffer{max: externalOutputMax}
	cmd.Stdout, cmd.Stderr = out, out
	// A child of the script that keeps the output open must not keep
	// the case waiting once the script is gone.
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	r := externalRun{Action: action, Round: round, ExitCode: -1, Output: out.buf.Bytes(), Dropped: out.dropped, Took: time.Since(start)}
	if cmd.ProcessState != nil {
		r.ExitCode = cmd.ProcessState.ExitCode()
	}
	if err != nil {
		r.Err = err
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			r.Err = fmt.Errorf("%w (after the bound of %v)", err, externalTimeout)
		}
	}
	e.mu.Lock()
	e.runs = append(e.runs, r)
	e.mu.Unlock()
	plog.Infof("external: %s %s %d: exit %d in %v", e.path, action, round, r.ExitCode, r.Took.Round(time.Millisecond))
	if r.Err != nil {
		return fmt.Errorf("%s %s %d: %w; its output ends:\n%s", e.path, action, round, r.Err, tail(r.Output, 20))
	}
	return nil
}

// tail returns the last n lines of b, at most 2 KiB of them.
func tail(b []byte, n int) string {
	b = bytes.TrimRight(b, "\n")
	if len(b) > 2<<10 {
		b = b[len(b)-2<<10:]
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	return string(bytes.Join(lines[max(0, len(lines)-n):], nil))
}

// boundedBuffer keeps the last max bytes written (the end of a program's
// output says why it failed) and counts the bytes dropped before them.
type boundedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	if len(p) > b.max {
		b.dropped += len(p) - b.max
		p = p[len(p)-b.max:]
	}
	if over := b.buf.Len() + len(p) - b.max; over > 0 {
		b.buf.Next(over)
		b.dropped += over
	}
	b.buf.Write(p)
	return n, nil
}

// The round of the case being played travels in its context: a case is
// one value for every round.
type roundKey struct{}

func withCaseRound(ctx context.Context, round int) context.Context {
	return context.WithValue(ctx, roundKey{}, round)
}

// caseRound returns the round of ctx's case, 0 outside a round.
func caseRound(ctx context.Context) int {
	r, _ := ctx.Value(roundKey{}).(int)
	return r
}

// newExternalCheck is the "external" checker: for the EXTERNAL case, it
// puts the program's runs in the report (exit statuses and times as
// figures, output in external.txt). It fails nothing that the case has
// not already failed on.
func newExternalCheck(cc *CheckContext) Checker {
	e, ok := unwrap(cc.Case).(*externalCase)
	if !ok {
		return nil
	}
	return externalCheck{cc, e}
}

type externalCheck struct {
	cc *CheckContext
	e  *externalCase
}

func (x externalCheck) Check(context.Context) error {
	x.e.mu.Lock()
	runs := append([]externalRun(nil), x.e.runs...)
	x.e.mu.Unlock()
	var text bytes.Buffer
	for _, r := range runs {
		x.cc.Figure(r.Action+" exit code", float64(r.ExitCode))
		x.cc.Figure(r.Action+" seconds", r.Took.Seconds())
		fmt.Fprintf(&text, "$ %s %s %d\n# exit %d after %v\n", x.e.path, r.Action, r.Round, r.ExitCode, r.Took.Round(time.Millisecond))
		if r.Dropped > 0 {
			fmt.Fprintf(&text, "# (the first %d bytes of output not kept)\n", r.Dropped)
		}
		text.Write(r.Output)
		text.WriteString("\n")
	}
	dir, err := x.cc.MkDir()
	if err != nil {
		return fmt.Errorf("%w: report directory: %w", ErrCheckUnknown, err)
	}
	path := filepath.Join(dir, "external.txt")
	if err := os.WriteFile(path, text.Bytes(), 0o644); err != nil {
		return fmt.Errorf("%w: %w", ErrCheckUnknown, err)
	}
	x.cc.File(path)
	return nil
}

// checkExternalExecPath: a program given must be there and executable;
// none is fine (EXTERNAL is skipped).
func checkExternalExecPath(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("-external-exec-path: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("-external-exec-path: %s is not an executable file (mode %v)", path, fi.Mode())
	}
	return nil
}
