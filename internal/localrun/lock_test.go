package localrun

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func useLockDir(t *testing.T) {
	t.Helper()
	old := LockDir
	LockDir = filepath.Join(t.TempDir(), "locks")
	t.Cleanup(func() { LockDir = old })
}

// TestLockRefusesALiveName: a second run of a name held by a live run is
// refused, naming the live run; once the first lets go, the name is free.
func TestLockRefusesALiveName(t *testing.T) {
	useLockDir(t)
	dir := t.TempDir()
	first, err := lockRun(Config{NetName: "one", ReportDir: filepath.Join(dir, "a")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockRun(Config{NetName: "one", ReportDir: filepath.Join(dir, "b")})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) || !strings.Contains(err.Error(), "-net-name") {
		t.Fatalf("second lock of a live name: %v; want ErrBusy naming pid %d and how to choose another name", err, os.Getpid())
	}
	first.release()
	again, err := lockRun(Config{NetName: "one", ReportDir: filepath.Join(dir, "b")})
	if err != nil {
		t.Fatalf("lock after the owner let go: %v", err)
	}
	again.release()
}

// TestLockRefusesAnOverlappingReportDir: a run empties its report dir and
// kills the processes that name it, so report dirs of live runs must not
// contain one another, whatever the names.
func TestLockRefusesAnOverlappingReportDir(t *testing.T) {
	useLockDir(t)
	dir := t.TempDir()
	first, err := lockRun(Config{NetName: "one", ReportDir: filepath.Join(dir, "report")})
	if err != nil {
		t.Fatal(err)
	}
	defer first.release()
	for _, rd := range []string{"report", "report/e2e", ""} {
		_, err := lockRun(Config{NetName: "two", ReportDir: filepath.Join(dir, rd)})
		if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "-report-dir") {
			t.Errorf("report dir %q beside a live run's %q: %v; want ErrBusy naming the report dir", filepath.Join(dir, rd), filepath.Join(dir, "report"), err)
		}
	}
	other, err := lockRun(Config{NetName: "two", ReportDir: filepath.Join(dir, "report2")})
	if err != nil {
		t.Fatalf("a disjoint report dir (report2 beside report) and another name: %v", err)
	}
	other.release()
}

// TestLockOfADeadRunIsFree: the kernel drops a lock with its holder, so a
// run killed without a chance to clean up leaves a name the next run
// takes (and then clears what it left).
func TestLockOfADeadRunIsFree(t *testing.T) {
	useLockDir(t)
	if err := os.MkdirAll(LockDir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(LockDir, "dead.lock")
	// The holder is this test binary in a process of its own (see
	// TestLockHolderProcess), which is then killed.
	holder := exec.Command(os.Args[0], "-test.run=^TestLockHolderProcess$")
	holder.Env = append(os.Environ(), "LOCALRUN_TEST_LOCK_HOLDER="+path)
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "locked\n" {
		t.Fatalf("lock holder: %q, %v", line, err)
	}
	if _, err := lockRun(Config{NetName: "dead", ReportDir: t.TempDir()}); !errors.Is(err, ErrBusy) {
		t.Fatalf("lock held by a live process: %v, want ErrBusy", err)
	}
	holder.Process.Kill()
	holder.Wait()
	l, err := lockRun(Config{NetName: "dead", ReportDir: t.TempDir()})
	if err != nil {
		t.Fatalf("lock of a dead holder: %v", err)
	}
	l.release()
}

// TestLockHolderProcess is not a test: run by TestLockOfADeadRunIsFree in
// a process of its own, it takes the lock it is given and holds it until
// it is killed.
func TestLockHolderProcess(t *testing.T) {
	path := os.Getenv("LOCALRUN_TEST_LOCK_HOLDER")
	if path == "" {
		t.Skip("run by TestLockOfADeadRunIsFree")
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	fmt.Println("locked")
	time.Sleep(time.Minute) // bounded; killed long before
}

func TestOverlaps(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"/r", "/r", true},
		{"/r", "/r/e2e", true},
		{"/r/e2e", "/r", true},
		{"/r", "/r2", false},
		{"/r", "/s/r", false},
		{"/r", "", false},
	} {
		if got := overlaps(tc.a, tc.b); got != tc.want {
			t.Errorf("overlaps(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
