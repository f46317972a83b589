package htmlreport

import (
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func writePage(t *testing.T, dir string) string {
	t.Helper()
	if err := Write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, PageFile))
	if err != nil {
		t.Fatal(err)
	}
	// Nothing but the page and its input: the temporary file was renamed.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("report dir holds %d entries, want results.json and index.html", len(ents))
	}
	return string(b)
}

func mustContain(t *testing.T, page string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(page, w) {
			t.Errorf("page lacks %q", w)
		}
	}
}

// selfContained fails if the page would fetch anything: no external
// script, style sheet, image or font.
func selfContained(t *testing.T, page string) {
	t.Helper()
	for _, bad := range []string{"<script src", "<link ", "@import", "url(http", `src="http`} {
		if strings.Contains(page, bad) {
			t.Errorf("page is not self-contained: has %q", bad)
		}
	}
}

func TestWritePassingRun(t *testing.T) {
	dir := synthDir(t, synthOpts{rounds: 2, cases: 29, additive: true})
	page := writePage(t, dir)
	selfContained(t, page)
	mustContain(t, page, `<span class="verdict" id="verdict">PASS</span>`, `id="n-ran">58<`, `id="n-failed">0<`,
		"make run ARGS='-seed 1764511200 -cases SIGTERM_ONE_FOLLOWER,", "-limit 2",
		"3.6.16 (every member)", "v0.0.0-synthetic", "stresser.qps", "SIGQUIT_AND_REMOVE_LEADER", "needs -peer-proxy",
		`<th class="num">unavailable</th>`, `<th>checks</th>`, `id="recovery-plot"`)
	// A finding: counted in the header, shown with its case, its member
	// and what the tester saw.
	mustContain(t, page, `id="n-findings">1<`, `<h2 id="findings">Findings</h2>`,
		`<a href="#r1c2">SIGQUIT_AND_REMOVE_ONE_FOLLOWER</a>`, "<b>s3</b> ready only after a client write",
		"healthy 0.210s after the tester began to write")
	for _, n := range caseNames {
		if strings.Count(page, `data-case="`+n+`"`) != 4 { // 2 rows, 2 timelines
			t.Errorf("case %s: %d entries, want 4", n, strings.Count(page, `data-case="`+n+`"`))
		}
	}
	// One timeline per case with load, and the recovery plot.
	if got, want := strings.Count(page, `<svg class="plot"`), 2*28+1; got != want {
		t.Errorf("%d plots, want %d", got, want)
	}
	mustContain(t, page, "no load ran during this case")
	if strings.Contains(page, "Failures</h2>") {
		t.Error("a passing run shows a failures section")
	}
}

func TestWriteFailingRun(t *testing.T) {
	dir := synthDir(t, synthOpts{rounds: 1, cases: 5, additive: true, failed: map[[2]int]bool{{1, 3}: true}})
	page := writePage(t, dir)
	mustContain(t, page, `id="verdict">FAIL<`, `id="n-failed">1<`, "Failures</h2>", `id="fail-r1c3"`,
		"s2: context deadline exceeded", "history is not linearizable",
		// Archives lie outside the report directory: file URLs; the
		// checker's file lies inside: a relative link.
		`href="file:///tmp/etcd-agent-2/failure_archive/20261130-140102_round1_case3_SIGTERM_LEADER"`,
		`href="file:///tmp/etcd-agent-2/failure_archive/20261130-140102_round1_case3_SIGTERM_LEADER/etcd.log"`,
		`href="round1_case3/linearizability.html"`, "operations 15234, seconds 1.7",
		`<span class="badge fail">fail</span> <b>linearizability</b>`, "never healthy")
	if strings.Count(page, `class="failure"`) != 1 {
		t.Errorf("want one failure block")
	}
}

func TestWriteInterruptedRun(t *testing.T) {
	dir := synthDir(t, synthOpts{rounds: 2, cases: 6, interrupted: true})
	page := writePage(t, dir)
	mustContain(t, page, `id="verdict">INTERRUPTED<`, `id="n-ran">9<`, "Run error", "interrupted")
	// Without the announced additions: no empty columns for them, and the
	// replay does not claim a round count the run never reached.
	for _, absent := range []string{`<th class="num">unavailable</th>`, `<th>checks</th>`, "-limit", "n-findings"} {
		if strings.Contains(page, absent) {
			t.Errorf("page has %q", absent)
		}
	}
}

