// Package logtail returns the end of a log: what an error message or a
// failed test shows of a process to say why it failed.
package logtail

import (
	"io"
	"os"
	"strings"
)

// maxRead bounds what File reads: the last lines of a long log are all
// that is wanted, and a log can be large.
const maxRead = 64 << 10

// Lines returns the last n lines of s.
func Lines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// File returns the last n lines written to the file at path from offset
// on (0 for the whole file), or why they could not be read.
func File(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(log unreadable: " + err.Error() + ")"
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size()-offset > maxRead {
		offset = st.Size() - maxRead
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return "(log unreadable: " + err.Error() + ")"
	}
	b, err := io.ReadAll(io.LimitReader(f, maxRead))
	if err != nil {
		return "(log unreadable: " + err.Error() + ")"
	}
	return Lines(string(b), n)
}
