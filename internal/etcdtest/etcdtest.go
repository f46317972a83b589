// Package etcdtest starts small real etcd clusters on loopback for tests.
//
// The cluster runs the project's bin/etcd (or $ETCD_BIN) as child processes
// with their data in t.TempDir(), on ports picked by listening on
// 127.0.0.1:0. Every process is stopped and waited for in t.Cleanup, so a test
// leaves no etcd behind. A test that cannot find the binary is skipped.
package etcdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcd-functional/functional/internal/freeport"
	"github.com/etcd-functional/functional/internal/logtail"
)

// EnvBinary names the environment variable that overrides the etcd binary.
const EnvBinary = "ETCD_BIN"

// EnvBinDir names the environment variable that overrides where
// ReleaseBinary looks for per-release binaries (default: bin/ under the
// module root, where `make etcd ETCD_VERSION=vX.Y.Z` puts them).
const EnvBinDir = "ETCD_BIN_DIR"

const (
	// stopGrace is how long Stop waits after SIGTERM before SIGKILL. A member
	// that has lost quorum takes ~6 s to exit on SIGTERM; tests do not need
	// a graceful exit that badly.
	stopGrace = 3 * time.Second
	// cleanupGrace is stopGrace for the cleanup of a whole cluster: every
	// member is stopping at once, so a leader's graceful exit (handing
	// leadership to a peer) cannot succeed anyway, and waiting 3 s for it
	// in every test adds up.
	cleanupGrace = time.Second
	// startAttempts bounds retries when another process took a port between
	// picking it and etcd binding it.
	startAttempts = 3
)

// Option changes how StartCluster configures the members.
type Option func(*config)

type config struct {
	binary        string
	snapshotCount uint64
	heartbeat     time.Duration
	election      time.Duration
	healthTimeout time.Duration
	extraArgs     []string
}

// WithBinary runs the etcd binary at path instead of Binary()'s, e.g. one
// from ReleaseBinary.
func WithBinary(path string) Option { return func(c *config) { c.binary = path } }

// WithSnapshotCount sets etcd's --snapshot-count.
func WithSnapshotCount(n uint64) Option { return func(c *config) { c.snapshotCount = n } }

// WithTiming sets etcd's --heartbeat-interval and --election-timeout.
func WithTiming(heartbeat, election time.Duration) Option {
	return func(c *config) { c.heartbeat, c.election = heartbeat, election }
}

// WithHealthTimeout bounds how long StartCluster and Restart wait for the
// members to report healthy (default 30 s).
func WithHealthTimeout(d time.Duration) Option { return func(c *config) { c.healthTimeout = d } }

// WithArgs appends raw flags to every member's command line, e.g.
// "--unsafe-no-fsync".
func WithArgs(args ...string) Option {
	return func(c *config) { c.extraArgs = append(c.extraArgs, args...) }
}

// Binary returns the etcd binary tests should run: $ETCD_BIN if set, else
// bin/etcd under the module root (the first directory upwards from the
// working directory that holds go.mod).
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$%s=%q: %w", EnvBinary, p, err)
		}
		return p, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", fmt.Errorf("%w; set $%s", err, EnvBinary)
	}
	p := filepath.Join(root, "bin", "etcd")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("etcd binary %s: %w (run `make etcd` or set $%s)", p, err, EnvBinary)
	}
	return p, nil
}

// ReleaseBinary returns the binary of etcd release version ("v3.6.16") as
// `make etcd ETCD_VERSION=v3.6.16` leaves it: etcd-v3.6.16 in $ETCD_BIN_DIR,
// or in bin/ under the module root. The error says how to build it.
func ReleaseBinary(version string) (string, error) {
	if !strings.HasPrefix(version, "v") || strings.ContainsAny(version, "/\\") {
		return "", fmt.Errorf("etcd release %q: want vX.Y.Z such as v3.6.16", version)
	}
	dir := os.Getenv(EnvBinDir)
	if dir == "" {
		root, err := moduleRoot()
		if err != nil {
			return "", fmt.Errorf("%w; set $%s", err, EnvBinDir)
		}
		dir = filepath.Join(root, "bin")
	}
	p := filepath.Join(dir, "etcd-"+version)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("etcd %s binary %s: %w (build it with `make etcd ETCD_VERSION=%s`, or set $%s)", version, p, err, version, EnvBinDir)
	}
	return p, nil
}

