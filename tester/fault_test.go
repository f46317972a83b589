package tester

import (
	"context"
	"testing"
)

// Every fault family of the catalogue heals through the ledger alone: a
// Fault cannot compile without Undo and Present (the ledger records the
// interface), and this test catches one whose Undo does not take off what
// its Inject put on, or whose Present cannot see it. Membership faults
// need real etcd members to re-add; the integration tests and the e2e run
// cover them.
func TestEveryFaultHealsThroughTheLedger(t *testing.T) {
	seen := map[string]bool{}
	for _, cs := range Catalogue(DefaultConfig()) {
		fc, ok := unwrap(cs).(faultCase)
		if !ok || seen[fc.f.prefix()] {
			continue
		}
		seen[fc.f.prefix()] = true
		f := fc.f.draw(caseRand(1, 1, 1))
		if _, ok := f.(removed); ok {
			continue
		}
		t.Run(fc.f.prefix(), func(t *testing.T) {
			ctx := context.Background()
			c, fakes := fakeCluster(t, 3)
			startAll(t, fakes)
			if err := c.Inject(ctx, 1, f); err != nil {
				t.Fatal(err)
			}
			st, _ := fakes[1].Status(ctx)
			if !f.Present(c, 1, st) {
				t.Fatalf("%s injected but not present in the agent's status %+v", f, st)
			}
			if got := c.Faults(); len(got) != 1 || got[0] != "etcd-1: "+f.String() {
				t.Fatalf("ledger %v", got)
			}
			if err := c.Heal(ctx); err != nil {
				t.Fatal(err)
			}
			st, _ = fakes[1].Status(ctx)
			if f.Present(c, 1, st) || len(c.Faults()) != 0 {
				t.Errorf("%s still present after Heal: status %+v, ledger %v", f, st, c.Faults())
			}
		})
	}
	if len(seen) < 6 {
		t.Errorf("only %d fault families found in the catalogue: %v", len(seen), seen)
	}
}
