// Package htmlreport renders a run's report directory as one
// self-contained HTML page, index.html: a verdict, the case table, a
// timeline of load, latency and errors around each fault, the recovery
// times of each case across rounds, and the details of every failure.
//
// The page is a function of the directory's results.json alone, and
// results.json is the contract with the tester: this package declares its
// own view of it rather than import package tester, which calls Write
// after every case and serves Handler on its metrics address. Fields it
// does not know are ignored; fields it knows but that are missing are
// shown as not recorded.
//
// The page needs no network: its CSS and plots (SVG, drawn by
// gonum.org/v1/plot) are inline, and its only script sorts the table.
package htmlreport

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// PageFile is the page Write writes into the report directory.
const PageFile = "index.html"

// Write renders dir/index.html from dir/results.json. The page is
// replaced atomically, so a browser or the Handler never reads half of it.
func Write(dir string) error {
	return WriteFrom(filepath.Join(dir, ResultsFile), dir)
}

// WriteFrom renders dir/index.html from the results.json at resultsPath,
// which need not lie in dir: an old run's results can get a page anywhere.
func WriteFrom(resultsPath, dir string) error {
	r, err := readResultsFile(resultsPath)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := render(&buf, dir, r); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("htmlreport: %w", err)
	}
	return writeAtomic(filepath.Join(dir, PageFile), buf.Bytes())
}

func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("htmlreport: %w", err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// CreateTemp makes the file 0600; the page is for anyone who may
		// read the report directory.
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("htmlreport: write %s: %w", path, err)
	}
	return nil
}

// Handler serves the report directory dir: at / (and /index.html) the
// current page, rendered from results.json on each request so that it is
// current even between two Writes; besides, the run's reports
// (results.json, summary.txt, cases.jsonl) and what the checkers saved
// beside each case (round1_case3_NAME/…), so that the page's links to
// them work when it is served. Nothing else of dir: the tester serves
// this on its metrics address, on every interface by default, and a
// report directory may hold agents' base directories (etcd's data, logs,
// failure archives), which the page links to as files on disk. It
// answers 503 until results.json exists.
func Handler(dir string) http.Handler {
	files := http.FileServer(http.Dir(dir))
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/" && req.URL.Path != "/"+PageFile {
			if !served(req.URL.Path) {
				http.Error(w, "not served: the report server serves the page, the run's reports and the checkers' files; the rest of the report directory is on the tester's disk", http.StatusNotFound)
				return
			}
			files.ServeHTTP(w, req)
			return
		}
		r, err := readResults(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				http.Error(w, "no results yet: the run has not written "+ResultsFile, http.StatusServiceUnavailable)
				return
			}
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var buf bytes.Buffer
		if err := render(&buf, dir, r); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeContent(w, req, PageFile, time.Time{}, bytes.NewReader(buf.Bytes()))
	})
}

// servedFiles are the run's reports the Handler serves by name.
var servedFiles = map[string]bool{ResultsFile: true, "summary.txt": true, "cases.jsonl": true}

// caseDirName is a directory the tester keeps a case's checker files in.
var caseDirName = regexp.MustCompile(`^round[0-9]+_case[0-9]+(_[A-Z0-9_]+)?$`)

// served reports whether the Handler serves the file at URL path p: one of
// servedFiles, or a file in a case's directory.
func served(p string) bool {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	first, rest, nested := strings.Cut(p, "/")
	if !nested {
		return servedFiles[first]
	}
	return caseDirName.MatchString(first) && rest != ""
}
