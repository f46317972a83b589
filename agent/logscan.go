package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/etcd-functional/functional/agent/wire"
)

// defaultLogLines is the lines a ScanLog returns when it does not say.
const defaultLogLines = 20

// ScanLog returns the lines of etcd's log from s.From on that match s
// (see wire.ScanLog). It takes no operation lock: a scan only reads, and a
// log archived in the middle of one is found by the next through its
// inode.
func (a *Agent) ScanLog(s wire.ScanLog) (wire.LogScan, error) {
	if err := checkScanLog(&s); err != nil {
		return wire.LogScan{}, err
	}
	m := logMatcher{s: s}
	cur := filepath.Join(a.cfg.BaseDir, logFile)
	from := s.From.Offset
	var gap string
	if s.From.File != 0 && s.From.File != inode(cur) {
		// The log was archived since From: the rest of the old one
		// first, if it is the last archive's, then all of the new.
		a.mu.Lock()
		last := a.lastArchive
		a.mu.Unlock()
		old := filepath.Join(last, logFile)
		if last != "" && inode(old) == s.From.File {
			if _, err := m.scan(old, s.From.Offset); err != nil {
				return wire.LogScan{}, err
			}
		} else {
			gap = fmt.Sprintf("the log scanned last (inode %d) was archived, and is not the last archive's: lines it had after offset %d were not scanned", s.From.File, s.From.Offset)
		}
		from = 0
	}
	end, err := m.scan(cur, from)
	if err != nil {
		return wire.LogScan{}, err
	}
	m.out.End, m.out.Gap = end, gap
	return m.out, nil
}

func checkScanLog(s *wire.ScanLog) error {
	if len(s.Patterns) == 0 {
		return errors.New("scan log: no pattern: give at least one substring to look for")
	}
	for _, set := range [][]string{s.Patterns, s.Except} {
		if len(set) > wire.MaxLogPatterns {
			return fmt.Errorf("scan log: %d patterns: at most %d", len(set), wire.MaxLogPatterns)
		}
		for _, p := range set {
			if p == "" || len(p) > wire.MaxLogPatternBytes {
				return fmt.Errorf("scan log: pattern %q: want 1..%d bytes", p, wire.MaxLogPatternBytes)
			}
		}
	}
	if s.From.Offset < 0 {
		return fmt.Errorf("scan log: offset %d: want 0 or more", s.From.Offset)
	}
	switch {
	case s.Max == 0:
		s.Max = defaultLogLines
	case s.Max < 0 || s.Max > wire.MaxLogLines:
		return fmt.Errorf("scan log: max %d lines: want 1..%d", s.Max, wire.MaxLogLines)
	}
	return nil
}

// inode returns the inode of path, 0 if it cannot be read.
func inode(path string) uint64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// logMatcher collects the matching lines of one or more logs.
type logMatcher struct {
	s   wire.ScanLog
	out wire.LogScan
}

// maxLineKept bounds the part of one line that is matched: a line longer
// than that (none of etcd's are) is matched on its start only.
const maxLineKept = 64 << 10

// scan reads path from offset (from 0 if the file is now shorter: it was
// truncated) to its last complete line, and returns that place.
func (m *logMatcher) scan(path string, offset int64) (wire.LogPos, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return wire.LogPos{}, nil // etcd never started here
	}
	if err != nil {
		return wire.LogPos{}, fmt.Errorf("scan log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return wire.LogPos{}, fmt.Errorf("scan log: %w", err)
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	if offset > fi.Size() {
		offset = 0
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return wire.LogPos{}, fmt.Errorf("scan log: %w", err)
	}
	// Read no further than the size now: etcd keeps writing, and what
	// it writes meanwhile is the next scan's.
	r := bufio.NewReaderSize(io.LimitReader(f, fi.Size()-offset), 64<<10)
	var line []byte
	pos, n := offset, 0 // n: bytes of the line so far, kept or not
	for {
		chunk, err := r.ReadSlice('\n')
		n += len(chunk)
		if len(line)+len(chunk) <= maxLineKept {
			line = append(line, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF {
			break // a partial last line is read next time
		}
		if err != nil {
			return wire.LogPos{}, fmt.Errorf("scan log %s: %w", path, err)
		}
		pos += int64(n)
		m.match(bytes.TrimRight(line, "\r\n"))
		line, n = line[:0], 0
	}
	return wire.LogPos{File: ino, Offset: pos}, nil
}

func (m *logMatcher) match(line []byte) {
	hit := false
	for _, p := range m.s.Patterns {
		if bytes.Contains(line, []byte(p)) {
			hit = true
			break
		}
	}
	if !hit {
		return
	}
	for _, p := range m.s.Except {
		if bytes.Contains(line, []byte(p)) {
			return
		}
	}
	if len(m.out.Lines) >= m.s.Max {
		m.out.Dropped++
		return
	}
	if len(line) > wire.MaxLogLineBytes {
		line = line[:wire.MaxLogLineBytes]
	}
	m.out.Lines = append(m.out.Lines, string(line))
}

func (s *service) RPCScanLog(arg wire.ScanLog, reply *wire.LogScan) (err error) {
	defer s.log(wire.MethodScanLog, &err)
	*reply, err = s.a.ScanLog(arg)
	return err
}
