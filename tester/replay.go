package tester

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Replay: results.json records each case as it ran — the members it hit,
// the fault as drawn, how long it was held, the seed of the load — and
// -replay plays those cases again in the same rounds and order, on the
// same members. The seed, hold and load settings (taken from the file)
// redraw the same delays and the same load; the members hit are taken from the record, not from
// who holds which role now, so a case whose member no longer holds its
// role (a LEADER case whose member is now a follower) still hits that
// member, and says so in its replay_note.

// replayCase is one case of a recorded round.
type replayCase struct {
	name    string
	index   int
	members []int
}

// replayRound is a recorded round.
type replayRound struct {
	round int
	cases []replayCase
}

// readReplay reads the cases of a results.json to replay, for agents
// agents. It returns the recorded report too (its seed, its config).
func readReplay(path string, agents int) ([]replayRound, *Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("-replay: %w", err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, nil, fmt.Errorf("-replay: %s is not a results.json: %w", path, err)
	}
	if r.RoundsDropped > 0 {
		return nil, nil, fmt.Errorf("-replay: %s keeps only its last %d rounds in full (%d were dropped to cases.jsonl); a replay must start from the first round", path, len(r.Rounds), r.RoundsDropped)
	}
	var plan []replayRound
	var errs []error
	for _, rd := range r.Rounds {
		pr := replayRound{round: rd.Round}
		for _, c := range rd.Cases {
			rc := replayCase{name: c.Case, index: c.Index}
			for _, name := range c.Targets {
				i, err := memberIndex(name, agents)
				if err != nil {
					errs = append(errs, fmt.Errorf("-replay: round %d case %d %s: %w", rd.Round, c.Index, c.Case, err))
					continue
				}
				rc.members = append(rc.members, i)
			}
			pr.cases = append(pr.cases, rc)
		}
		if len(pr.cases) > 0 {
			plan = append(plan, pr)
		}
	}
	if len(plan) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("-replay: %s records no case", path))
	}
	return plan, &r, errors.Join(errs...)
}

// applyRecorded takes from a recorded run what its schedule depended on:
// the seed, the cases, the hold and the load (a load seed means the same
// load only with the same stressers and rate).
func (c *Config) applyRecorded(plan []replayRound, r *Report) {
	c.Seed, c.Cases, c.ScheduleCases, c.Limit = r.Seed, replayNames(plan), nil, max(len(plan), 1)
	if rc := r.Config; rc != nil {
		c.CaseDelay = time.Duration(rc.CaseDelaySeconds * float64(time.Second))
		c.Stresser.Names = slices.Clone(rc.Stressers)
		c.Stresser.QPS = rc.StressQPS
		c.Stresser.SkipPastReads = !rc.PastReads
		if rc.HistoryClients > 0 {
			c.Stresser.History.Clients, c.Stresser.History.QPS = rc.HistoryClients, rc.HistoryQPS
		}
		if rc.StressRequestTimeoutSeconds > 0 {
			c.Stresser.RequestTimeout = time.Duration(rc.StressRequestTimeoutSeconds * float64(time.Second))
		}
	}
}

// memberIndex is the agent index of the member named name ("etcd-2").
func memberIndex(name string, agents int) (int, error) {
	n, ok := strings.CutPrefix(name, "etcd-")
	i, err := strconv.Atoi(n)
	if !ok || err != nil || i < 0 || i >= agents {
		return 0, fmt.Errorf("target %q is not one of the %d members of this run", name, agents)
	}
	return i, nil
}

// replayNames are the cases a plan replays, in order of first appearance.
func replayNames(plan []replayRound) []string {
	var names []string
	for _, pr := range plan {
		for _, c := range pr.cases {
			if !slices.Contains(names, c.name) {
				names = append(names, c.name)
			}
		}
	}
	return names
}

// pinned holds the members the next injection must hit, and what the
// replay found worth saying about them.
type pinned struct {
	mu      sync.Mutex
	members []int
	set     bool
	notes   []string
}

// pinTargets makes the next case's injection hit members (a replay).
func (c *Cluster) pinTargets(members []int) {
	c.pin.mu.Lock()
	defer c.pin.mu.Unlock()
	c.pin.members, c.pin.set, c.pin.notes = slices.Clone(members), true, nil
}

// takePin returns the pinned members, once.
func (c *Cluster) takePin() ([]int, bool) {
	c.pin.mu.Lock()
	defer c.pin.mu.Unlock()
	m, ok := c.pin.members, c.pin.set
	c.pin.members, c.pin.set = nil, false
	return m, ok
}

// replayNotes returns what the replay of the case noted, and whether
// its pin was left untaken (a case that picks its own targets).
func (c *Cluster) replayNotes() (notes []string, untaken bool) {
	c.pin.mu.Lock()
	defer c.pin.mu.Unlock()
	notes, untaken = c.pin.notes, c.pin.set
	c.pin.members, c.pin.set, c.pin.notes = nil, false, nil
	return notes, untaken
}

func (c *Cluster) replayNote(s string) {
	plog.Noticef("replay: %s", s)
	c.pin.mu.Lock()
	defer c.pin.mu.Unlock()
	c.pin.notes = append(c.pin.notes, s)
}

// injectPinned puts f on the recorded members, saying first whether
// they still hold the role the case is named for.
func (c *Cluster) injectPinned(ctx context.Context, t target, members []int, f Fault) error {
	if note := roleNote(ctx, c, t, members); note != "" {
		c.replayNote(note)
	}
	return c.injectOn(ctx, members, f)
}

// roleNote says when a recorded member no longer holds the role its
// target names (the leader, a follower); "" when it does, or when the
// target names no role.
func roleNote(ctx context.Context, c *Cluster, t target, members []int) string {
	var wantLeader bool
	switch t.(type) {
	case leader:
		wantLeader = true
	case oneFollower:
	default:
		return ""
	}
	lv, err := c.leaderViewAt(ctx)
	if err != nil {
		return fmt.Sprintf("cannot tell whether the recorded members hold the role %s: %v", t.suffix(), err)
	}
	for _, i := range members {
		if (i == lv.index) != wantLeader {
			return fmt.Sprintf("%s no longer holds the role %s (the leader is %s at term %d); hit as recorded", c.members[i].Name, t.suffix(), c.members[lv.index].Name, lv.term)
		}
	}
	return ""
}

// drawer is implemented by faults with drawn parameters, to record them.
type drawer interface{ drawn() string }

func (d delayed) drawn() string { return fmt.Sprintf("%v±%v", d.lat, d.jitter) }

// faultRecord is how the report records f as drawn.
func faultRecord(f Fault) string {
	if d, ok := f.(drawer); ok {
		return f.String() + " " + d.drawn()
	}
	return f.String()
}

// recordDrawn notes a fault the running case drew.
func (c *Cluster) recordDrawn(f Fault) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drawn = append(c.drawn, faultRecord(f))
}

// takeDrawn returns the faults drawn since it was last called.
func (c *Cluster) takeDrawn() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.drawn
	c.drawn = nil
	return d
}
