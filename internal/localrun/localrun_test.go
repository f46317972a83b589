package localrun_test

// These tests run the real bin/etcd-localrun (what `make run` runs) as a
// subprocess, with the real etcd, etcd-agent and etcd-tester, and check
// issue 5's promises from the outside: a run tears everything down on
// success, failure and interrupt; a run after a killed one clears what it
// left; bad input is refused in one line.
//
// The test process makes itself a child subreaper (TestMain), so whatever a
// run leaves behind when etcd-localrun exits (a process still running, or a
// zombie nobody reaped) is reparented to it, where the checks find it
// precisely instead of losing it to init. Running the binary, rather than
// localrun.Run in-process, keeps the run's own subreaping out of the test.
//
// The tests run one after the other: they share the loopback ports and,
// through the subreaper, the test process's children.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-functional/functional/internal/localnet"
)

func TestMain(m *testing.M) {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		fmt.Fprintf(os.Stderr, "localrun tests: PR_SET_CHILD_SUBREAPER: %v\n", errno)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// shortCase is the quickest case there is: no fault, no load, a 3s hold.
var shortCase = []string{"-cases", "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS", "-limit", "1", "-metrics-addr", ""}

// binDir returns the absolute bin directory, or skips the test if a binary
// a run needs is not built.
func binDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "bin"))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"etcd", "etcd-agent", "etcd-tester", "etcd-localrun"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
			t.Skipf("%s is missing: run `make build` first", filepath.Join(dir, b))
		}
	}
	return dir
}

// needNetns skips the test unless network namespaces can be built here.
func needNetns(t *testing.T) {
	t.Helper()
	if err := localnet.Available(); err != nil {
		t.Skipf("netns mode is not available: %v", err)
	}
}

// run is one etcd-localrun process.
type run struct {
	t      *testing.T
	cmd    *exec.Cmd
	out    output
	start  time.Time
	done   chan struct{}
	status int           // exit status; -1 if killed by a signal
	took   time.Duration // from start to exit
}

// startRun starts etcd-localrun with the given flags, then "--" and the
// tester's flags. The run is stopped (SIGINT, then SIGKILL) if the test
// ends while it is still going, and its output is logged if the test fails.
func startRun(t *testing.T, bin string, flags []string, testerArgs ...string) *run {
	t.Helper()
	args := append([]string{"-bin-dir", bin}, flags...)
	if len(testerArgs) > 0 {
		args = append(append(args, "--"), testerArgs...)
	}
	f, err := os.CreateTemp(t.TempDir(), "localrun-*.out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := &run{t: t, out: output{f.Name()}, done: make(chan struct{})}
	r.cmd = exec.Command(filepath.Join(bin, "etcd-localrun"), args...)
	r.cmd.Stdout, r.cmd.Stderr = f, f
	t.Logf("run: etcd-localrun %s", strings.Join(args, " "))
	r.start = time.Now()
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start etcd-localrun: %v", err)
	}
	go func() {
		err := r.cmd.Wait()
		r.took = time.Since(r.start)
		r.status = 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			r.status = exit.ExitCode()
		} else if err != nil {
			r.status = -1
		}
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			r.cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-r.done:
			case <-time.After(90 * time.Second):
				r.cmd.Process.Kill()
				<-r.done
			}
		}
		if t.Failed() {
			t.Logf("output of pid %d:\n%s", r.cmd.Process.Pid, r.out.String())
		}
	})
	return r
}

// wait waits up to timeout for the run to exit and returns its status.
func (r *run) wait(timeout time.Duration) int {
	r.t.Helper()
	select {
	case <-r.done:
		r.t.Logf("run: exit status %d after %.1fs", r.status, r.took.Seconds())
		return r.status
	case <-time.After(timeout):
		r.t.Fatalf("etcd-localrun still running after %v", timeout)
		return 0
	}
}

