package logtail

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 5, "a\nb\nc"},
		{"", 3, ""},
	} {
		if got := Lines(tc.in, tc.n); got != tc.want {
			t.Errorf("Lines(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func TestFileFromOffset(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("old 1\nold 2\nnew 1\nnew 2\nnew 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := File(path, int64(len("old 1\nold 2\n")), 10), "new 1\nnew 2\nnew 3"; got != want {
		t.Errorf("File from offset = %q, want %q", got, want)
	}
	if got, want := File(path, 0, 2), "new 2\nnew 3"; got != want {
		t.Errorf("File last 2 = %q, want %q", got, want)
	}
}

// A log longer than what File reads still yields its last lines.
func TestFileLongLogGivesTheEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	var b strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := File(path, 0, 2), "line 19998\nline 19999"; got != want {
		t.Errorf("File = %q, want %q", got, want)
	}
}

func TestFileMissing(t *testing.T) {
	if got := File(filepath.Join(t.TempDir(), "none"), 0, 3); !strings.Contains(got, "log unreadable") {
		t.Errorf("File of a missing log = %q, want it to say the log is unreadable", got)
	}
}
