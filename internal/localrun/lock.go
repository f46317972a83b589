package localrun

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// A run holds a lock on its name for as long as it lives, so that a second
// run can tell a live run from the leftovers of a dead one. Without it, a
// second run of the same name cleared the first's namespaces, bridge and
// agents as leftovers, and the first run's tester went on sending to
// addresses that no longer existed here, so its traffic followed the
// default route off the machine.
//
// The lock is an flock(2) on a file per name in LockDir. The kernel drops
// an flock when its holder dies, however it dies, so a lock that can be
// taken belongs to no live run, and only then is what a run of that name
// left cleared. The file holds the owner's pid, report dir and start time,
// for the message that refuses a second run. A run also refuses while a
// live run's report dir contains its own or lies inside it: a run empties
// its report dir and kills the processes that name it.

// LockDir holds the run locks: one directory for the whole machine (not
// $TMPDIR, which differs between shells), as namespaces and ports are the
// machine's. It is a variable for tests.
var LockDir = lockDir()

func lockDir() string {
	if uid := os.Getuid(); uid != 0 {
		return fmt.Sprintf("/tmp/etcd-localrun-locks-%d", uid)
	}
	return "/tmp/etcd-localrun-locks"
}

// runLock is a held lock; release drops it.
type runLock struct {
	f    *os.File
	path string
}

// owner is what a lock file says of the run that holds it.
type owner struct {
	Pid       int       `json:"pid"`
	Name      string    `json:"name"`
	ReportDir string    `json:"report_dir"`
	Started   time.Time `json:"started"`
}

func (o owner) String() string {
	return fmt.Sprintf("pid %d, -net-name %s, -report-dir %s, started %s", o.Pid, o.Name, o.ReportDir, o.Started.Format(time.RFC3339))
}

// ErrBusy is wrapped by the error of a run refused because a live run
// holds its name or overlaps its report dir.
var ErrBusy = errors.New("another run is going")

// lockRun takes the lock of cfg's name. It fails, naming the live run, if a
// live run holds that name or a report dir that overlaps cfg's.
func lockRun(cfg Config) (*runLock, error) {
	if err := os.MkdirAll(LockDir, 0o700); err != nil {
		return nil, fmt.Errorf("run lock: %w", err)
	}
	// Checking the other runs and taking our own lock is one step under a
	// lock on the directory, so two runs starting together cannot both
	// see the other as absent.
	dir, err := os.Open(LockDir)
	if err != nil {
		return nil, fmt.Errorf("run lock: %w", err)
	}
	defer dir.Close()
	if err := syscall.Flock(int(dir.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("run lock: %s: %w", LockDir, err)
	}
	defer syscall.Flock(int(dir.Fd()), syscall.LOCK_UN)

	entries, err := os.ReadDir(LockDir)
	if err != nil {
		return nil, fmt.Errorf("run lock: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".lock")
		if !ok || name == cfg.NetName {
			continue
		}
		o, live := liveOwner(filepath.Join(LockDir, e.Name()))
		if live && overlaps(o.ReportDir, cfg.ReportDir) {
			return nil, fmt.Errorf("%w with an overlapping report dir (%s); choose another -report-dir (make run REPORT=dir)", ErrBusy, o)
		}
	}

	path := filepath.Join(LockDir, cfg.NetName+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("run lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			o, _ := readOwner(path)
			return nil, fmt.Errorf("%w under the name %q (%s); choose another -net-name (make run NAME=name REPORT=dir)", ErrBusy, cfg.NetName, o)
		}
		return nil, fmt.Errorf("run lock: %s: %w", path, err)
	}
	b, _ := json.Marshal(owner{Pid: os.Getpid(), Name: cfg.NetName, ReportDir: cfg.ReportDir, Started: time.Now()})
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt(append(b, '\n'), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("run lock: write %s: %w", path, err)
	}
	return &runLock{f: f, path: path}, nil
}

// release drops the lock. The file stays: removing it would let a run
// starting now lock a new file of the same name while a third still
// waits on the old one.
func (l *runLock) release() {
	if l != nil {
		l.f.Close()
	}
}

// liveOwner reads the lock file at path and reports whether a live process
// holds it.
func liveOwner(path string) (owner, bool) {
	f, err := os.Open(path)
	if err != nil {
		return owner{}, false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return owner{}, false
	}
	o, _ := readOwner(path)
	return o, true
}

func readOwner(path string) (owner, error) {
	var o owner
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, &o)
	}
	return o, err
}

// overlaps reports whether one of two absolute directories is the other or
// lies inside it.
func overlaps(a, b string) bool {
	inside := func(x, y string) bool {
		rel, err := filepath.Rel(y, x)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
	}
	return a != "" && b != "" && (inside(a, b) || inside(b, a))
}
