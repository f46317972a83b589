package tester

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/etcd-functional/functional/htmlreport"
)

// metrics are the run's Prometheus metrics, in a registry of their own so
// that several runs (tests) can live in one process.
type metrics struct {
	reg           *prometheus.Registry
	rounds        prometheus.Counter
	roundFailures prometheus.Counter
	cases         *prometheus.CounterVec
	caseFailures  *prometheus.CounterVec
	findings      *prometheus.CounterVec
	recovery      *prometheus.HistogramVec

	mu        sync.Mutex
	round     int
	caseIndex int
	caseName  string
	cluster   *Cluster // nil until the agents are dialled
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		rounds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_tester_rounds_total", Help: "Rounds finished.",
		}),
		roundFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_tester_round_failures_total", Help: "Rounds in which a case or the round's compaction failed.",
		}),
		cases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "etcd_tester_cases_total", Help: "Cases run, by case.",
		}, []string{"case"}),
		caseFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "etcd_tester_case_failures_total", Help: "Cases failed, by case.",
		}, []string{"case"}),
		findings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "etcd_tester_findings_total", Help: "Findings (what etcd did that no case failed for), by case and what was found.",
		}, []string{"case", "what"}),
		recovery: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "etcd_tester_recovery_seconds",
			Help:    "Time from the end of a fault's recovery to every member healthy with one leader, by case.",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128},
		}, []string{"case"}),
	}
	m.reg.MustRegister(m.rounds, m.roundFailures, m.cases, m.caseFailures, m.findings, m.recovery)
	return m
}

func (m *metrics) setCluster(c *Cluster) {
	m.mu.Lock()
	m.cluster = c
	m.mu.Unlock()
}

func (m *metrics) setCase(round, index int, name string) {
	m.mu.Lock()
	m.round, m.caseIndex, m.caseName = round, index, name
	m.mu.Unlock()
}

func (m *metrics) caseDone(r CaseResult) {
	m.cases.WithLabelValues(r.Case).Inc()
	if !r.Passed {
		m.caseFailures.WithLabelValues(r.Case).Inc()
	}
	for _, f := range r.Findings {
		m.findings.WithLabelValues(r.Case, f.What).Inc()
	}
	if !r.HealthyTime.IsZero() {
		m.recovery.WithLabelValues(r.Case).Observe(r.RecoverySeconds)
	}
}

func (m *metrics) roundDone(passed bool) {
	m.rounds.Inc()
	if !passed {
		m.roundFailures.Inc()
	}
}

// statusPage is the JSON of /status.
type statusPage struct {
	Round     int           `json:"round"`
	CaseIndex int           `json:"case_index"`
	Case      string        `json:"case"`
	Agents    []agentStatus `json:"agents"`
}

type agentStatus struct {
	Member   string `json:"member"`
	Endpoint string `json:"endpoint"`
	State    string `json:"state,omitempty"`
	Pid      int    `json:"pid,omitempty"`
	Error    string `json:"error,omitempty"`
}

// statusAgentTimeout bounds /status's questions to the agents.
const statusAgentTimeout = 2 * time.Second

func (m *metrics) status(ctx context.Context) statusPage {
	m.mu.Lock()
	p := statusPage{Round: m.round, CaseIndex: m.caseIndex, Case: m.caseName, Agents: []agentStatus{}}
	c := m.cluster
	m.mu.Unlock()
	if c == nil {
		return p
	}
	p.Agents = make([]agentStatus, len(c.members))
	c.eachMember(func(i int) error {
		mb := c.members[i]
		as := agentStatus{Member: mb.Name, Endpoint: mb.agent.Endpoint()}
		sctx, cancel := context.WithTimeout(ctx, statusAgentTimeout)
		defer cancel()
		st, err := mb.agent.Status(sctx)
		if err != nil {
			as.Error = err.Error()
		} else {
			as.State, as.Pid = string(st.State), st.Pid
		}
		p.Agents[i] = as
		return nil
	})
	return p
}

// handler serves /metrics and /status.
// handler serves the metrics, /status and, when reportDir is set, the
// run's HTML report at / (with the files it links to).
func (m *metrics) handler(reportDir string) http.Handler {
	mux := http.NewServeMux()
	if reportDir != "" {
		mux.Handle("/", htmlreport.Handler(reportDir))
	}
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(m.status(r.Context()))
	})
	return mux
}

// serve listens on addr and serves h until the returned stop is called;
// stop shuts the server down and waits for it. bound is the address
// listened on (addr may have port 0).
func serve(addr string, h http.Handler) (stop func(), bound string, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("-metrics-addr: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			plog.Errorf("metrics server on %s: %v", addr, err)
		}
	}()
	plog.Infof("metrics on http://%s/metrics, status on /status", ln.Addr())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		<-done
	}, ln.Addr().String(), nil
}
