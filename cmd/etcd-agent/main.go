// Command etcd-agent manages one etcd process on this machine on behalf of
// etcd-tester: it serves the RPCs of package wire (Go net/rpc over HTTP) to
// start, stop, kill, pause, isolate, slow down, archive and terminate etcd.
// On SIGTERM or SIGINT it heals every fault it injected and stops etcd. A
// fault whose lease the tester stops renewing (-fault-lease) is healed too.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/coreos/pkg/capnslog"

	"github.com/etcd-functional/functional/agent"
	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/logfmt"
	"github.com/etcd-functional/functional/internal/secret"
)

var plog = capnslog.NewPackageLogger("github.com/etcd-functional/functional", "etcd-agent")

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "etcd-agent:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("etcd-agent", flag.ExitOnError)
	var cfg agent.Config
	fs.StringVar(&cfg.EtcdPath, "etcd-path", "etcd", "the etcd binary; the only program the agent ever runs (looked up in PATH if it has no slash)")
	port := fs.String("port", ":"+strconv.Itoa(wire.DefaultPort), "address to serve RPCs on: \":9027\" or \"host:port\"")
	fs.StringVar(&cfg.BaseDir, "base-dir", "/tmp/etcd-agent", "directory for etcd's data dir, log (etcd.log), failure archives and the agent's record; every path etcd writes must lie inside it")
	fs.DurationVar(&cfg.SigtermWait, "sigterm-wait", agent.DefaultSigtermWait, "how long a stop waits after SIGTERM before sending SIGINT")
	fs.DurationVar(&cfg.SigintWait, "sigint-wait", agent.DefaultSigintWait, "how long a stop waits after SIGINT before sending SIGKILL")
	fs.StringVar(&cfg.NetworkFaults, "network-faults", agent.FaultsAuto, "how to isolate the member: iptables (needs root or CAP_NET_ADMIN), proxy (the agent's peer proxy, no privileges; isolation cuts only traffic into the advertised peer port) or auto (iptables where it works)")
	fs.StringVar(&cfg.IPTablesChain, "iptables-chain", "", "the agent's own iptables chain (default ETCD-AGENT-<port>)")
	tokenFile := fs.String("auth-token-file", "", "file holding a bearer token every caller must present; empty: no authentication (only on a network you trust)")
	certFile := fs.String("cert-file", "", "TLS certificate to serve RPCs with (with -key-file)")
	keyFile := fs.String("key-file", "", "TLS key of -cert-file")
	caFile := fs.String("trusted-ca-file", "", "CA that must have signed every caller's client certificate (requires TLS)")
	fs.Int64Var(&cfg.MaxRequestBytes, "max-request-bytes", agent.DefaultMaxRequestBytes, "largest RPC request accepted, in bytes")
	fs.DurationVar(&cfg.FaultLease, "fault-lease", agent.DefaultFaultLease, fmt.Sprintf("how long an injected fault lasts unless the tester renews its lease; then the agent heals it on its own, so that no fault outlives a tester that died (%v..%v)", wire.MinFaultLease, wire.MaxFaultLease))
	logLevel := fs.String("log-level", "INFO", "log level: CRITICAL, ERROR, WARNING, NOTICE, INFO, DEBUG or TRACE")
	fs.Parse(os.Args[1:])
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: every setting is a flag, see -h", fs.Args())
	}
	if err := logfmt.Setup(*logLevel); err != nil {
		return err
	}

	addr := normalizePort(*port)
	_, portNum, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-port %q: want \":9027\" or \"host:port\": %w", *port, err)
	}
	if cfg.IPTablesChain == "" {
		cfg.IPTablesChain = "ETCD-AGENT-" + portNum
	}
	if cfg.Token, err = secret.ReadToken(*tokenFile); err != nil {
		return err
	}
	tlsConfig, err := secret.ServerTLS(*certFile, *keyFile, *caFile)
	if err != nil {
		return err
	}
	// Recover first, listen after: a caller that can connect finds the
	// leftovers of a crashed predecessor already cleared.
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		// Not Close: an etcd adopted from the record keeps running for
		// the next agent to take over.
		return fmt.Errorf("-port %s: %w", *port, err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
	}
	plog.Infof("serving RPCs on %s://%s (auth token: %v)", scheme, ln.Addr(), cfg.Token != "")
	serveErr := a.Serve(ctx, ln, tlsConfig)
	plog.Infof("shutting down: healing faults and stopping etcd")
	if err := a.Close(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if ctx.Err() == nil {
		return serveErr
	}
	return nil
}

// normalizePort accepts "9027" as well as ":9027" and "host:port".
func normalizePort(p string) string {
	if _, err := strconv.Atoi(p); err == nil {
		return ":" + p
	}
	return p
}
