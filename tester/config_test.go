package tester

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/etcd-functional/functional/agent/client"
)

func TestValidateAcceptsDefaults(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	if err := testConfig(3).Validate(); err != nil {
		t.Fatalf("3 agents: %v", err)
	}
}

func TestValidateRejectsBadInput(t *testing.T) {
	tokenDir := t.TempDir()
	emptyToken := filepath.Join(tokenDir, "empty")
	os.WriteFile(emptyToken, nil, 0o600)
	twoLines := filepath.Join(tokenDir, "two-lines")
	os.WriteFile(twoLines, []byte("one\ntwo\n"), 0o600)

	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want []string // every one must be in the error
	}{
		{"no agents", func(c *Config) { c.AgentEndpoints = nil; c.ClientPorts = nil; c.PeerPorts = nil }, []string{"-agent-endpoints", "none given"}},
		{"scheme in endpoint", func(c *Config) { c.AgentEndpoints[0] = "http://127.0.0.1:9027" }, []string{"-agent-endpoints", "host:port"}},
		{"duplicate agent", func(c *Config) { c.AgentEndpoints[1] = c.AgentEndpoints[0] }, []string{"given twice"}},
		{"unknown case", func(c *Config) { c.Cases = []string{"SIGKILL_LEADER", "KILL_EVERYTHING"} },
			[]string{`unknown case "KILL_EVERYTHING"`, "valid cases:", "SIGTERM_ONE_FOLLOWER", "NO_FAIL_WITH_STRESS"}},
		{"case twice", func(c *Config) { c.Cases = []string{"SIGKILL_LEADER", "SIGKILL_LEADER"} }, []string{"given twice", "-schedule-cases"}},
		{"client port count", func(c *Config) { c.ClientPorts = c.ClientPorts[:2] }, []string{"-client-ports", "2 ports for 3 agents"}},
		{"peer port count", func(c *Config) { c.PeerPorts = append(c.PeerPorts, 4000) }, []string{"-peer-ports", "4 ports for 3 agents"}},
		{"port out of range", func(c *Config) { c.ClientPorts[1] = 70000 }, []string{"-client-ports[1]", "70000 out of range"}},
		{"port zero", func(c *Config) { c.PeerPorts[2] = 0 }, []string{"-peer-ports[2]", "out of range"}},
		{"proxy port out of range", func(c *Config) { c.PeerPorts[0] = 65535 }, []string{"listen peer port", "65536"}},
		{"client equals peer on one host", func(c *Config) { c.ClientPorts[0] = c.PeerPorts[1] }, []string{"already used by", "-peer-ports[1]"}},
		{"peer proxy port collides", func(c *Config) { c.ClientPorts[1] = c.PeerPorts[0] + 1 }, []string{"already used by", "listen peer port"}},
		{"member port is an agent's", func(c *Config) { c.ClientPorts[0] = 19027 }, []string{"agent 127.0.0.1:19027"}},
		{"schedule out of range", func(c *Config) { c.Cases = []string{"SIGKILL_LEADER"}; c.ScheduleCases = []int{0, 1} }, []string{"-schedule-cases", "index 1 out of range 0..0"}},
		{"negative schedule", func(c *Config) { c.ScheduleCases = []int{-1} }, []string{"index -1 out of range"}},
		{"bad stresser", func(c *Config) { c.Stresser.Names = []string{"keys", "watch"} }, []string{"-stresser", `unknown stresser "watch"`}},
		{"bad qps", func(c *Config) { c.Stresser.QPS = 0 }, []string{"QPS"}},
		{"limit 0", func(c *Config) { c.Limit = 0 }, []string{"-limit", "-1"}},
		{"limit -2", func(c *Config) { c.Limit = -2 }, []string{"-limit"}},
		{"recovery timeout 0", func(c *Config) { c.RecoveryTimeout = 0 }, []string{"-recovery-timeout", "> 0"}},
		{"election below 5 heartbeats", func(c *Config) { c.ElectionTimeout = 400e6 }, []string{"-election-timeout", "5 × -heartbeat-interval"}},
		{"negative case delay", func(c *Config) { c.CaseDelay = -1 }, []string{"-case-delay"}},
		{"snapshot count", func(c *Config) { c.SnapshotCount = 0 }, []string{"-snapshot-count"}},
		{"defrag interval", func(c *Config) { c.DefragInterval = -1 }, []string{"-defrag-interval"}},
		{"no report dir", func(c *Config) { c.ReportDir = "" }, []string{"-report-dir"}},
		{"unreadable token", func(c *Config) { c.DialAgent = nil; c.AgentTokenFile = filepath.Join(tokenDir, "missing") }, []string{"-agent-token-file", "no such file"}},
		{"empty token", func(c *Config) { c.DialAgent = nil; c.AgentTokenFile = emptyToken }, []string{"-agent-token-file", "empty"}},
		{"cert without key", func(c *Config) { c.DialAgent = nil; c.AgentCertFile = emptyToken }, []string{"give both or neither"}},
		// internal/secret's rules, the same as the agent's.
		{"multi-line token", func(c *Config) { c.DialAgent = nil; c.AgentTokenFile = twoLines }, []string{"-agent-token-file", "one line"}},
		{"client cert without CA", func(c *Config) { c.DialAgent = nil; c.AgentCertFile, c.AgentKeyFile = emptyToken, emptyToken }, []string{"-agent-ca-file", "needs the CA file"}},
		{"unreadable CA", func(c *Config) { c.DialAgent = nil; c.AgentCAFile = filepath.Join(tokenDir, "ca.pem") }, []string{"-agent-ca-file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(3)
			cfg.DialAgent = func(string) (client.Agent, error) { panic("dialled") }
			tc.mod(&cfg)
			err := cfg.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			var se *SetupError
			if !errors.As(err, &se) || ExitCode(err) != ExitSetup {
				t.Errorf("error %T is not a SetupError with exit status 2", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestValidateFewerThanThreeAgents(t *testing.T) {
	for _, name := range []string{"SIGKILL_LEADER", "SIGTERM_ONE_FOLLOWER", "SIGSTOP_QUORUM", "SIGQUIT_AND_REMOVE_ONE_FOLLOWER"} {
		cfg := testConfig(2)
		cfg.Cases = []string{name}
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "needs at least 3 members") || !strings.Contains(err.Error(), name) {
			t.Errorf("%s with 2 agents: got %v, want an error naming it and the 3 members it needs", name, err)
		}
	}
	// Cases on every member run with any number.
	cfg := testConfig(1)
	cfg.Cases = []string{"SIGKILL_ALL", "NO_FAIL_WITH_STRESS"}
	if err := cfg.Validate(); err != nil {
		t.Errorf("SIGKILL_ALL on one agent: %v", err)
	}
}

func TestValidateDefaultsPorts(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AgentEndpoints = []string{"10.0.0.1:9027", "10.0.0.2:9027", "10.0.0.3:9027"}
	s, err := cfg.normalize()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if s.ClientPorts[i] != 2379 || s.PeerPorts[i] != 2380 {
			t.Errorf("agent %d: ports %d/%d, want 2379/2380", i, s.ClientPorts[i], s.PeerPorts[i])
		}
	}
	if s.hosts[0] != "10.0.0.1" {
		t.Errorf("host %q", s.hosts[0])
	}
	// The same ports on one host are refused.
	cfg.AgentEndpoints = []string{"localhost:9027", "localhost:9028"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "on host 127.0.0.1 is already used") {
		t.Errorf("two agents on localhost with default ports: %v", err)
	}
}

func TestRunRejectsBadInputBeforeDialling(t *testing.T) {
	cfg := testConfig(3)
	dialled := false
	cfg.DialAgent = func(string) (client.Agent, error) { dialled = true; return nil, errors.New("no") }
	cfg.Limit = 0
	cfg.ReportDir = t.TempDir()
	err := Run(context.Background(), cfg)
	if ExitCode(err) != ExitSetup || dialled {
		t.Fatalf("Run: %v (exit %d), dialled %v; want exit 2 and nothing dialled", err, ExitCode(err), dialled)
	}
}

func TestRunFailsFastOnSilentAgent(t *testing.T) {
	s, fakes := fakeSettings(t, 3, nil)
	fakes[1].setFail("Status", errors.New("connection refused"))
	cfg := s.Config
	cfg.ReportDir = t.TempDir()
	err := Run(context.Background(), cfg)
	if ExitCode(err) != ExitSetup || !strings.Contains(err.Error(), fakes[1].ep) {
		t.Fatalf("Run: %v; want a setup error naming %s", err, fakes[1].ep)
	}
	for _, f := range fakes {
		for _, c := range f.Calls() {
			if c != "Status" {
				t.Errorf("agent %s got %s; nothing may start when an agent is silent", f.ep, c)
			}
		}
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{&SetupError{errors.New("x")}, 2},
		{ErrFailed, 1},
		{ErrInterrupted, 1},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
