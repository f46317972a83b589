package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

func appendLog(t *testing.T, path string, lines ...string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(strings.Join(lines, "\n")); err != nil {
		t.Fatal(err)
	}
}

// TestScanLog: a scan returns the matching lines since the last one, not
// the excepted ones nor a partial last line; after an Archive it finishes
// the archived log, then reads the new one from its start.
func TestScanLog(t *testing.T) {
	s := serve(t, agent.Config{EtcdPath: etcdBinary(t)})
	c := s.client(t, client.Config{})
	ls := c.(client.LogScanner)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	scan := func(from wire.LogPos) wire.LogScan {
		t.Helper()
		out, err := ls.ScanLog(ctx, wire.ScanLog{From: from, Patterns: []string{"panic:", "found data inconsistency"}, Except: []string{"failpoint panic"}})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	// Before etcd ever ran: no log, nothing found.
	if out := scan(wire.LogPos{}); len(out.Lines) != 0 || out.End != (wire.LogPos{}) {
		t.Fatalf("scan of no log: %+v", out)
	}
	m := newMember(t, "scan0", false)
	if _, err := c.Start(ctx, m.args); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, m.clientURL())
	log := filepath.Join(s.base, "etcd.log")
	if out := scan(wire.LogPos{}); len(out.Lines) != 0 || out.End.File == 0 || out.End.Offset == 0 {
		t.Fatalf("scan of a healthy etcd's log: %+v; want no line and an end", out)
	}
	appendLog(t, log, "\npanic: one\n", "panic: failpoint panic: {}\n", `{"msg":"found data inconsistency with peers"}`+"\n", "panic: partial")
	out := scan(wire.LogPos{})
	if want := []string{"panic: one", `{"msg":"found data inconsistency with peers"}`}; !slices.Equal(out.Lines, want) {
		t.Fatalf("lines %q, want %q", out.Lines, want)
	}
	// The partial line is the next scan's, once complete.
	appendLog(t, log, " two\n")
	out = scan(out.End)
	if want := []string{"panic: partial two"}; !slices.Equal(out.Lines, want) {
		t.Fatalf("next scan: lines %q, want %q", out.Lines, want)
	}
	appendLog(t, log, "panic: before the archive\n")
	if _, err := c.Archive(ctx, "scan"); err != nil {
		t.Fatal(err)
	}
	appendLog(t, log, "fatal error: not asked for\n", "panic: after the archive\n")
	out = scan(out.End)
	if want := []string{"panic: before the archive", "panic: after the archive"}; !slices.Equal(out.Lines, want) || out.Gap != "" {
		t.Fatalf("scan across an archive: lines %q gap %q, want %q", out.Lines, out.Gap, want)
	}
	// A log archived and gone: a gap, said.
	if out := scan(wire.LogPos{File: 1, Offset: 10}); !slices.Equal(out.Lines, []string{"panic: after the archive"}) || out.Gap == "" {
		t.Fatalf("scan from a lost log: %+v; want the new log and a gap", out)
	}
	// Max bounds the lines; the rest are counted.
	out, err := ls.ScanLog(ctx, wire.ScanLog{Patterns: []string{":"}, Max: 1})
	if err != nil || len(out.Lines) != 1 || out.Dropped != 1 {
		t.Fatalf("scan with max 1: %+v %v", out, err)
	}
}

func TestScanLogRefusesBadInput(t *testing.T) {
	s := serve(t, agent.Config{EtcdPath: etcdBinary(t)})
	ls := s.client(t, client.Config{}).(client.LogScanner)
	ctx := context.Background()
	for _, tc := range []struct {
		s    wire.ScanLog
		want string
	}{
		{wire.ScanLog{}, "no pattern"},
		{wire.ScanLog{Patterns: []string{""}}, "want 1..256 bytes"},
		{wire.ScanLog{Patterns: []string{"x"}, Except: []string{strings.Repeat("x", 257)}}, "want 1..256 bytes"},
		{wire.ScanLog{Patterns: make([]string, 33)}, "at most 32"},
		{wire.ScanLog{Patterns: []string{"x"}, Max: 101}, "want 1..100"},
		{wire.ScanLog{Patterns: []string{"x"}, From: wire.LogPos{Offset: -1}}, "want 0 or more"},
	} {
		_, err := ls.ScanLog(ctx, tc.s)
		expectErr(t, "ScanLog", err, tc.want)
	}
}
