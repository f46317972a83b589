package tester

import (
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/etcd-functional/functional/stresser"
)

// RunConfig is the effective configuration of a run as results.json
// records it: which checks were on, what load ran, how long faults were
// held and how long recovery could take, and which cases were asked for.
// A reader of a PASS can see from it what that PASS covers.
type RunConfig struct {
	ConsistencyCheck              bool     `json:"consistency_check"`
	WatchCheck                    bool     `json:"watch_check"`
	LinearizabilityTimeoutSeconds float64  `json:"linearizability_timeout_seconds"`
	AllowUnknown                  bool     `json:"allow_unknown"`
	EtcdCorruptCheck              bool     `json:"etcd_corrupt_check"`
	Stressers                     []string `json:"stressers"`
	StressQPS                     int      `json:"stress_qps"`
	PastReads                     bool     `json:"past_reads"`
	// The history stresser's clients and rate, and every stress
	// request's timeout; absent in reports from before they were flags.
	HistoryClients              int     `json:"history_clients,omitempty"`
	HistoryQPS                  int     `json:"history_qps,omitempty"`
	StressRequestTimeoutSeconds float64 `json:"stress_request_timeout_seconds,omitempty"`
	CaseDelaySeconds            float64 `json:"case_delay_seconds"`
	RecoveryTimeoutSeconds      float64 `json:"recovery_timeout_seconds"`
	Seed                        int64   `json:"seed"`
	Limit                       int     `json:"limit"`
	// Cases are the cases asked for with -cases; empty asks for every
	// case the environment supports.
	Cases           []string `json:"cases"`
	ScheduleCases   []int    `json:"schedule_cases,omitempty"`
	RequireAllCases bool     `json:"require_all_cases"`
	ExitOnFailure   bool     `json:"exit_on_failure"`
	DefragInterval  int      `json:"defrag_interval"`
	PeerProxy       bool     `json:"peer_proxy"`
	// The stresser nop alone is no load at all.
	Load bool `json:"load"`
	// Replay is the results.json this run replayed, if any.
	Replay string `json:"replay,omitempty"`
}

func runConfig(c Config) *RunConfig {
	return &RunConfig{
		ConsistencyCheck:              c.ConsistencyCheck,
		WatchCheck:                    c.WatchCheck,
		LinearizabilityTimeoutSeconds: c.LinearizabilityTimeout.Seconds(),
		AllowUnknown:                  c.AllowUnknown,
		EtcdCorruptCheck:              c.EtcdCorruptCheck,
		Stressers:                     slices.Clone(c.Stresser.Names),
		StressQPS:                     c.Stresser.QPS,
		PastReads:                     !c.Stresser.SkipPastReads,
		HistoryClients:                c.Stresser.History.Clients,
		HistoryQPS:                    c.Stresser.History.QPS,
		StressRequestTimeoutSeconds:   c.Stresser.RequestTimeout.Seconds(),
		CaseDelaySeconds:              c.CaseDelay.Seconds(),
		RecoveryTimeoutSeconds:        c.RecoveryTimeout.Seconds(),
		Seed:                          c.Seed,
		Limit:                         c.Limit,
		Cases:                         append([]string{}, c.Cases...),
		ScheduleCases:                 slices.Clone(c.ScheduleCases),
		RequireAllCases:               c.RequireAllCases,
		ExitOnFailure:                 c.ExitOnFailure,
		DefragInterval:                c.DefragInterval,
		PeerProxy:                     c.PeerProxy,
		Replay:                        c.Replay,
		Load:                          slices.ContainsFunc(c.Stresser.Names, func(n string) bool { return n != stresser.NameNop }),
	}
}

// buildVersion is what the Makefile stamps into the tester (-ldflags -X,
// from `git describe --always --dirty`): the go command records no VCS
// information where GOFLAGS holds -buildvcs=false, as on this project's
// machines.
var buildVersion string

// TesterVersion is the build of this tester: the version the build
// stamped, else its main module's version when built from a tagged
// module, else the VCS revision the build recorded ("+dirty" for
// uncommitted changes), else "unknown" (a test binary, or a build without
// VCS information).
func TesterVersion() string {
	if buildVersion != "" {
		return buildVersion
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "unknown"
	}
	if modified == "true" {
		rev += "+dirty"
	}
	return rev
}

// summary says on one line what a PASS of this run covers.
func (c *RunConfig) summary() string {
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "OFF"
	}
	unknown := "fail"
	if c.AllowUnknown {
		unknown = "ALLOWED"
	}
	secs := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	load := "NO LOAD"
	if c.Load {
		load = fmt.Sprintf("load %s at %d req/s, past reads %s", strings.Join(c.Stressers, ","), c.StressQPS, onOff(c.PastReads))
		if slices.Contains(c.Stressers, stresser.NameHistory) && c.HistoryClients > 0 {
			load += fmt.Sprintf(", history %d clients at %d req/s", c.HistoryClients, c.HistoryQPS)
		}
		if c.StressRequestTimeoutSeconds > 0 {
			load += fmt.Sprintf(", request timeout %v", secs(c.StressRequestTimeoutSeconds))
		}
	}
	return fmt.Sprintf("consistency %s, watch %s, linearizability timeout %v, unknown verdicts %s, etcd corrupt check %s; %s; case delay %v, recovery timeout %v, seed %d",
		onOff(c.ConsistencyCheck), onOff(c.WatchCheck), secs(c.LinearizabilityTimeoutSeconds), unknown, onOff(c.EtcdCorruptCheck),
		load, secs(c.CaseDelaySeconds), secs(c.RecoveryTimeoutSeconds), c.Seed)
}