// moduleRoot is the first directory upwards from the working directory
// that holds go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Cluster is a running set of etcd members.
type Cluster struct {
	members []*Member
	cfg     config
}

// Member is one etcd process of a Cluster.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	DataDir   string

	binary  string
	args    []string
	logPath string
	health  time.Duration

	mu   sync.Mutex
	proc *process
}

type process struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when cmd.Wait returned
	err  error         // cmd.Wait's result, valid after done
}

// StartCluster starts an n-member cluster and waits until every member is
// healthy. It skips the test when no etcd binary is found and fails it when
// the cluster does not come up.
func StartCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("etcdtest: cluster size %d: must be at least 1", n)
	}
	cfg := config{healthTimeout: 30 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	bin := cfg.binary
	if bin == "" {
		var err error
		if bin, err = Binary(); err != nil {
			t.Skipf("etcdtest: no etcd binary, skipping: %v", err)
		}
	}
	base := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		c, err := start(bin, filepath.Join(base, fmt.Sprintf("try%d", attempt)), n, cfg)
		if err == nil {
			t.Cleanup(func() {
				if err := c.stopAll(); err != nil {
					t.Errorf("etcdtest: stop cluster: %v", err)
				}
				if t.Failed() {
					c.logTails(t)
				}
			})
			return c
		}
		lastErr = err
		if !errors.Is(err, errPortClash) {
			break
		}
	}
	t.Fatalf("etcdtest: start %d-member cluster: %v", n, lastErr)
	return nil
}

var errPortClash = errors.New("port taken by another process")

func start(bin, dir string, n int, cfg config) (*Cluster, error) {
	ports, err := freeport.Take(2*n, 1)
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg}
	var initial []string
	for i := 0; i < n; i++ {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			binary:    bin,
			health:    cfg.healthTimeout,
		}
		m.DataDir = filepath.Join(dir, m.Name+".etcd")
		m.logPath = filepath.Join(dir, m.Name+".log")
		c.members = append(c.members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	for _, m := range c.members {
		m.args = []string{
			"--name", m.Name,
			"--data-dir", m.DataDir,
			"--listen-client-urls", m.ClientURL,
			"--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL,
			"--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", filepath.Base(dir) + "-" + strconv.Itoa(os.Getpid()),
		}
		if cfg.snapshotCount > 0 {
			m.args = append(m.args, "--snapshot-count", strconv.FormatUint(cfg.snapshotCount, 10))
		}
		if cfg.heartbeat > 0 {
			m.args = append(m.args, "--heartbeat-interval", strconv.FormatInt(cfg.heartbeat.Milliseconds(), 10))
		}
		if cfg.election > 0 {
			m.args = append(m.args, "--election-timeout", strconv.FormatInt(cfg.election.Milliseconds(), 10))
		}
		m.args = append(m.args, cfg.extraArgs...)
		if err := m.launch(); err != nil {
			c.stopAll()
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.healthTimeout)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		c.stopAll()
		for _, m := range c.members {
			if b, _ := os.ReadFile(m.logPath); bytes.Contains(b, []byte("address already in use")) {
				return nil, fmt.Errorf("%s: %w: %v", m.Name, errPortClash, err)
			}
		}
		return nil, fmt.Errorf("%w\n%s", err, c.tails())
	}
	return c, nil
}