// waitOutput waits up to timeout for the output to contain s.
func (r *run) waitOutput(s string, timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(r.out.String(), s) {
		select {
		case <-r.done:
			r.t.Fatalf("etcd-localrun exited (status %d) before its output showed %q", r.status, s)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no %q in the output after %v", s, timeout)
		}
	}
}

// output is a run's stdout and stderr. It is a file, not a pipe: a
// process the run leaves behind (a killed run's tester) keeps a pipe open,
// and Wait would wait for it.
type output struct{ path string }

func (o output) String() string {
	b, _ := os.ReadFile(o.path)
	return string(b)
}

// results is the part of the tester's results.json the tests read.
type results struct {
	Passed      bool     `json:"passed"`
	Interrupted bool     `json:"interrupted"`
	Error       string   `json:"error"`
	Schedule    []string `json:"schedule"`
	Rounds      []struct {
		Passed bool `json:"passed"`
		Cases  []struct {
			Case   string `json:"case"`
			Passed bool   `json:"passed"`
			Error  string `json:"error"`
		} `json:"cases"`
	} `json:"rounds"`
	Skipped  []skip   `json:"skipped"`
	Unhealed []string `json:"unhealed"`
}

type skip struct {
	Case   string `json:"case"`
	Reason string `json:"reason"`
}

func readResults(t *testing.T, reportDir string) results {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(reportDir, "results.json"))
	if err != nil {
		t.Fatalf("results.json: %v", err)
	}
	var r results
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	return r
}

// wantPassed checks that results.json reports one round of the short case,
// passed.
func wantPassed(t *testing.T, reportDir string) {
	t.Helper()
	res := readResults(t, reportDir)
	if !res.Passed || res.Interrupted || len(res.Rounds) != 1 || len(res.Rounds[0].Cases) != 1 ||
		res.Rounds[0].Cases[0].Case != shortCase[1] || !res.Rounds[0].Cases[0].Passed {
		t.Errorf("results.json: want one round of %s, passed; got %+v", shortCase[1], res)
	}
}

// proc is a process as /proc shows it.
type proc struct {
	pid, ppid int
	state     byte // R, S, D, T (stopped), Z (zombie), ...
	comm      string
	args      []string
}

func (p proc) String() string {
	cmd := strings.Join(p.args, " ")
	if cmd == "" {
		cmd = "[" + p.comm + "]"
	}
	if len(cmd) > 160 {
		cmd = cmd[:160] + "..."
	}
	return fmt.Sprintf("pid %d (ppid %d, state %c) %s", p.pid, p.ppid, p.state, cmd)
}

// processes lists every process of the machine.
func processes() []proc {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var ps []proc
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(stat)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		p := proc{pid: pid, ppid: ppid, state: f[0][0], comm: s[open+1 : end]}
		if cmdline, err := os.ReadFile(filepath.Join(d, "cmdline")); err == nil && len(cmdline) > 0 {
			p.args = strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
		}
		ps = append(ps, p)
	}
	return ps
}

// mentions reports whether p's command line names dir or a path in it.
func (p proc) mentions(dir string) bool {
	return slices.ContainsFunc(p.args, func(a string) bool {
		return a == dir || strings.Contains(a, dir+"/")
	})
}

// remains is what a run left on the machine.
type remains struct {
	namespaces []string // network namespaces "<name>-*"
	rules      []string // host iptables rules marked localnet:<name>, or of an agent
	links      []string // host interfaces "<name>-*"
	procs      []proc   // live processes naming the report dir
	orphans    []proc   // processes reparented to this test process
}

func (r remains) empty() bool {
	return len(r.namespaces)+len(r.rules)+len(r.links)+len(r.procs)+len(r.orphans) == 0
}

func (r remains) String() string {
	var b strings.Builder
	list := func(what string, items []string) {
		for _, i := range items {
			fmt.Fprintf(&b, "\n  %s: %s", what, i)
		}
	}
	list("namespace", r.namespaces)
	list("iptables rule", r.rules)
	list("link", r.links)
	for _, p := range r.procs {
		fmt.Fprintf(&b, "\n  process: %s", p)
	}
	for _, p := range r.orphans {
		what := "orphan"
		if p.state == 'Z' {
			what = "zombie"
		}
		fmt.Fprintf(&b, "\n  %s of this test: %s", what, p)
	}
	return b.String()
}

