package htmlreport

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkWrite renders a three-round run of the full 29-case schedule,
// every case with its per-second series (one of them ten minutes long)
// and one failure, and reports the page's size: the issue asks for under
// about 2 MB per 29-case round.
func BenchmarkWrite(b *testing.B) {
	dir := synthDir(b, synthOpts{rounds: 3, cases: 29, additive: true, failed: map[[2]int]bool{{2, 8}: true}})
	for b.Loop() {
		if err := Write(dir); err != nil {
			b.Fatal(err)
		}
	}
	st, err := os.Stat(filepath.Join(dir, PageFile))
	if err != nil {
		b.Fatal(err)
	}
	in, _ := os.Stat(filepath.Join(dir, ResultsFile))
	b.ReportMetric(float64(st.Size()), "page-bytes")
	b.ReportMetric(float64(in.Size()), "results.json-bytes")
}
