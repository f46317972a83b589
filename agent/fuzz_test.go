package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/gob"
	"errors"
	"io"
	"net"
	"net/http"
	"net/rpc"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
)

// fuzzBase is the base dir FuzzValidateArgs checks paths against; nothing
// is created there.
const fuzzBase = "/srv/etcd-agent"

// FuzzValidateArgs feeds arbitrary argv (one argument per line) to the
// check every Start goes through. Whatever it accepts must keep etcd's data
// in the base dir: exactly one --data-dir, absolute and strictly inside the
// base dir, at most one --wal-dir likewise, both where no other flag can
// take them as its value; no --config-file; log files inside the base dir.
// Checking the result again must accept it with the same arguments
// (Restart reuses it).
func FuzzValidateArgs(f *testing.F) {
	for _, seed := range []string{
		"--name\netcd-0\n--data-dir\netcd.data",
		"--data-dir\n../x",
		"--data-dir=/etc",
		"--wal-dir\n/tmp/elsewhere",
		"-data-dir=sub/../../x",
		"--data-dir=" + fuzzBase + "x/y",
		"--data-dir=a\n--data-dir=/etc",
		"--wal-dir\n--data-dir=x",
		"--name\n--data-dir\nx",
		"--initial-cluster-token",
		"--log-outputs=stderr,/tmp/x.log",
		"--log-outputs=default\n--log-outputs=etcd.log",
		"--config-file=/x.yaml",
		"---data-dir=/etc",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, joined string) {
		in := strings.Split(joined, "\n")
		out, err := validateArgs(fuzzBase, in)
		if err != nil {
			return
		}
		checkAccepted(t, in, out)
		again, err := validateArgs(fuzzBase, out)
		if err != nil {
			t.Fatalf("validateArgs(%q) = %q, which validateArgs refuses: %v", in, out, err)
		}
		// The agent's own flags may swap places; nothing else may change.
		if !slices.Equal(slices.Sorted(slices.Values(again)), slices.Sorted(slices.Values(out))) {
			t.Fatalf("validateArgs not idempotent: %q → %q → %q", in, out, again)
		}
	})
}

func checkAccepted(t *testing.T, in []string, out etcdArgs) {
	t.Helper()
	dataDirs, walDirs := 0, 0
	for i, arg := range out {
		name, value, hasValue, isFlag := parseFlag(arg)
		if !isFlag {
			continue
		}
		switch name {
		case "data-dir", "wal-dir":
			if name == "data-dir" {
				dataDirs++
			} else {
				walDirs++
			}
			if !hasValue {
				t.Fatalf("validateArgs(%q) = %q: %s without =value", in, out, arg)
			}
			if !filepath.IsAbs(value) || filepath.Clean(value) != value {
				t.Fatalf("validateArgs(%q) = %q: --%s %q is not a clean absolute path", in, out, name, value)
			}
			if !strictlyInside(value) {
				t.Fatalf("validateArgs(%q) = %q: --%s %q is not inside %s", in, out, name, value, fuzzBase)
			}
			// Go's flag package gives a flag without =value the next
			// argument, so only flags with =value may come before.
			for _, before := range out[:i] {
				if _, _, hasValue, isFlag := parseFlag(before); !isFlag || !hasValue {
					t.Fatalf("validateArgs(%q) = %q: %q before %s could take it as its value", in, out, before, arg)
				}
			}
		case "config-file":
			t.Fatalf("validateArgs(%q) = %q: --config-file accepted", in, out)
		case "log-outputs":
			v := value
			if !hasValue && i+1 < len(out) {
				v = out[i+1]
			}
			for _, target := range strings.Split(v, ",") {
				if slices.Contains(logOutputs, target) {
					continue
				}
				if !filepath.IsAbs(target) {
					target = filepath.Join(fuzzBase, target)
				}
				if !strictlyInside(target) {
					t.Fatalf("validateArgs(%q) = %q: log output %q outside %s", in, out, target, fuzzBase)
				}
			}
		}
	}
	if dataDirs != 1 || walDirs > 1 {
		t.Fatalf("validateArgs(%q) = %q: %d --data-dir and %d --wal-dir, want exactly one and at most one", in, out, dataDirs, walDirs)
	}
}

