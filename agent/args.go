package agent

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Limits on what a caller may pass as etcd's argv.
const (
	maxArgs      = 256
	maxArgLength = 4096
)

// pathFlags are etcd flags whose value is a path the agent writes to. They
// must lie inside the base dir, so that a caller cannot make the agent's
// etcd write, archive or remove anything else on the host.
var pathFlags = []string{"data-dir", "wal-dir"}

// refusedFlags are etcd flags a caller may not pass: with --config-file
// etcd reads its whole configuration from that file and ignores every
// flag, the --data-dir the agent sets included.
var refusedFlags = []string{"config-file"}

// logOutputs are the --log-outputs targets that are not files; any other
// target is a file etcd appends to, which must lie inside the base dir.
var logOutputs = []string{"default", "stderr", "stdout", "systemd/journal"}

// etcdArgs is etcd's argv (without argv[0]) with the values the agent
// cares about looked up.
type etcdArgs []string

// lookup returns the value of --name or -name (as "--name v" or
// "--name=v"), and whether it is present.
func (a etcdArgs) lookup(name string) (string, bool) {
	if vs := a.lookupAll(name); len(vs) > 0 {
		return vs[0], true
	}
	return "", false
}

// lookupAll returns the value of every occurrence of --name or -name.
func (a etcdArgs) lookupAll(name string) []string {
	var vs []string
	for i, arg := range a {
		flag := strings.TrimLeft(arg, "-")
		if len(arg)-len(flag) < 1 || len(arg)-len(flag) > 2 {
			continue
		}
		if flag == name {
			v := ""
			if i+1 < len(a) {
				v = a[i+1]
			}
			vs = append(vs, v)
		} else if v, ok := strings.CutPrefix(flag, name+"="); ok {
			vs = append(vs, v)
		}
	}
	return vs
}

// validateArgs checks etcd's argv against the agent's limits and resolves
// the paths it writes: the returned args always carry an absolute
// --data-dir inside baseDir (defaultDataDir if the caller gave none).
func validateArgs(baseDir string, args []string) (etcdArgs, error) {
	if len(args) > maxArgs {
		return nil, fmt.Errorf("%d arguments: at most %d allowed", len(args), maxArgs)
	}
	for i, arg := range args {
		if len(arg) > maxArgLength {
			return nil, fmt.Errorf("argument %d is %d bytes: at most %d allowed", i, len(arg), maxArgLength)
		}
		if strings.ContainsRune(arg, 0) {
			return nil, fmt.Errorf("argument %d contains a NUL byte", i)
		}
	}
	out := etcdArgs(append([]string(nil), args...))
	for _, name := range refusedFlags {
		if _, ok := out.lookup(name); ok {
			return nil, fmt.Errorf("--%s is not allowed: etcd would ignore every other flag, the agent's --data-dir included", name)
		}
	}
	for _, v := range out.lookupAll("log-outputs") {
		for _, target := range strings.Split(v, ",") {
			if slices.Contains(logOutputs, target) {
				continue
			}
			if _, err := insideBase(baseDir, target); err != nil {
				return nil, fmt.Errorf("--log-outputs: %w", err)
			}
		}
	}
	for _, name := range pathFlags {
		v, ok := out.lookup(name)
		if !ok {
			continue
		}
		p, err := insideBase(baseDir, v)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", name, err)
		}
		out = out.without(name).with(name, p)
	}
	if _, ok := out.lookup("data-dir"); !ok {
		out = out.with("data-dir", filepath.Join(baseDir, defaultDataDir))
	}
	return out, nil
}

// insideBase resolves p (relative paths against base) and refuses any path
// that is not strictly inside base.
func insideBase(base, p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("empty path: want a directory inside the base dir %s", base)
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(base, p)
	}
	p = filepath.Clean(p)
	rel, err := filepath.Rel(base, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("path %q: want a directory inside the base dir %s", p, base)
	}
	return p, nil
}

func (a etcdArgs) without(name string) etcdArgs {
	var out etcdArgs
	for i := 0; i < len(a); i++ {
		flag := strings.TrimLeft(a[i], "-")
		dashes := len(a[i]) - len(flag)
		if dashes >= 1 && dashes <= 2 {
			if flag == name {
				i++ // skip the value too
				continue
			}
			if strings.HasPrefix(flag, name+"=") {
				continue
			}
		}
		out = append(out, a[i])
	}
	return out
}

// with puts --name=value first: at the end it could become the value of
// a trailing flag that lacks one ("--initial-cluster-token"), and etcd
// would fall back to its default for name.
func (a etcdArgs) with(name, value string) etcdArgs {
	return append(etcdArgs{"--" + name + "=" + value}, a...)
}

// dataDir is the resolved --data-dir (validateArgs always sets it).
func (a etcdArgs) dataDir() string { v, _ := a.lookup("data-dir"); return v }

// walDir is the resolved --wal-dir, empty if the WAL lives in the data dir.
func (a etcdArgs) walDir() string { v, _ := a.lookup("wal-dir"); return v }

// peerProxyAddrs reports whether the member listens for peers on another
// port than it advertises; if so the agent proxies the advertised port to
// the listen port. It returns the proxy's listen address (":port") and its
// target ("host:port").
func (a etcdArgs) peerProxyAddrs() (listen, target string, ok bool, err error) {
	lv, lok := a.lookup("listen-peer-urls")
	av, aok := a.lookup("initial-advertise-peer-urls")
	if !lok || !aok {
		return "", "", false, nil
	}
	lhost, lport, err := firstURLHostPort(lv)
	if err != nil {
		return "", "", false, fmt.Errorf("--listen-peer-urls: %w", err)
	}
	_, aport, err := firstURLHostPort(av)
	if err != nil {
		return "", "", false, fmt.Errorf("--initial-advertise-peer-urls: %w", err)
	}
	if lport == aport {
		return "", "", false, nil
	}
	if ip := net.ParseIP(lhost); lhost == "" || (ip != nil && ip.IsUnspecified()) {
		lhost = "127.0.0.1"
	}
	return ":" + strconv.Itoa(aport), net.JoinHostPort(lhost, strconv.Itoa(lport)), true, nil
}

func firstURLHostPort(urls string) (string, int, error) {
	first, _, _ := strings.Cut(urls, ",")
	u, err := url.Parse(first)
	if err != nil {
		return "", 0, fmt.Errorf("%q: %w", first, err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("%q: want a URL with a port in 1..65535", first)
	}
	return u.Hostname(), port, nil
}