// ClientURLs returns every member's client URL, in member order.
func (c *Cluster) ClientURLs() []string {
	urls := make([]string, len(c.members))
	for i, m := range c.members {
		urls[i] = m.ClientURL
	}
	return urls
}

// Size is the number of members.
func (c *Cluster) Size() int { return len(c.members) }

// Member returns member i (0-based).
func (c *Cluster) Member(i int) *Member { return c.members[i] }

// Client returns a client connected to every member; t.Cleanup closes it.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.ClientURLs(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcdtest: client for %v: %v", c.ClientURLs(), err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// WaitHealthy polls every running member's /health until all report healthy
// or ctx is done. Stopped members are not waited for.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	for _, m := range c.members {
		if !m.Running() {
			continue
		}
		if err := m.WaitHealthy(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) stopAll() error {
	errs := make([]error, len(c.members))
	var wg sync.WaitGroup
	for i, m := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.signalAndWait(syscall.SIGTERM, cleanupGrace)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Cluster) tails() string {
	var b strings.Builder
	for _, m := range c.members {
		fmt.Fprintf(&b, "--- %s log tail ---\n%s\n", m.Name, m.logTail(20))
	}
	return b.String()
}

func (c *Cluster) logTails(t testing.TB) { t.Log("etcdtest: member logs\n" + c.tails()) }

func (m *Member) logTail(lines int) string { return logtail.File(m.logPath, 0, lines) }

// launch starts the process; the caller holds no lock.
func (m *Member) launch() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil && !exited(m.proc) {
		return fmt.Errorf("%s: already running (pid %d)", m.Name, m.proc.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("%s: open log: %w", m.Name, err)
	}
	cmd := exec.Command(m.binary, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Kill etcd if the test binary dies without running its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: start %s: %w", m.Name, m.binary, err)
	}
	p := &process{cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	m.proc = p
	return nil
}

func exited(p *process) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (m *Member) current() *process {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc
}

// PID is the process id of the member's current process, or 0 if it never
// started.
func (m *Member) PID() int {
	if p := m.current(); p != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

// Running reports whether the member's process is alive.
func (m *Member) Running() bool {
	p := m.current()
	return p != nil && !exited(p)
}

// Kill sends SIGKILL and waits for the process to exit.
func (m *Member) Kill() error { return m.signalAndWait(syscall.SIGKILL, 0) }

// Stop sends SIGTERM, then SIGKILL if the process has not exited after a
// few seconds, and waits for it to exit. Stopping a stopped member is a no-op.
func (m *Member) Stop() error { return m.signalAndWait(syscall.SIGTERM, stopGrace) }

func (m *Member) signalAndWait(sig syscall.Signal, grace time.Duration) error {
	p := m.current()
	if p == nil || exited(p) {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: signal %v: %w", m.Name, sig, err)
	}
	if sig != syscall.SIGKILL {
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case <-p.done:
			return nil
		case <-timer.C:
			if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				return fmt.Errorf("%s: kill after %v: %w", m.Name, grace, err)
			}
		}
	}
	<-p.done
	return nil
}

// Restart starts a stopped or killed member again on its data dir and ports
// and waits until it is healthy. A running member is stopped first.
func (m *Member) Restart() error {
	if err := m.Stop(); err != nil {
		return err
	}
	if err := m.launch(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.health)
	defer cancel()
	return m.WaitHealthy(ctx)
}

// WaitHealthy polls the member's /health endpoint until it reports healthy,
// the process exits, or ctx is done.
func (m *Member) WaitHealthy(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if p := m.current(); p == nil || exited(p) {
			return fmt.Errorf("%s: exited before it was healthy", m.Name)
		}
		last = probeHealth(ctx, client, m.ClientURL)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not healthy: %w (last probe: %v)", m.Name, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

func probeHealth(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body.Bytes(), []byte(`"health":"true"`)) {
		return fmt.Errorf("GET %s/health: %s %s", url, resp.Status, bytes.TrimSpace(body.Bytes()))
	}
	return nil
}
