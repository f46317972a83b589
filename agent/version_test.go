package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/client"
	"github.com/etcd-functional/functional/agent/wire"
)

// TestStatusReportsEtcdVersion checks that the agent learns its binary's
// release once at start and reports it over the wire, so that the tester
// can pick the flags that release knows.
func TestStatusReportsEtcdVersion(t *testing.T) {
	t.Parallel()
	bin := etcdBinary(t)
	s := serve(t, agent.Config{EtcdPath: bin})
	st, err := s.client(t, client.Config{}).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.EtcdVersionError != "" {
		t.Fatalf("EtcdVersionError = %q for the real etcd %s", st.EtcdVersionError, bin)
	}
	v, err := wire.ParseEtcdVersion(st.EtcdVersion)
	if err != nil {
		t.Fatalf("Status.EtcdVersion %q: %v", st.EtcdVersion, err)
	}
	if !v.AtLeast(3, 5, 0) {
		t.Errorf("Status.EtcdVersion = %v; every supported etcd is 3.5.0 or newer", v)
	}
}

// TestStatusExplainsUnknownEtcdVersion checks that a binary whose version
// cannot be learned still gives a working agent, and that Status says why
// the version is unknown instead of guessing one.
func TestStatusExplainsUnknownEtcdVersion(t *testing.T) {
	t.Parallel()
	fake := filepath.Join(t.TempDir(), "not-etcd")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'some other tool 1.0'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := serve(t, agent.Config{EtcdPath: fake})
	st, err := s.client(t, client.Config{}).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.EtcdVersion != "" {
		t.Errorf("Status.EtcdVersion = %q for a binary that prints no version", st.EtcdVersion)
	}
	if !strings.Contains(st.EtcdVersionError, "etcd Version:") || !strings.Contains(st.EtcdVersionError, "some other tool") {
		t.Errorf("EtcdVersionError = %q; want it to name the missing line and quote the output", st.EtcdVersionError)
	}
}