// findRemains looks for what a run with net name name and report dir
// reportDir left. netns says whether to look at namespaces, links and
// iptables (they exist only where localnet is available).
func findRemains(t *testing.T, name, reportDir string, netns bool) remains {
	t.Helper()
	var r remains
	if netns {
		out := command(t, "ip", "netns", "list")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], name+"-") {
				r.namespaces = append(r.namespaces, f[0])
			}
		}
		out = command(t, "iptables", "-w", "-S")
		for _, line := range strings.Split(out, "\n") {
			fields := strings.Fields(strings.ReplaceAll(line, `"`, ""))
			if slices.Contains(fields, "localnet:"+name) || strings.Contains(line, "ETCD-AGENT") {
				r.rules = append(r.rules, line)
			}
		}
		// "7: lrt1-h0@if6: <BROADCAST,..."
		out = command(t, "ip", "-o", "link", "show")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 1 {
				link, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
				if strings.HasPrefix(link, name+"-") {
					r.links = append(r.links, link)
				}
			}
		}
	}
	self := os.Getpid()
	for _, p := range processes() {
		switch {
		case p.pid == self:
		case p.ppid == self && p.state == 'Z':
			r.orphans = append(r.orphans, p)
		case p.state != 'Z' && p.mentions(reportDir):
			r.procs = append(r.procs, p)
		case p.ppid == self && p.comm != "etcd-localrun":
			// Reparented to this test, and not a run of its own.
			r.orphans = append(r.orphans, p)
		}
	}
	return r
}

// reapZombies reaps the zombies among ps, which are children of this
// process, so that they do not show up again.
func reapZombies(ps []proc) {
	for _, p := range ps {
		if p.state == 'Z' {
			var ws syscall.WaitStatus
			syscall.Wait4(p.pid, &ws, syscall.WNOHANG, nil)
		}
	}
}

// wantClean fails the test if the run left anything: a namespace, link or
// rule of the net name, a process naming the report dir, a process or
// zombie reparented to this test. Zombies reparented here whose pids are in
// expected (what a killed run left, killed by the next) are reaped and
// accepted.
func wantClean(t *testing.T, name, reportDir string, netns bool, expected map[int]bool) {
	t.Helper()
	r := findRemains(t, name, reportDir, netns)
	reapZombies(r.orphans)
	r.orphans = slices.DeleteFunc(r.orphans, func(p proc) bool { return p.state == 'Z' && expected[p.pid] })
	if !r.empty() {
		t.Errorf("left behind:%s", r)
		cleanUp(t, name, reportDir, netns)
	}
}

