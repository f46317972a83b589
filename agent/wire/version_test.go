package wire

import (
	"strings"
	"testing"
)

func TestParseEtcdVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want EtcdVersion
	}{
		{"3.5.15", EtcdVersion{3, 5, 15}},
		{"v3.6.16", EtcdVersion{3, 6, 16}},
		{" 3.7.3\n", EtcdVersion{3, 7, 3}},
		{"3.6.0-rc.1", EtcdVersion{3, 6, 0}},
	} {
		got, err := ParseEtcdVersion(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseEtcdVersion(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "3.5", "3.5.x", "3.5.15.1", "v", "3.-1.2", "3.05.1", "three"} {
		if v, err := ParseEtcdVersion(in); err == nil {
			t.Errorf("ParseEtcdVersion(%q) = %v, nil; want an error", in, v)
		} else if !strings.Contains(err.Error(), "MAJOR.MINOR.PATCH") {
			t.Errorf("ParseEtcdVersion(%q): error %q does not say what is allowed", in, err)
		}
	}
}

func TestParseEtcdVersionOutput(t *testing.T) {
	out := "etcd Version: 3.5.15\nGit SHA: GitNotFound\nGo Version: go1.26.8\nGo OS/Arch: linux/amd64\n"
	v, err := ParseEtcdVersionOutput([]byte(out))
	if err != nil || v != (EtcdVersion{3, 5, 15}) {
		t.Fatalf("got %v, %v; want 3.5.15", v, err)
	}
	if v, err := ParseEtcdVersionOutput([]byte("flag provided but not defined: -version\nUsage of x:\n")); err == nil {
		t.Fatalf("got %v from a non-etcd output; want an error", v)
	} else if !strings.Contains(err.Error(), "flag provided but not defined") {
		t.Errorf("error %q does not quote what the binary printed", err)
	}
}

func TestEtcdVersionCompare(t *testing.T) {
	v := EtcdVersion{3, 5, 14}
	for _, tc := range []struct {
		major, minor, patch int
		want                bool
	}{
		{3, 5, 13, true}, {3, 5, 14, true}, {3, 5, 15, false}, {3, 4, 99, true}, {3, 6, 0, false}, {4, 0, 0, false},
	} {
		if got := v.AtLeast(tc.major, tc.minor, tc.patch); got != tc.want {
			t.Errorf("%v.AtLeast(%d.%d.%d) = %v; want %v", v, tc.major, tc.minor, tc.patch, got, tc.want)
		}
	}
	if v.String() != "3.5.14" {
		t.Errorf("String() = %q", v.String())
	}
}
