package tester

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/etcdtest"
)

// allSettings turns on every setting EtcdFlags knows, with values that
// show up in the flags.
var allSettings = EtcdSettings{
	HeartbeatInterval:      100 * time.Millisecond,
	ElectionTimeout:        time.Second,
	SnapshotCount:          2000,
	SnapshotCatchupEntries: 500,
	CorruptCheck:           true,
	CorruptCheckTime:       time.Minute,
}

func mustVersion(t *testing.T, s string) wire.EtcdVersion {
	t.Helper()
	v, err := wire.ParseEtcdVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestEtcdFlagsPerRelease pins the spelling of every setting per release,
// as read from each release's etcdmain/config.go and checked against the
// built binaries (TestEtcdFlagsKnownByRealBinaries).
func TestEtcdFlagsPerRelease(t *testing.T) {
	common := []string{"--heartbeat-interval=100", "--election-timeout=1000", "--snapshot-count=2000"}
	for _, tc := range []struct {
		version string
		want    []string // after common
		notes   int
	}{
		{"3.5.4", []string{"--experimental-initial-corrupt-check=true", "--experimental-corrupt-check-time=1m0s"}, 2},
		{"3.5.13", []string{"--experimental-initial-corrupt-check=true", "--experimental-compact-hash-check-enabled=true",
			"--experimental-corrupt-check-time=1m0s"}, 1},
		{"3.5.15", []string{"--experimental-snapshot-catchup-entries=500", "--experimental-initial-corrupt-check=true",
			"--experimental-compact-hash-check-enabled=true", "--experimental-corrupt-check-time=1m0s"}, 0},
		{"3.6.0", []string{"--snapshot-catchup-entries=500", "--feature-gates=InitialCorruptCheck=true,CompactHashCheck=true",
			"--corrupt-check-time=1m0s"}, 0},
		{"3.6.16", []string{"--snapshot-catchup-entries=500", "--feature-gates=InitialCorruptCheck=true,CompactHashCheck=true",
			"--corrupt-check-time=1m0s"}, 0},
		{"3.7.3", []string{"--snapshot-catchup-entries=500", "--feature-gates=InitialCorruptCheck=true,CompactHashCheck=true",
			"--corrupt-check-time=1m0s"}, 0},
		// A release newer than any known spells flags as the newest known.
		{"3.9.0", []string{"--snapshot-catchup-entries=500", "--feature-gates=InitialCorruptCheck=true,CompactHashCheck=true",
			"--corrupt-check-time=1m0s"}, 0},
	} {
		v := mustVersion(t, tc.version)
		if err := SupportedEtcdVersion(v); err != nil {
			t.Errorf("%v: %v", v, err)
		}
		got := EtcdFlags(v, allSettings)
		if want := slices.Concat(common, tc.want); !slices.Equal(got, want) {
			t.Errorf("EtcdFlags(%v):\n got %q\nwant %q", v, got, want)
		}
		if notes := EtcdFlagNotes(v, allSettings); len(notes) != tc.notes {
			t.Errorf("EtcdFlagNotes(%v) = %q; want %d notes", v, notes, tc.notes)
		}
	}
}

func TestEtcdFlagsLeaveOutZeroSettings(t *testing.T) {
	for _, v := range []string{"3.5.15", "3.6.16", "3.7.3"} {
		if got := EtcdFlags(mustVersion(t, v), EtcdSettings{}); len(got) != 0 {
			t.Errorf("EtcdFlags(%s, zero settings) = %q; want none: etcd's defaults apply", v, got)
		}
		if notes := EtcdFlagNotes(mustVersion(t, v), EtcdSettings{}); len(notes) != 0 {
			t.Errorf("EtcdFlagNotes(%s, zero settings) = %q; want none", v, notes)
		}
	}
}

func TestEtcdFlagNotesNameTheRelease(t *testing.T) {
	notes := EtcdFlagNotes(mustVersion(t, "3.5.13"), allSettings)
	if len(notes) != 1 || !strings.Contains(notes[0], "3.5.13") || !strings.Contains(notes[0], "3.5.14") || !strings.Contains(notes[0], "500") {
		t.Errorf("notes for 3.5.13 = %q; want one naming the release, the release that added the setting and the value lost", notes)
	}
}

func TestSupportedEtcdVersion(t *testing.T) {
	for _, v := range []string{"3.4.34", "2.3.8", "4.0.0"} {
		err := SupportedEtcdVersion(mustVersion(t, v))
		if err == nil || !strings.Contains(err.Error(), v) || !strings.Contains(err.Error(), "3.5.0") {
			t.Errorf("SupportedEtcdVersion(%s) = %v; want an error naming it and the oldest supported", v, err)
		}
	}
}

func TestEtcdFlagsStatusVersion(t *testing.T) {
	v, err := StatusEtcdVersion("a0", wire.Status{EtcdVersion: "3.5.15"})
	if err != nil || v != (wire.EtcdVersion{Major: 3, Minor: 5, Patch: 15}) {
		t.Fatalf("StatusEtcdVersion(3.5.15) = %v, %v", v, err)
	}
	for _, tc := range []struct {
		st   wire.Status
		want []string
	}{
		{wire.Status{EtcdVersionError: "/bin/etcd --version: exit status 2"}, []string{"agent a0", "unknown", "exit status 2"}},
		{wire.Status{}, []string{"agent a0", "unknown", "does not report it"}},
		{wire.Status{EtcdVersion: "3.4.34"}, []string{"agent a0", "3.4.34", "not supported", "3.5.0"}},
		{wire.Status{EtcdVersion: "banana"}, []string{"agent a0", "banana", "MAJOR.MINOR.PATCH"}},
	} {
		_, err := StatusEtcdVersion("a0", tc.st)
		if err == nil {
			t.Errorf("StatusEtcdVersion(%+v): no error", tc.st)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("StatusEtcdVersion(%+v): error %q lacks %q", tc.st, err, w)
			}
		}
	}
}

