package tester

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// The "logs" checker: what etcd itself says went wrong. After every case
// it reads each member's log (through the agent: wire.MethodScanLog) from
// where the last check, or the bootstrap, left it, and fails the case on
// a panic, a fatal error or one of etcd's corruption reports, quoting the
// lines. Only these lines are looked for: etcd logs warnings and errors
// all the time under faults, and those are the faults' doing.

// logPatterns are what fails a case. Each is a line etcd (or Go's
// runtime under it) writes only when something is broken.
var logPatterns = []string{
	"panic:",                      // Go's panic, and zap's Panic after it
	"fatal error:",                // Go's runtime: concurrent map writes, out of memory
	`"level":"panic"`,             // zap's Panic, logged before it panics
	`"level":"fatal"`,             // zap's Fatal: etcd exits with status 1, no "panic:"
	"found data inconsistency",    // the initial corruption check, against its peers
	"found hash mismatch",         // the periodic corruption check
	"compaction hash mismatch",    // the compaction hash check
	"found different hash values", // the initial check's per-peer report
	`"alarm":"CORRUPT"`,           // a member serving /health false on a CORRUPT alarm
}

// logExceptions are lines that match a pattern and are no failure: the
// panic a FAILPOINTS case arms on purpose.
var logExceptions = []string{"failpoint panic"}

// logQuoted bounds the lines quoted per member in a failure.
const logQuoted = 5

// logPositions is where the last scan of each member's log ended.
type logPositions struct {
	mu  sync.Mutex
	pos map[int]wire.LogPos
}

func (p *logPositions) get(i int) wire.LogPos {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pos[i]
}

func (p *logPositions) set(i int, pos wire.LogPos) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pos == nil {
		p.pos = map[int]wire.LogPos{}
	}
	p.pos[i] = pos
}

// markLogs moves every member's log position to the end of its log, so
// that the next check reads only what the members log from now on: what
// a log held before the bootstrap (an earlier run's, a failed case's) is
// not this case's. A member whose log cannot be read keeps its position.
func (c *Cluster) markLogs(ctx context.Context) {
	for i := range c.members {
		out, err := c.scanLog(ctx, i, wire.LogPos{})
		switch {
		case errors.Is(err, errNoLogScan):
		case err != nil:
			plog.Warningf("marking the end of %s's log: %v", c.members[i].Name, err)
		default:
			c.logPos.set(i, out.End)
		}
	}
}

var errNoLogScan = errors.New("the agent cannot scan etcd's log")

// scanLog scans member i's log from from with the checker's patterns.
func (c *Cluster) scanLog(ctx context.Context, i int, from wire.LogPos) (wire.LogScan, error) {
	var out wire.LogScan
	err := c.agentCall(ctx, i, agentCallTimeout, "scan the log of", func(ctx context.Context, a client.Agent) error {
		ls, ok := a.(client.LogScanner)
		if !ok {
			return errNoLogScan
		}
		var err error
		out, err = ls.ScanLog(ctx, wire.ScanLog{From: from, Patterns: logPatterns, Except: logExceptions})
		return err
	})
	return out, err
}

// newLogCheck builds the "logs" checker of every case with a cluster.
func newLogCheck(cc *CheckContext) Checker {
	if cc.Cluster == nil {
		return nil
	}
	return logCheck{cc}
}

type logCheck struct{ cc *CheckContext }

// panicker is a case that makes members panic on purpose: their logs'
// panics are the case's doing (a failpoint's panic may be re-raised by the
// code that recovered it, e.g. "panic: execute job failed", without the
// failpoint's name), so the logs check reads past them.
type panicker interface{ panicked() []int }

func (l logCheck) Check(ctx context.Context) error {
	c := l.cc.Cluster
	var errs, unknown []error
	unscanned := 0
	var onPurpose []int
	if p, ok := l.cc.Case.(panicker); ok {
		onPurpose = p.panicked()
	}
	for i, m := range c.members {
		out, err := c.scanLog(ctx, i, c.logPos.get(i))
		if errors.Is(err, errNoLogScan) {
			unscanned++
			continue
		}
		if err != nil {
			unknown = append(unknown, err)
			continue
		}
		c.logPos.set(i, out.End)
		if slices.Contains(onPurpose, i) {
			continue
		}
		if out.Gap != "" {
			plog.Warningf("log of %s: %s", m.Name, out.Gap)
		}
		if len(out.Lines) == 0 {
			continue
		}
		quoted := out.Lines[:min(len(out.Lines), logQuoted)]
		more := len(out.Lines) - len(quoted) + out.Dropped
		msg := fmt.Sprintf("%s's etcd logged %d line(s) of a panic or a corruption report:\n\t%s", m.Name, len(out.Lines)+out.Dropped, strings.Join(quoted, "\n\t"))
		if more > 0 {
			msg += fmt.Sprintf("\n\t(and %d more)", more)
		}
		errs = append(errs, errors.New(msg))
	}
	l.cc.Figure("members not scanned", float64(unscanned))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if len(unknown) > 0 {
		return fmt.Errorf("%w: %w", ErrCheckUnknown, errors.Join(unknown...))
	}
	return nil
}
