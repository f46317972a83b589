// Command etcd-localrun runs the whole suite on this machine: it brings up
// three hosts (network namespaces as root, else loopback ports), an
// etcd-agent on each, runs etcd-tester against them and tears it all down.
// It is what `make run` runs. Arguments after the flags go to etcd-tester:
//
//	etcd-localrun -report-dir report -- -cases SIGKILL_LEADER -limit 3
//
// Its exit status is the tester's.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/etcd-functional/functional/internal/localrun"
	"github.com/etcd-functional/functional/internal/logfmt"
)

func main() {
	var cfg localrun.Config
	flag.StringVar(&cfg.BinDir, "bin-dir", "bin", "directory holding etcd, etcd-agent and etcd-tester")
	flag.StringVar(&cfg.EtcdPath, "etcd", "", "the etcd binary the agents run (default: etcd in -bin-dir)")
	flag.StringVar(&cfg.ReportDir, "report-dir", "report", "where the report, the agents' logs and the failure archives go (emptied first)")
	flag.StringVar(&cfg.Mode, "mode", localrun.ModeAuto, "auto (netns where possible), netns (a network namespace per host; root) or loopback")
	flag.StringVar(&cfg.NetName, "net-name", "etcdrun", "name of the namespaces, bridge and rules the run creates (1-10 of a-z0-9)")
	flag.IntVar(&cfg.Hosts, "hosts", 3, "number of hosts, agents and members")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [flags] [-- tester flags]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	cfg.TesterArgs = flag.Args()
	if err := logfmt.Setup("INFO"); err != nil {
		fmt.Fprintln(os.Stderr, "etcd-localrun:", err)
		os.Exit(2)
	}

	// The first signal cancels ctx (the tester is asked to heal and report);
	// later ones are passed on to stop it at once.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	ctx, cancel := context.WithCancel(context.Background())
	later := make(chan os.Signal, 4)
	go func() {
		<-sigs
		cancel()
		for s := range sigs {
			later <- s
		}
	}()

	status, err := localrun.Run(ctx, cfg, later)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd-localrun:", err)
		if status == 0 {
			status = 1
		}
	}
	os.Exit(status)
}
