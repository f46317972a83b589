package htmlreport

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browserPath finds a Chromium to drive; .ci/run installs Debian's.
func browserPath() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// TestBrowser opens the page in headless Chromium as a person would and
// checks that it loads without console errors, shows every case, and
// draws every plot; it leaves screenshots in the report directory.
//
// By default the page is a synthetic three-round run with a failure;
// HTMLREPORT_DIR=path/to/report renders a real run's results.json there
// instead (and keeps the page and screenshots there).
func TestBrowser(t *testing.T) {
	exe := browserPath()
	if exe == "" {
		t.Skip("no Chromium found (apt-get install chromium); the page was not checked in a browser")
	}
	dir := os.Getenv("HTMLREPORT_DIR")
	if dir == "" {
		dir = synthDir(t, synthOpts{rounds: 3, cases: 29, additive: true, failed: map[[2]int]bool{{2, 8}: true}})
	}
	if err := Write(dir); err != nil {
		t.Fatal(err)
	}
	r, err := readResults(dir)
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(filepath.Join(dir, PageFile))

	actx, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.Flag("disable-gpu", true))...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	// Starting the browser is the first action; where it cannot start
	// (no display libraries, a sandbox that forbids it) the test says so.
	if err := chromedp.Do(ctx); err != nil {
		t.Skipf("Chromium at %s did not start: %v", exe, err)
	}

	var mu sync.Mutex
	var console []chromedp.ConsoleMessage
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			mu.Lock()
			console = append(console, m)
			mu.Unlock()
		}
	}()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 1700), chromedp.Navigate("file://"+abs)); err != nil {
		t.Fatal(err)
	}

	// Per timeline: its case, how many plots it has, and how much each
	// plot draws (paths) and shows (its on-screen size).
	type section struct {
		ID, Case string
		Plots    int
		Paths    int
		Width    float64
		Height   float64
	}
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](`Array.from(document.querySelectorAll("section.case")).map(s => {
		const svgs = s.querySelectorAll("svg.plot"), r = svgs.length ? svgs[0].getBoundingClientRect() : {width: 0, height: 0};
		return {ID: s.id, Case: s.dataset.case, Plots: svgs.length, Paths: s.querySelectorAll("svg.plot path").length,
			Width: r.width, Height: r.height};
	})`))
	if err != nil {
		t.Fatal(err)
	}
	var sections []section
	if err := json.Unmarshal(raw, &sections); err != nil {
		t.Fatal(err)
	}
	byID := map[string]section{}
	for _, s := range sections {
		byID[s.ID] = s
	}
	for _, rd := range r.Rounds {
		for _, c := range rd.Cases {
			id := "r" + itoa(rd.Round) + "c" + itoa(c.Index)
			s, ok := byID[id]
			switch {
			case !ok:
				t.Errorf("round %d case %d %s: no timeline section", rd.Round, c.Index, c.Case)
			case s.Case != c.Case:
				t.Errorf("section %s shows %s, want %s", id, s.Case, c.Case)
			case c.Stress != nil && len(c.Stress.Series) > 0 && (s.Plots != 1 || s.Paths < 6 || s.Width < 300 || s.Height < 100):
				// Three panels, each with at least its frame and a line.
				t.Errorf("%s %s: %d plots with %d paths, %.0f×%.0f px: not drawn", id, c.Case, s.Plots, s.Paths, s.Width, s.Height)
			}
		}
	}
	recovery, err := chromedp.Run(ctx, chromedp.Evaluate[int](`(() => { const s = document.querySelector("#recovery-plot svg.plot");
		return s && s.getBoundingClientRect().height > 100 ? s.querySelectorAll("path").length : 0; })()`))
	if err != nil || recovery < len(r.Schedule) {
		t.Errorf("recovery plot draws %d paths (%v), want at least one per case of the schedule (%d)", recovery, err, len(r.Schedule))
	}
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#cases tbody tr").length`))
	if err != nil || rows != len(sections) {
		t.Errorf("case table has %d rows (%v), want %d", rows, err, len(sections))
	}

	// The sort script works: a click on "recovery" orders the rows.
	sorted, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => {
		const th = Array.from(document.querySelectorAll("#cases th")).find(h => h.textContent === "recovery");
		th.click();
		const col = th.cellIndex, ks = Array.from(document.querySelectorAll("#cases tbody tr")).map(r => parseFloat(r.cells[col].dataset.k));
		const ok = ks.every((k, i) => i == 0 || ks[i-1] <= k);
		// Back to the page's order for the screenshot: by case, then
		// (a stable sort) by round.
		const by = name => Array.from(document.querySelectorAll("#cases th")).find(h => h.textContent === name).click();
		by("#"); by("round");
		return ok;
	})()`))
	if err != nil || !sorted {
		t.Errorf("sorting by recovery: sorted %v, %v", sorted, err)
	}
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`window.scrollTo(0, 0)`)); err != nil {
		t.Fatal(err)
	}

	shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	writeShot(t, filepath.Join(dir, "screenshot.png"), shot)
	// The timelines, as a reader scrolls to them.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`document.querySelector("section.case").scrollIntoView()`)); err != nil {
		t.Fatal(err)
	}
	if shot, err = chromedp.Run(ctx, chromedp.CaptureScreenshot()); err != nil {
		t.Fatal(err)
	}
	writeShot(t, filepath.Join(dir, "screenshot-timelines.png"), shot)
	first := "section.case"
	if failed, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector("section.case.failed") || {}).id || ""`)); err == nil && failed != "" {
		first = "#" + failed
	}
	if caseShot, err := chromedp.Run(ctx, chromedp.Screenshot(chromedp.CSS(first))); err != nil {
		t.Errorf("screenshot of %s: %v", first, err)
	} else {
		writeShot(t, filepath.Join(dir, "screenshot-case.png"), caseShot)
	}

	time.Sleep(200 * time.Millisecond) // let late console messages arrive
	mu.Lock()
	defer mu.Unlock()
	for _, m := range console {
		if m.Type == chromedp.ConsoleError || m.IsException() {
			t.Errorf("console %s: %s (%s:%d)", m.Type, m.Text, m.URL, m.Line+1)
		}
	}
}

func writeShot(t *testing.T, path string, png []byte) {
	t.Helper()
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }
