package tester

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// script writes an executable shell script into a temporary directory.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fault.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestExternalCase: the program runs as `PROGRAM enable ROUND` and
// `PROGRAM disable ROUND`; the "external" checker puts its exit statuses
// and output in the report.
func TestExternalCase(t *testing.T) {
	c, _ := fakeCluster(t, 3)
	calls := filepath.Join(t.TempDir(), "calls")
	e := &externalCase{path: script(t, `echo "$@" >> `+calls+`; echo "did $1"; echo oops >&2`)}
	ctx := withCaseRound(context.Background(), 3)
	if err := e.Inject(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := e.Recover(ctx, c); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(calls); string(b) != "enable 3\ndisable 3\n" {
		t.Fatalf("program called with %q, want enable 3 then disable 3", b)
	}
	cc := &CheckContext{Cluster: c, Case: e, Dir: filepath.Join(t.TempDir(), "case")}
	ck := newExternalCheck(cc)
	if ck == nil {
		t.Fatal("no external checker for EXTERNAL")
	}
	if err := ck.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if cc.figures["enable exit code"] != 0 || cc.figures["disable exit code"] != 0 || len(cc.files) != 1 {
		t.Fatalf("figures %v files %v", cc.figures, cc.files)
	}
	b, err := os.ReadFile(cc.files[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"enable 3\n# exit 0", "did enable", "oops", "disable 3\n# exit 0", "did disable"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("external.txt lacks %q:\n%s", want, b)
		}
	}
	if newExternalCheck(&CheckContext{Cluster: c, Case: noFail{}}) != nil {
		t.Error("external checker built for another case")
	}
}

// A program that fails fails the case with its exit status and the end
// of its output; output beyond the bound is cut and counted.
func TestExternalCaseFails(t *testing.T) {
	c, _ := fakeCluster(t, 3)
	e := &externalCase{path: script(t, `head -c 100000 /dev/zero | tr '\0' x; echo; echo "cannot $1 round $2"; exit 3`)}
	err := e.Inject(withCaseRound(context.Background(), 2), c)
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "cannot enable round 2") {
		t.Fatalf("Inject of a failing program: %v", err)
	}
	r := e.runs[0]
	if r.ExitCode != 3 || len(r.Output) != externalOutputMax || r.Dropped == 0 {
		t.Errorf("run: exit %d, %d bytes kept, %d dropped", r.ExitCode, len(r.Output), r.Dropped)
	}
}

func TestExternalExecPathChecked(t *testing.T) {
	notExec := filepath.Join(t.TempDir(), "x")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	for path, want := range map[string]string{
		filepath.Join(t.TempDir(), "missing"): "no such file",
		notExec:                               "not an executable file",
		t.TempDir():                           "not an executable file",
	} {
		if err := checkExternalExecPath(path); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "-external-exec-path") {
			t.Errorf("%s: %v, want %q", path, err, want)
		}
	}
	if err := checkExternalExecPath(""); err != nil {
		t.Errorf("no program: %v", err)
	}
	if (&externalCase{}).Requires(Env{}) == nil {
		t.Error("EXTERNAL without a program: no reason to skip it")
	}
}