func TestWriteEmptyRun(t *testing.T) {
	dir := t.TempDir()
	// What the tester writes before its first case.
	os.WriteFile(filepath.Join(dir, ResultsFile), []byte(`{"seed": 42, "passed": false, "interrupted": false,
		"started": "2026-11-30T14:00:00Z", "recovery_timeout_seconds": 30, "agents": ["a:9027"],
		"schedule": ["SIGKILL_LEADER"], "rounds": [], "skipped": []}`), 0o644)
	page := writePage(t, dir)
	mustContain(t, page, `id="verdict">RUNNING<`, `id="n-ran">0<`, "No case has finished yet", "-seed 42 -cases SIGKILL_LEADER")
	if strings.Contains(page, "<svg") {
		t.Error("an empty run has plots")
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir); err == nil {
		t.Error("Write without results.json succeeded")
	}
	os.WriteFile(filepath.Join(dir, ResultsFile), []byte(`{"rounds": [`), 0o644)
	if err := Write(dir); err == nil || !strings.Contains(err.Error(), ResultsFile) {
		t.Errorf("truncated results.json: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, PageFile)); err == nil {
		t.Error("a failed Write left a page")
	}
}

func TestWriteFromElsewhere(t *testing.T) {
	src := synthDir(t, synthOpts{rounds: 1, cases: 2})
	dst := filepath.Join(t.TempDir(), "new", "dir")
	if err := WriteFrom(filepath.Join(src, ResultsFile), dst); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dst, PageFile)); err != nil {
		t.Error(err)
	}
}

func TestHandler(t *testing.T) {
	dir := t.TempDir()
	srv := httptest.NewServer(Handler(dir))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/"); code != http.StatusServiceUnavailable {
		t.Errorf("before results.json: %d", code)
	}
	os.WriteFile(filepath.Join(dir, ResultsFile), synth(t, synthOpts{rounds: 1, cases: 2}), 0o644)
	os.WriteFile(filepath.Join(dir, "summary.txt"), []byte("result: PASS\n"), 0o644)
	code, body := get("/")
	if code != http.StatusOK || !strings.Contains(body, "SIGTERM_ONE_FOLLOWER_UNTIL_TRIGGER_SNAPSHOT") {
		t.Errorf("/: %d, %d bytes", code, len(body))
	}
	// The page follows results.json without a Write in between.
	os.WriteFile(filepath.Join(dir, ResultsFile), synth(t, synthOpts{rounds: 1, cases: 3}), 0o644)
	if _, body := get("/index.html"); !strings.Contains(body, "SIGTERM_LEADER") {
		t.Error("/index.html did not follow results.json")
	}
	if code, body := get("/summary.txt"); code != http.StatusOK || body != "result: PASS\n" {
		t.Errorf("/summary.txt: %d %q", code, body)
	}
	// What the checkers saved beside a case is served; the agents' base
	// dirs (etcd's data and logs) that a local run keeps in the report
	// dir are not, however the path is spelled.
	caseFile := filepath.Join(dir, "round1_case3_SIGKILL_LEADER", "linearizability.html")
	os.MkdirAll(filepath.Dir(caseFile), 0o755)
	os.WriteFile(caseFile, []byte("<html>porcupine</html>"), 0o644)
	if code, body := get("/round1_case3_SIGKILL_LEADER/linearizability.html"); code != http.StatusOK || body != "<html>porcupine</html>" {
		t.Errorf("checker file: %d %q", code, body)
	}
	data := filepath.Join(dir, "agents", "agent-0", "etcd.data", "member", "snap", "db")
	os.MkdirAll(filepath.Dir(data), 0o755)
	os.WriteFile(data, []byte("secret"), 0o644)
	for _, p := range []string{"/agents/agent-0/etcd.data/member/snap/db", "/round1_case3_SIGKILL_LEADER/../agents/agent-0/etcd.data/member/snap/db",
		"/agents/", "/round1_case3_SIGKILL_LEADER", "/other.txt"} {
		if code, body := get(p); code != http.StatusNotFound || strings.Contains(body, "secret") {
			t.Errorf("%s: %d %q; want 404", p, code, body)
		}
	}
}

func TestProgress(t *testing.T) {
	for _, tc := range []struct {
		idx, cases, round, rounds int
		elapsed                   time.Duration
		want                      string
	}{
		{12, 29, 1, 3, 12 * time.Minute, "case 12/29, round 1/3, elapsed 12m0s, estimated left 1h15m0s"},
		{29, 29, 3, 3, time.Hour, "case 29/29, round 3/3, elapsed 1h0m0s, estimated left 0s"},
		{1, 29, 1, 1, 1500 * time.Millisecond, "case 1/29, round 1/1, elapsed 2s, estimated left 42s"},
		{3, 5, 7, -1, time.Minute, "case 3/5, round 7, elapsed 1m0s"},
	} {
		if got := Progress(tc.idx, tc.cases, tc.round, tc.rounds, tc.elapsed); got != tc.want {
			t.Errorf("Progress(%d, %d, %d, %d, %v) = %q, want %q", tc.idx, tc.cases, tc.round, tc.rounds, tc.elapsed, got, tc.want)
		}
	}
}

func TestDownsample(t *testing.T) {
	var s []second
	for i := 0; i < 3600; i++ {
		s = append(s, second{Unix: 1000 + int64(i), Success: 100, P50: 1e6, P99: 2e6})
	}
	s[1234].P99 = 5e9 // a spike must survive
	pts := downsample(s, 1000)
	if len(pts) > maxPoints {
		t.Fatalf("%d points", len(pts))
	}
	peak := 0.0
	for _, p := range pts {
		peak = max(peak, p.p99)
		if math.Abs(p.ok-100) > 1e-9 || math.Abs(p.p50-1) > 1e-9 {
			t.Fatalf("point %+v: want 100 ok/s, p50 1ms", p)
		}
	}
	if peak != 5000 {
		t.Errorf("p99 peak %vms, want 5000", peak)
	}
	if short := downsample(s[:30], 1000); len(short) != 30 {
		t.Errorf("a short series was downsampled to %d points", len(short))
	}
}

