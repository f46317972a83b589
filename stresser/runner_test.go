package stresser

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/etcd-functional/functional/internal/etcdtest"
)

// runRunner runs the runner name alone on c, broken by breakIt if given,
// until done says it has done enough, and returns its Check.
func runRunner(t *testing.T, c *etcdtest.Cluster, name string, breakIt func(member), done func(member) bool) error {
	t.Helper()
	s := mustNew(t, testConfig(c.ClientURLs(), name))
	m := s.members[0]
	if breakIt != nil {
		breakIt(m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Stress(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, name+" at work", func() bool { return done(m) })
	s.Pause()
	err := s.Check(ctx)
	s.Close()
	return err
}

// Each runner keeps its property on a healthy cluster, and its
// deliberately broken variant is caught by its Check.
func TestRunners(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	for _, tc := range []struct {
		name    string
		breakIt func(member)
		done    func(m member, start time.Time) bool
		want    string // in the broken variant's error
	}{
		{
			NameLockRunner,
			func(m member) { m.(*lockRunner).skipLock = true },
			func(m member, _ time.Time) bool {
				l := m.(*lockRunner)
				return l.acquired.Load() >= 30 || l.v.count() > 0
			},
			"took the lock",
		},
		{
			NameElectionRunner,
			func(m member) { m.(*electionRunner).skipCampaign = true },
			func(m member, _ time.Time) bool {
				e := m.(*electionRunner)
				return e.elected.Load() >= 20 || e.v.count() > 0
			},
			"elected",
		},
		{
			// Past the lease TTL: the kept lease must outlive it.
			NameLeaseRunner,
			func(m member) { m.(*leaseRunner).skipRenew = true },
			func(m member, start time.Time) bool {
				l := m.(*leaseRunner)
				return (time.Since(start) > (leaseRunnerTTL+2)*time.Second && l.checked.Load() > 0) || l.v.count() > 0
			},
			"expired",
		},
		{
			NameWatchRunner,
			func(m member) { m.(*watchRunner).dropEvery = 7 },
			func(m member, _ time.Time) bool { return m.modifiedKeys() >= 50 },
			"never got key",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			if err := runRunner(t, c, tc.name, nil, func(m member) bool { return tc.done(m, start) }); err != nil {
				t.Fatalf("correct %s on a healthy cluster: %v", tc.name, err)
			}
			start = time.Now()
			err := runRunner(t, c, tc.name, tc.breakIt, func(m member) bool { return tc.done(m, start) })
			if err == nil || !strings.Contains(err.Error(), tc.name) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("broken %s: Check %v, want a violation (%q)", tc.name, err, tc.want)
			}
			t.Logf("broken %s caught: %v", tc.name, err)
		})
	}
}
