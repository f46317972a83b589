// Package logfmt sets up capnslog output the same way for every binary and
// test of the project: one line per entry, millisecond timestamps, level and
// package, so that logs of agents and tester can be read side by side.
package logfmt

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/coreos/pkg/capnslog"
)

// Formatter writes "2006-01-02 15:04:05.000 I | pkg: message" lines.
type Formatter struct {
	mu sync.Mutex
	w  io.Writer
}

// NewFormatter returns a Formatter that writes to w.
func NewFormatter(w io.Writer) *Formatter { return &Formatter{w: w} }

// Format implements capnslog.Formatter.
func (f *Formatter) Format(pkg string, level capnslog.LogLevel, _ int, entries ...interface{}) {
	msg := fmt.Sprint(entries...)
	if n := len(msg); n > 0 && msg[n-1] == '\n' {
		msg = msg[:n-1]
	}
	line := fmt.Sprintf("%s %s | %s: %s\n", time.Now().Format("2006-01-02 15:04:05.000"), level.Char(), pkg, msg)
	f.mu.Lock()
	defer f.mu.Unlock()
	io.WriteString(f.w, line)
}

// Flush implements capnslog.Formatter.
func (f *Formatter) Flush() {}

// Setup sends every package's log to stderr through a Formatter at the given
// level ("CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG", "TRACE").
func Setup(level string) error {
	l, err := capnslog.ParseLevel(level)
	if err != nil {
		return fmt.Errorf("log level %q: %w (allowed: CRITICAL, ERROR, WARNING, NOTICE, INFO, DEBUG, TRACE)", level, err)
	}
	capnslog.SetFormatter(NewFormatter(os.Stderr))
	capnslog.SetGlobalLogLevel(l)
	return nil
}