func TestReplayArgs(t *testing.T) {
	r := &results{Seed: 5, Schedule: []string{"A", "B", "A"}, Rounds: make([]round, 3), Finished: time.Now()}
	if got, want := r.replayArgs(), "-seed 5 -cases A,B -schedule-cases 0,1,0 -limit 3"; got != want {
		t.Errorf("replay %q, want %q", got, want)
	}
}

// TestTimelineEdgeCases draws the timelines of odd cases without error: a
// series of one second, one of silence (nothing finished), a fault that
// outlasted the load, a case that failed before its fault, and a passed
// case whose series the tester dropped.
func TestTimelineEdgeCases(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for name, c := range map[string]*caseResult{
		"one second": {Stress: &stats{Series: []second{{Unix: 1000, Success: 5, P50: 1e6, P99: 2e6}}}, InjectTime: t0},
		"silence":    {Stress: &stats{Series: []second{{Unix: 1000}, {Unix: 1001}, {Unix: 1002}}}, InjectTime: t0.Add(time.Second)},
		"long fault": {Stress: &stats{Series: []second{{Unix: 1000, Success: 1, P99: 1}}}, InjectTime: t0, RecoverTime: t0.Add(time.Minute)},
		"old series": {Stress: &stats{Series: []second{{Unix: 1000, Success: 9, P99: 5e6}, {Unix: 1001, Success: 9, P99: 7e6}}}, InjectTime: t0},
		"no fault":   {Stress: &stats{Start: t0, Series: []second{{Unix: 1000, Success: 9, Failure: 1, P99: 5e6}, {Unix: 1001, Failure: 3}}}},
	} {
		c.Case = name
		svg, err := timeline(c)
		if err != nil || !strings.HasPrefix(svg, `<svg class="plot"`) {
			t.Errorf("%s: %v, %.60q", name, err, svg)
		}
		if name == "old series" && strings.Contains(svg, ">p50<") {
			t.Error("a series without p50 has a p50 line")
		}
	}
	if svg, err := timeline(&caseResult{Passed: true, Stress: &stats{QPS: 10}}); svg != "" || err != nil {
		t.Errorf("no series: %q, %v", svg, err)
	}
	rw, err := newRow("/r", 1, &caseResult{Case: "X", Index: 1, Passed: true, Stress: &stats{QPS: 10, SeriesDropped: 7}}, true)
	if err != nil || !strings.Contains(rw.TimelineNote, "passed case") || rw.Dropped != 7 {
		t.Errorf("row %+v, %v", rw, err)
	}
}

// TestLongRunKeepsThePageBounded: past maxTimelines passed cases, only the
// latest are drawn, and every failed one still is.
func TestLongRunKeepsThePageBounded(t *testing.T) {
	dir := synthDir(t, synthOpts{rounds: 12, cases: 29, failed: map[[2]int]bool{{1, 2}: true}})
	page := writePage(t, dir)
	plots := strings.Count(page, `<svg class="plot"`)
	// 12 rounds of 28 loaded cases, one failed (in round 1): 300 passed
	// plus the failed one, and the recovery plot.
	if want := maxTimelines + 1 + 1; plots != want {
		t.Errorf("%d plots, want %d", plots, want)
	}
	if !strings.Contains(page, `id="r1c2"`) || !strings.Contains(page, "timeline left out") {
		t.Error("the failed case or the note on left-out timelines is missing")
	}
	if len(page) > 8<<20 {
		t.Errorf("page of %d bytes", len(page))
	}
}

// TestConcurrentRenders: the tester's Write after a case and browsers
// asking the Handler may render at once; gonum's shared font cache and the
// page template must bear it (run with -race).
func TestConcurrentRenders(t *testing.T) {
	dir := synthDir(t, synthOpts{rounds: 1, cases: 4})
	h := Handler(dir)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Go(func() {
			if err := Write(dir); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
			if rec.Code != http.StatusOK {
				t.Errorf("GET /: %d", rec.Code)
			}
		})
	}
	wg.Wait()
}

func TestVersions(t *testing.T) {
	for in, want := range map[string]string{
		`"3.6.16"`:                         "3.6.16",
		`["3.6.16", "3.5.21"]`:             "3.6.16, 3.5.21",
		`{"s1": "3.6.16", "s2": "3.5.21"}`: "s1: 3.6.16, s2: 3.5.21",
		`{"s1": "3.6.16", "s2": "3.6.16"}`: "3.6.16 (every member)",
		``:                                 "",
	} {
		if got := versions([]byte(in)); got != want {
			t.Errorf("versions(%s) = %q, want %q", in, got, want)
		}
	}
}
