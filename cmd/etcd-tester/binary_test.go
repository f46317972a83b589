package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/etcd-functional/functional/internal/agenttest"
	"github.com/etcd-functional/functional/tester"
)

// The tests of this file's kind run the etcd-tester command as a child
// process, built from this package's source, against real agents served
// by the test process (internal/agenttest) running real etcd members.

var (
	buildOnce sync.Once
	buildDir  string // holds the built etcd-tester; removed after the tests
	buildPath string
	buildErr  error
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if buildDir != "" {
			os.RemoveAll(buildDir)
		}
		os.Exit(code)
	}))
}

// testerBinary builds etcd-tester from this package once per test binary.
func testerBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("no go command to build etcd-tester with: %w", err)
			return
		}
		if buildDir, buildErr = os.MkdirTemp("", "etcd-tester-bin-"); buildErr != nil {
			return
		}
		buildPath = filepath.Join(buildDir, "etcd-tester")
		cmd := exec.Command(goBin, "build", "-o", buildPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // as make builds it: the build cache is shared
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// testerProc is an etcd-tester child process.
type testerProc struct {
	cmd       *exec.Cmd
	reportDir string
	stderr    syncBuffer
	stdout    syncBuffer
	done      chan struct{} // closed when it has exited
	exitedAt  time.Time
}

// startTester runs etcd-tester against ta's agents with args added to the
// ones that point it at them. The process is killed (by its pid) at the
// end of the test if it still runs.
func startTester(t *testing.T, ta *agenttest.Set, args ...string) *testerProc {
	t.Helper()
	bin := testerBinary(t)
	ports := func(ps []int) string {
		s := make([]string, len(ps))
		for i, p := range ps {
			s[i] = strconv.Itoa(p)
		}
		return strings.Join(s, ",")
	}
	p := &testerProc{reportDir: filepath.Join(t.TempDir(), "report"), done: make(chan struct{})}
	all := append([]string{
		"-agent-endpoints", strings.Join(ta.Endpoints, ","),
		"-client-ports", ports(ta.ClientPorts), "-peer-ports", ports(ta.PeerPorts),
		"-report-dir", p.reportDir, "-seed", "7", "-stress-qps", "300",
	}, args...)
	p.cmd = exec.Command(bin, all...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		p.exitedAt = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("etcd-tester %s\nstderr:\n%s\nstdout:\n%s", strings.Join(all, " "), p.stderr.String(), p.stdout.String())
		}
	})
	return p
}

// waitLog waits until stderr holds s, failing the test if the process
// exits first or timeout passes.
func (p *testerProc) waitLog(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for !strings.Contains(p.stderr.String(), s) {
		select {
		case <-p.done:
			t.Fatalf("etcd-tester exited (status %d) before logging %q", p.cmd.ProcessState.ExitCode(), s)
		case <-deadline:
			t.Fatalf("etcd-tester did not log %q within %v", s, timeout)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// wait waits for the process to exit and returns its status and when it
// exited, failing the test after timeout.
func (p *testerProc) wait(t *testing.T, timeout time.Duration) (int, time.Time) {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), p.exitedAt
	case <-time.After(timeout):
		t.Fatalf("etcd-tester still running after %v", timeout)
		return 0, time.Time{}
	}
}

// signal sends sig to the process and returns when it was sent.
func (p *testerProc) signal(t *testing.T, sig os.Signal) time.Time {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
	return time.Now()
}

// errorLines are the lines of stderr the command itself wrote (not its
// log): "etcd-tester: ...".
func (p *testerProc) errorLines() []string {
	var out []string
	for _, l := range strings.Split(p.stderr.String(), "\n") {
		if strings.HasPrefix(l, "etcd-tester: ") {
			out = append(out, l)
		}
	}
	return out
}

func (p *testerProc) results(t *testing.T) tester.Report {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.reportDir, tester.ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	var r tester.Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
