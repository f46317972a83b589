package linearizability_test

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/etcd-functional/functional/checker/linearizability"
	"github.com/etcd-functional/functional/stresser"
)

// A tester checks each case's history once the fault has healed and the
// load is paused; a failed check leaves the visualization and the history
// beside the case's report.
func Example() {
	cfg := stresser.DefaultConfig()
	cfg.Endpoints = []string{"http://127.0.0.1:2379", "http://127.0.0.1:22379", "http://127.0.0.1:32379"}
	cfg.Names = append(cfg.Names, stresser.NameHistory)
	s, err := stresser.New(cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	if err := s.Stress(context.Background()); err != nil { // or Resume, at the start of a case
		fmt.Println(err)
		return
	}
	// ... inject the fault, recover, wait until healthy ...
	s.Pause()
	h, err := s.History() // this case's window
	if err != nil {
		fmt.Println(err)
		return
	}
	res := linearizability.Check(h, time.Minute)
	if res.Verdict != linearizability.Pass { // Unknown (a timeout) fails the case too
		html, js, err := res.Save(filepath.Join("report", "case-3"), "linearizability")
		fmt.Println(res.Verdict, res.Error, html, js, err)
	}
	s.Resume()
}