// parseFlag splits arg the way Go's flag package (and so etcd) does: "-x",
// "--x", "-x=v" and "--x=v" are flags; "-", "--", "---x" and "-=x" are not
// (the last two are errors to etcd).
func parseFlag(arg string) (name, value string, hasValue, isFlag bool) {
	if len(arg) < 2 || arg[0] != '-' {
		return "", "", false, false
	}
	s := arg[1:]
	if s[0] == '-' {
		s = s[1:]
	}
	if s == "" || s[0] == '-' || s[0] == '=' {
		return "", "", false, false
	}
	name, value, hasValue = strings.Cut(s, "=")
	return name, value, hasValue, true
}

func strictlyInside(p string) bool {
	rel, err := filepath.Rel(fuzzBase, filepath.Clean(p))
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

// FuzzServerCodec feeds arbitrary bytes to the agent's RPC handler after a
// successful CONNECT, over loopback, and hangs up. The agent must never
// panic, must close the connection within seconds (no hang), and must
// serve a Status on a fresh connection afterwards. Its "etcd" is the test
// binary, which exits at once when not run as the signal helper, so a
// Start the fuzzer happens to spell out does no harm.
func FuzzServerCodec(f *testing.F) {
	for _, seed := range codecSeeds(f) {
		f.Add(seed)
	}
	exe, err := os.Executable()
	if err != nil {
		f.Fatal(err)
	}
	a, err := New(Config{EtcdPath: exe, BaseDir: f.TempDir(), NetworkFaults: FaultsProxy, MaxRequestBytes: 64 << 10})
	if err != nil {
		f.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { a.Serve(ctx, ln, nil); close(served) }()
	f.Cleanup(func() {
		cancel()
		<-served
		a.Close()
	})
	addr := ln.Addr().String()

	f.Fuzz(func(t *testing.T, data []byte) {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// Well under the 10 s after which the fuzzing engine declares a
		// worker hung, so that a hang is reported with the agent's stacks.
		conn.SetDeadline(time.Now().Add(4 * time.Second))
		if _, err := io.WriteString(conn, "CONNECT "+rpc.DefaultRPCPath+" HTTP/1.0\n\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		drained := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, br)
			drained <- err
		}()
		conn.Write(data) // the agent may have hung up already
		conn.(*net.TCPConn).CloseWrite()
		select {
		case err := <-drained:
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the agent kept the connection open 4 s after %d bytes and a hang-up; status %+v\n%s", len(data), a.Status(), stacks())
			}
		case <-time.After(6 * time.Second):
			t.Fatalf("reading the agent's answer hung past the deadline\n%s", stacks())
		}

		rc, err := rpc.DialHTTP("tcp", addr)
		if err != nil {
			t.Fatalf("new connection after the fuzzed one: %v", err)
		}
		defer rc.Close()
		call := rc.Go(wire.MethodStatus, struct{}{}, new(wire.Status), nil)
		select {
		case <-call.Done:
			if call.Error != nil {
				t.Fatalf("Status after the fuzzed connection: %v", call.Error)
			}
		case <-time.After(4 * time.Second):
			t.Fatalf("Status after the fuzzed connection: no answer in 4 s\n%s", stacks())
		}
	})
}

func stacks() string {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	return b.String()
}

// codecSeeds are requests as net/rpc's client encodes them, whole,
// truncated, oversized and mixed with garbage.
func codecSeeds(f testing.TB) [][]byte {
	encode := func(calls ...any) []byte {
		var b bytes.Buffer
		enc := gob.NewEncoder(&b)
		for i := 0; i < len(calls); i += 2 {
			if err := enc.Encode(&rpc.Request{ServiceMethod: calls[i].(string), Seq: uint64(i)}); err != nil {
				f.Fatal(err)
			}
			if err := enc.Encode(calls[i+1]); err != nil {
				f.Fatal(err)
			}
		}
		return b.Bytes()
	}
	status := encode(wire.MethodStatus, struct{}{})
	return [][]byte{
		nil,
		status,
		status[:len(status)/2],
		append(slices.Clone(status), 0xff, 0x00, 0x13),
		encode(wire.MethodStatus, struct{}{}, "Agent.RPCFoo", struct{}{}, wire.MethodStatus, struct{}{}),
		encode(wire.MethodSetLatency, []int{1, 2, 3}, wire.MethodDropPort, 0),
		encode(wire.MethodDropPort, "2380"),
		encode(wire.MethodStart, []string{strings.Repeat("a", 100<<10)}),
		encode(wire.MethodStart, []string{"--data-dir=/etc"}, wire.MethodStop, struct{}{}),
		encode(wire.MethodStart, []string{"--name", "fuzz"}, wire.MethodStatus, struct{}{}),
		{0xfc, 0x40, 0x00, 0x00, 0x00}, // a length prefix of 1 GiB
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	}
}