// cleanUp removes what a failed test left, so that the next test starts
// clean.
func cleanUp(t *testing.T, name, reportDir string, netns bool) {
	for _, p := range findRemains(t, name, reportDir, false).procs {
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
	if netns {
		if err := localnet.Remove(name); err != nil {
			t.Logf("clean up: %v", err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	reapZombies(findRemains(t, name, reportDir, false).orphans)
}

func command(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// netnsFlags are the flags of a netns-mode run.
func netnsFlags(name, reportDir string) []string {
	return []string{"-mode", "netns", "-net-name", name, "-report-dir", reportDir}
}

// TestSuccessTwice: `make run` twice in a row, in netns mode. Both runs
// pass and each leaves nothing behind; the second is not disturbed by the
// first (same net name, same report dir).
func TestSuccessTwice(t *testing.T) {
	bin := binDir(t)
	needNetns(t)
	const name = "lrts"
	report := filepath.Join(t.TempDir(), "report")
	for i := range 2 {
		r := startRun(t, bin, netnsFlags(name, report), shortCase...)
		if st := r.wait(90 * time.Second); st != 0 {
			t.Fatalf("run %d: exit status %d, want 0", i+1, st)
		}
		if out := r.out.String(); !strings.Contains(out, "mode netns:") {
			t.Errorf("run %d: output does not say the mode:\n%s", i+1, out)
		}
		wantPassed(t, report)
		wantClean(t, name, report, true, nil)
	}
}

// killMidFault starts a run of a SIGSTOP case held long enough, waits
// until the fault is injected, then SIGKILLs etcd-localrun and, if
// alsoTester, the tester, so that nothing of the run gets to heal or tear
// down. It returns the pids of what was killed and of the processes left,
// after checking that the agents and etcd (one of them paused) are left.
func killMidFault(t *testing.T, bin string, flags []string, reportDir string, alsoTester bool) (killed map[int]bool, left []proc) {
	t.Helper()
	r := startRun(t, bin, flags, "-cases", "SIGSTOP_ONE_FOLLOWER", "-case-delay", "60s", "-limit", "1", "-metrics-addr", "")
	r.waitOutput("] injected on ", 60*time.Second)

	var tester *proc
	for _, p := range findRemains(t, "-", reportDir, false).procs {
		if p.comm == "etcd-tester" {
			tester = &p
		}
	}
	if tester == nil {
		t.Fatalf("no etcd-tester process naming %s", reportDir)
	}
	killed = map[int]bool{r.cmd.Process.Pid: true}
	r.cmd.Process.Kill()
	if alsoTester {
		syscall.Kill(tester.pid, syscall.SIGKILL)
		killed[tester.pid] = true
	}
	r.wait(10 * time.Second)

	// What the killed run left: agents and their etcd, one of them paused
	// (SIGSTOP), all reparented to this test since etcd-localrun died.
	deadline := time.Now().Add(5 * time.Second)
	for {
		dying := 0
		for _, p := range processes() {
			if killed[p.pid] && p.state != 'Z' {
				dying++
			}
		}
		if dying == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	left = findRemains(t, "-", reportDir, false).procs
	count := map[string]int{}
	paused := 0
	for _, p := range left {
		count[p.comm]++
		if p.comm == "etcd" && p.state == 'T' {
			paused++
		}
	}
	if count["etcd-agent"] != 3 || count["etcd"] != 3 || paused != 1 {
		t.Fatalf("want 3 agents and 3 etcd (1 paused) left by the killed run; left: %v", left)
	}
	wantTester := 1
	if alsoTester {
		wantTester = 0
	}
	if count["etcd-tester"] != wantTester {
		t.Fatalf("want %d tester left by the killed run; left: %v", wantTester, left)
	}
	return killed, left
}

// TestKilledRunClearedByNext: a run killed mid-fault (etcd-localrun and
// the tester SIGKILLed, so nothing heals or tears down) leaves agents, a
// paused etcd, namespaces, links and the FORWARD rule; the next run with
// the same net name and report dir removes all of it, passes, and leaves
// nothing.
func TestKilledRunClearedByNext(t *testing.T) {
	bin := binDir(t)
	needNetns(t)
	const name = "lrtk"
	report := filepath.Join(t.TempDir(), "report")
	t.Cleanup(func() { cleanUp(t, name, report, true) })

	killed, left := killMidFault(t, bin, netnsFlags(name, report), report, true)
	r := findRemains(t, name, report, true)
	if len(r.namespaces) != 3 || len(r.rules) != 1 || !slices.Contains(r.links, name+"-br") {
		t.Fatalf("want 3 namespaces, 1 rule and the bridge left by the killed run; left:%s", r)
	}
	for _, p := range left {
		killed[p.pid] = true // the next run kills them; they end as zombies here
	}

	next := startRun(t, bin, netnsFlags(name, report), shortCase...)
	if st := next.wait(90 * time.Second); st != 0 {
		t.Fatalf("run after the killed one: exit status %d, want 0", st)
	}
	wantPassed(t, report)
	wantClean(t, name, report, true, killed)
}

// TestLoopbackKilledRunClearedByNext: in loopback mode a killed run leaves
// processes holding the fixed loopback ports, and this time the tester is
// left running too (only etcd-localrun is killed, as by `kill -9`). The
// next run kills every one of them, waits until their ports are free, then
// passes and leaves nothing.
func TestLoopbackKilledRunClearedByNext(t *testing.T) {
	bin := binDir(t)
	const name = "lrtq"
	report := filepath.Join(t.TempDir(), "report")
	flags := []string{"-mode", "loopback", "-net-name", name, "-report-dir", report}
	t.Cleanup(func() { cleanUp(t, name, report, false) })

	killed, left := killMidFault(t, bin, flags, report, false)
	if c, err := net.Dial("tcp", "127.0.0.1:19027"); err != nil {
		t.Fatalf("the killed run's first agent does not answer on 127.0.0.1:19027: %v", err)
	} else {
		c.Close()
	}
	for _, p := range left {
		killed[p.pid] = true
	}

	next := startRun(t, bin, flags, shortCase...)
	if st := next.wait(90 * time.Second); st != 0 {
		t.Fatalf("run after the killed one: exit status %d, want 0", st)
	}
	wantPassed(t, report)
	wantClean(t, name, report, false, killed)
}

// TestInterrupt: SIGINT (Ctrl-C) to etcd-localrun while a member is
// paused. The tester heals the fault and writes results.json marked
// interrupted with nothing unhealed; etcd-localrun tears down and exits 1
// within a minute; nothing is left.
func TestInterrupt(t *testing.T) {
	bin := binDir(t)
	needNetns(t)
	const name = "lrti"
	report := filepath.Join(t.TempDir(), "report")
	t.Cleanup(func() { cleanUp(t, name, report, true) })

	r := startRun(t, bin, netnsFlags(name, report), "-cases", "SIGSTOP_ONE_FOLLOWER", "-case-delay", "60s", "-limit", "1", "-metrics-addr", "")
	r.waitOutput("] injected on ", 60*time.Second)
	paused := 0
	for _, p := range findRemains(t, name, report, false).procs {
		if p.comm == "etcd" && p.state == 'T' {
			paused++
		}
	}
	if paused != 1 {
		t.Fatalf("want one paused etcd when the fault is injected, have %d", paused)
	}

	sent := time.Now()
	r.cmd.Process.Signal(syscall.SIGINT)
	if st := r.wait(60 * time.Second); st != 1 {
		t.Errorf("exit status %d after SIGINT, want 1", st)
	}
	t.Logf("exit %.1fs after SIGINT", time.Since(sent).Seconds())
	res := readResults(t, report)
	if !res.Interrupted || res.Passed || len(res.Unhealed) > 0 {
		t.Errorf("results.json: want interrupted, not passed, nothing unhealed; got %+v", res)
	}
	if out := r.out.String(); !strings.Contains(out, "healing injected faults") {
		t.Errorf("the tester does not say it heals:\n%s", out)
	}
	wantClean(t, name, report, true, nil)
}

// TestInterruptDuringSetup: SIGINT while the hosts and agents are coming
// up, before the tester runs. It is an interrupt (exit status 1, said so),
// not a setup failure, the agents stopped early are no error, and nothing
// is left.
func TestInterruptDuringSetup(t *testing.T) {
	bin := binDir(t)
	needNetns(t)
	const name = "lrtu"
	report := filepath.Join(t.TempDir(), "report")
	t.Cleanup(func() { cleanUp(t, name, report, true) })

	r := startRun(t, bin, netnsFlags(name, report), shortCase...)
	r.waitOutput("localrun: hosts: ", 30*time.Second) // namespaces made, agents starting
	r.cmd.Process.Signal(syscall.SIGINT)
	if st := r.wait(60 * time.Second); st != 1 {
		t.Errorf("exit status %d after SIGINT during setup, want 1", st)
	}
	out := r.out.String()
	if !strings.Contains(out, "interrupted") || strings.Contains(out, "teardown:") {
		t.Errorf("want the run to say it was interrupted, and no teardown error; output:\n%s", out)
	}
	wantClean(t, name, report, true, nil)
}

// TestLoopback: -mode loopback (root or not). The output says the mode and
// why; the short case passes; every BLACKHOLE case is reported skipped in
// results.json with the reason that isolation would be one-way; nothing is
// left.
func TestLoopback(t *testing.T) {
	bin := binDir(t)
	const name = "lrtl"
	report := filepath.Join(t.TempDir(), "report")
	flags := []string{"-mode", "loopback", "-net-name", name, "-report-dir", report}
	netns := localnet.Available() == nil
	t.Cleanup(func() { cleanUp(t, name, report, netns) })

	// With no -cases the tester selects what loopback supports and skips
	// the rest; ask it which cases it selects (an out-of-range schedule
	// index makes it list them and stop), to schedule the short one alone.
	probe := startRun(t, bin, flags, "-limit", "1", "-metrics-addr", "", "-schedule-cases", "999")
	if st := probe.wait(60 * time.Second); st != 2 {
		t.Fatalf("probe run: exit status %d, want the tester's 2", st)
	}
	wantClean(t, name, report, netns, nil)
	m := regexp.MustCompile(`selected cases: ([A-Z0-9_, ]+)\)`).FindStringSubmatch(probe.out.String())
	if m == nil {
		t.Fatalf("probe run: no list of selected cases in the output")
	}
	index := slices.Index(strings.Split(m[1], ", "), shortCase[1])
	if index < 0 {
		t.Fatalf("probe run: %s not among the selected cases %s", shortCase[1], m[1])
	}

	r := startRun(t, bin, flags, "-limit", "1", "-metrics-addr", "", "-schedule-cases", strconv.Itoa(index))
	if st := r.wait(90 * time.Second); st != 0 {
		t.Fatalf("exit status %d, want 0", st)
	}
	out := r.out.String()
	if !regexp.MustCompile(`mode loopback: asked for; \S`).MatchString(out) {
		t.Errorf("output does not say the mode and why:\n%s", out)
	}
	wantPassed(t, report)

	res := readResults(t, report)
	var blackholes []string
	for _, line := range strings.Split(command(t, filepath.Join(bin, "etcd-tester"), "-list-cases"), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "BLACKHOLE_") {
			blackholes = append(blackholes, f[0])
		}
	}
	if len(blackholes) == 0 {
		t.Fatal("etcd-tester -list-cases lists no BLACKHOLE case")
	}
	for _, b := range blackholes {
		i := slices.IndexFunc(res.Skipped, func(s skip) bool { return s.Case == b })
		switch {
		case i < 0:
			t.Errorf("%s not reported as skipped; skipped: %+v", b, res.Skipped)
		case !strings.Contains(res.Skipped[i].Reason, "one-way"):
			t.Errorf("%s skipped for %q, want the one-way isolation reason", b, res.Skipped[i].Reason)
		}
	}
	wantClean(t, name, report, netns, nil)
}

// TestLoopbackBusyPort: a loopback run whose ports are taken says which
// and exits 2 before it starts anything or empties the report dir.
func TestLoopbackBusyPort(t *testing.T) {
	bin := binDir(t)
	ln, err := net.Listen("tcp", "127.0.0.1:29027") // the second agent's
	if err != nil {
		t.Skipf("cannot take the port for the test: %v", err)
	}
	defer ln.Close()
	report := filepath.Join(t.TempDir(), "report")
	keep := filepath.Join(report, "keep")
	if err := os.MkdirAll(report, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keep, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := startRun(t, bin, []string{"-mode", "loopback", "-net-name", "lrtp", "-report-dir", report}, shortCase...)
	if st := r.wait(30 * time.Second); st != 2 {
		t.Errorf("exit status %d, want 2", st)
	}
	if out := r.out.String(); !regexp.MustCompile(`etcd-localrun: .*in use: .*127\.0\.0\.1:29027`).MatchString(out) {
		t.Errorf("the output does not name the busy port:\n%s", out)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("the report dir was emptied: %v", err)
	}
	wantClean(t, "lrtp", report, false, nil)
}

// TestBadInput: flags that cannot work are refused with exit status 2 and
// one line naming the culprit, before anything is touched (the report dir
// keeps its content).
func TestBadInput(t *testing.T) {
	bin := binDir(t)
	for _, tc := range []struct {
		name  string
		flags []string
		want  string
	}{
		{"no hosts", []string{"-hosts", "0"}, "hosts 0"},
		{"bogus mode", []string{"-mode", "bogus"}, `mode "bogus"`},
		{"missing bin dir", []string{"-bin-dir", "/nonexistent/bin"}, "/nonexistent/bin/etcd"},
		{"bad net name", []string{"-net-name", "Bad_Name"}, `"Bad_Name"`},
		{"root as report dir", []string{"-report-dir", "/"}, `report dir "/"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			report := filepath.Join(t.TempDir(), "report")
			keep := filepath.Join(report, "keep")
			if err := os.MkdirAll(report, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(keep, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			// -bin-dir and -report-dir given again below win over these.
			flags := append([]string{"-report-dir", report, "-net-name", "lrtb"}, tc.flags...)
			r := startRun(t, bin, flags, shortCase...)
			if st := r.wait(30 * time.Second); st != 2 {
				t.Errorf("exit status %d, want 2", st)
			}
			out := strings.TrimSpace(r.out.String())
			if strings.Count(out, "\n") != 0 || !strings.Contains(out, tc.want) {
				t.Errorf("want one line naming %s; got:\n%s", tc.want, out)
			}
			if _, err := os.Stat(keep); err != nil {
				t.Errorf("bad input touched the report dir: %v", err)
			}
		})
	}
}

// TestSideBySide: two netns runs of different names at once both pass,
// each with its own network and report; a third run that reuses the name
// of a live one is refused at once, naming that run, and leaves it alone.
func TestSideBySide(t *testing.T) {
	bin := binDir(t)
	needNetns(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	// A hold long enough for the refused run to start and end inside it.
	held := []string{"-cases", "NO_FAIL_WITH_NO_STRESS_FOR_LIVENESS", "-case-delay", "8s", "-limit", "1"}
	ra := startRun(t, bin, netnsFlags("lrsa", a), held...)
	rb := startRun(t, bin, netnsFlags("lrsb", b), held...)
	ra.waitOutput("] inject: ", 90*time.Second)
	rb.waitOutput("] inject: ", 90*time.Second)

	refused := startRun(t, bin, netnsFlags("lrsa", filepath.Join(dir, "c")), shortCase...)
	if st := refused.wait(10 * time.Second); st != 2 {
		t.Fatalf("a run reusing a live run's name: exit status %d, want 2\n%s", st, refused.out)
	}
	out := refused.out.String()
	if !strings.Contains(out, "another run is going") || !strings.Contains(out, fmt.Sprintf("pid %d", ra.cmd.Process.Pid)) {
		t.Errorf("the refusal does not name the live run (pid %d):\n%s", ra.cmd.Process.Pid, out)
	}
	if refused.took > 5*time.Second {
		t.Errorf("the refusal took %v; want at once", refused.took)
	}
	if strings.Contains(out, "killing leftover") || strings.Contains(out, "mode netns") {
		t.Errorf("the refused run touched something before refusing:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "c")); err == nil {
		t.Errorf("the refused run created its report dir")
	}

	for _, r := range []struct {
		run    *run
		name   string
		report string
	}{{ra, "lrsa", a}, {rb, "lrsb", b}} {
		if st := r.run.wait(120 * time.Second); st != 0 {
			t.Fatalf("run %s beside another: exit status %d, want 0\n%s", r.name, st, r.run.out)
		}
		wantPassed(t, r.report)
		wantClean(t, r.name, r.report, true, nil)
	}
}
