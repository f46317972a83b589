package wire

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"strconv"
	"strings"
)

// EtcdVersion is an etcd release number such as 3.5.15. The agent reports
// its binary's in Status.EtcdVersion, and the tester picks the flags that
// release knows from it, so both sides parse it here.
type EtcdVersion struct {
	Major, Minor, Patch int
}

// String returns the version as etcd prints it: "3.5.15", no "v".
func (v EtcdVersion) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// Compare returns -1, 0 or +1 as v is older than, the same as, or newer
// than w.
func (v EtcdVersion) Compare(w EtcdVersion) int {
	if c := cmp.Compare(v.Major, w.Major); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Minor, w.Minor); c != 0 {
		return c
	}
	return cmp.Compare(v.Patch, w.Patch)
}

// AtLeast reports whether v is w or newer.
func (v EtcdVersion) AtLeast(major, minor, patch int) bool {
	return v.Compare(EtcdVersion{major, minor, patch}) >= 0
}

// ParseEtcdVersion parses "3.5.15" or "v3.5.15". A pre-release suffix
// ("3.6.0-rc.1") is dropped: a release candidate knows its release's flags.
func ParseEtcdVersion(s string) (EtcdVersion, error) {
	t := strings.TrimPrefix(strings.TrimSpace(s), "v")
	t, _, _ = strings.Cut(t, "-")
	parts := strings.Split(t, ".")
	if len(parts) != 3 {
		return EtcdVersion{}, fmt.Errorf("etcd version %q: want MAJOR.MINOR.PATCH such as 3.6.16", s)
	}
	var n [3]int
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 || p != strconv.Itoa(v) {
			return EtcdVersion{}, fmt.Errorf("etcd version %q: %q is not a number; want MAJOR.MINOR.PATCH such as 3.6.16", s, p)
		}
		n[i] = v
	}
	return EtcdVersion{n[0], n[1], n[2]}, nil
}

// ParseEtcdVersionOutput finds the release in what `etcd --version`
// prints: a line "etcd Version: 3.5.15" among others (Git SHA, Go Version).
func ParseEtcdVersionOutput(out []byte) (EtcdVersion, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "etcd Version:"); ok {
			return ParseEtcdVersion(rest)
		}
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if len(first) > 80 {
		first = first[:80] + "…"
	}
	return EtcdVersion{}, fmt.Errorf("no \"etcd Version:\" line in the output of --version (first line: %q)", first)
}