// TestEtcdFlagsKnownByRealBinaries asks each built release whether it
// knows every flag EtcdFlags gives it: etcd parses its flags before it
// acts on --version, so a release prints its version only if every flag
// is defined. As a must-fail control, every release is also given the
// spelling of the other generation, which at least one refuses (v3.7 has
// none of v3.5's experimental flags; v3.5 has none of v3.6's names).
// Releases not built (make etcd ETCD_VERSION=…) are skipped.
func TestEtcdFlagsKnownByRealBinaries(t *testing.T) {
	for _, rel := range []string{"v3.5.15", "v3.6.8", "v3.6.16", "v3.7.3"} {
		t.Run(rel, func(t *testing.T) {
			bin, err := etcdtest.ReleaseBinary(rel)
			if err != nil {
				t.Skip(err)
			}
			v := mustVersion(t, rel)
			out, ok := runVersion(t, bin, EtcdFlags(v, allSettings))
			if !ok || !strings.Contains(out, "etcd Version: "+v.String()) {
				t.Fatalf("%s refuses the flags EtcdFlags gives it:\n%s", bin, out)
			}
			other := mustVersion(t, "3.5.15")
			if v.Minor == 5 {
				other = mustVersion(t, "3.7.3")
			}
			wrong := EtcdFlags(other, allSettings)
			out, ok = runVersion(t, bin, wrong)
			if v.Minor != 6 && ok {
				t.Errorf("%s accepts the flags of etcd %v (%q); the control should fail:\n%s", bin, other, wrong, out)
			}
		})
	}
}

// runVersion runs `bin flags... --version` and reports its output and
// whether it exited 0.
func runVersion(t *testing.T, bin string, flags []string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append(slices.Clone(flags), "--version")...).CombinedOutput()
	return string(out), err == nil
}
