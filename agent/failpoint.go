package agent

// Failpoints: etcd built with gofail (`make build FAILPOINTS=1`) serves its
// failpoints over HTTP on the address in GOFAIL_HTTP. The agent starts such
// an etcd with GOFAIL_HTTP on a free loopback port of its own choosing, so
// that the failpoints are reachable only from inside the member's host (or
// network namespace), and relays the failpoint RPCs of package wire to it,
// after checking names and terms.
//
// Whether the binary has failpoints is decided once, in New, from the Go
// build information embedded in it (debug/buildinfo): a failpoint build
// links the module go.etcd.io/gofail (its runtime), a normal build does not.
// That needs no process run and no port; a non-Go or unreadable binary
// counts as one without failpoints.
//
// The address is not kept in the agent: it is read from the running
// process's environment (/proc/PID/environ), so that an agent that adopted
// the etcd of a crashed predecessor reaches its failpoints too.

import (
	"bytes"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/etcd-functional/functional/agent/wire"
	"github.com/etcd-functional/functional/internal/freeport"
)

const (
	// gofailModule is the module whose runtime a failpoint build links.
	gofailModule = "go.etcd.io/gofail"
	// gofailEnv is the variable that makes gofail's runtime serve HTTP.
	gofailEnv = "GOFAIL_HTTP"
	// failpointTimeout bounds one HTTP request to etcd's failpoint server.
	failpointTimeout = 5 * time.Second
	// maxFailpointReply bounds what the agent reads of one reply.
	maxFailpointReply = 1 << 20
	// maxFailpointChain bounds the terms of one "a->b->..." chain.
	maxFailpointChain = 8
)

// failpointSupport is what New found out about the etcd binary, and the
// port its failpoints are served on.
type failpointSupport struct {
	ok     bool
	reason string // why not, when !ok
	// port is the loopback port every etcd this agent starts serves its
	// failpoints on; picked at the first start, kept while it stays free
	// (one etcd runs at a time), so that a long run does not use up ports.
	// Guarded by Agent.op.
	port int
}

// detectFailpoints reports whether bin was built with gofail failpoints.
func detectFailpoints(bin string) failpointSupport {
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return failpointSupport{reason: fmt.Sprintf("etcd binary %s has no readable Go build information (%v), so no gofail failpoints", bin, err)}
	}
	for _, d := range info.Deps {
		if d.Path == gofailModule {
			return failpointSupport{ok: true}
		}
	}
	return failpointSupport{reason: fmt.Sprintf("etcd binary %s was built without gofail failpoints (build one with `make build FAILPOINTS=1`)", bin)}
}

// etcdEnv is the environment for a new etcd process: nil (the agent's own)
// for a binary without failpoints; for one with them, the agent's own with
// GOFAIL_HTTP set to a free loopback address. A caller's GOFAIL_HTTP is
// replaced: the agent must know where the failpoints are served, and they
// must never listen beyond loopback. a.op held.
func (a *Agent) etcdEnv() ([]string, error) {
	if !a.fp.ok {
		return nil, nil
	}
	if a.fp.port == 0 || !loopbackFree(a.fp.port) {
		// Below the ephemeral range, so that no outgoing connection takes
		// it between this check and etcd binding it.
		ports, err := freeport.Take(1, 1)
		if err != nil {
			return nil, fmt.Errorf("pick a loopback port for etcd's failpoints: %w", err)
		}
		a.fp.port = ports[0]
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, gofailEnv+"=") })
	return append(env, gofailEnv+"="+net.JoinHostPort("127.0.0.1", strconv.Itoa(a.fp.port))), nil
}

// loopbackFree reports whether port can be bound on 127.0.0.1 now.
func loopbackFree(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// failpointAddr returns the loopback address the running etcd serves its
// failpoints on; a.op held.
func (a *Agent) failpointAddr() (string, error) {
	if !a.fp.ok {
		return "", errors.New(a.fp.reason)
	}
	a.mu.Lock()
	p, err := a.runningLocked()
	state := a.state
	a.mu.Unlock()
	if err != nil {
		return "", fmt.Errorf("failpoints: %w", err)
	}
	if state == wire.StatePaused {
		return "", errors.New("failpoints: etcd is paused (SIGSTOP): it cannot answer until resumed")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.pid))
	if err != nil {
		return "", fmt.Errorf("failpoints: read the environment of etcd pid %d: %w", p.pid, err)
	}
	for kv := range bytes.SplitSeq(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte(gofailEnv+"=")); ok {
			addr := string(v)
			if host, _, err := net.SplitHostPort(addr); err != nil || !net.ParseIP(host).IsLoopback() {
				return "", fmt.Errorf("failpoints: etcd pid %d serves them on %q, not a loopback address; the agent uses only its own", p.pid, addr)
			}
			return addr, nil
		}
	}
	return "", fmt.Errorf("failpoints: etcd pid %d was started without %s (by an agent that did not know its binary has failpoints?): restart it", p.pid, gofailEnv)
}

// failpointHTTP talks to etcd's failpoint server; it keeps no idle
// connection, so that it leaves no goroutine behind.
var failpointHTTP = &http.Client{
	Timeout:   failpointTimeout,
	Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
}

// failpointRequest sends one request to the failpoint server at addr and
// returns the status code and body.
func failpointRequest(addr, method, path, body string) (int, string, error) {
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := failpointHTTP.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("failpoints: %s %s on etcd's failpoint server: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxFailpointReply))
	if err != nil {
		return 0, "", fmt.Errorf("failpoints: %s %s: read reply: %w", method, path, err)
	}
	return resp.StatusCode, strings.TrimSpace(string(b)), nil
}

// listFailpoints asks the server at addr for every failpoint and its term.
func listFailpoints(addr string) ([]wire.Failpoint, error) {
	code, body, err := failpointRequest(addr, http.MethodGet, "/", "")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("failpoints: GET / answered %d: %s", code, body)
	}
	var fps []wire.Failpoint
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		name, term, _ := strings.Cut(line, "=")
		fps = append(fps, wire.Failpoint{Name: name, Term: term})
	}
	slices.SortFunc(fps, func(x, y wire.Failpoint) int { return strings.Compare(x.Name, y.Name) })
	return fps, nil
}

// Failpoints lists every failpoint of the running etcd and the term each
// is armed with.
func (a *Agent) Failpoints() ([]wire.Failpoint, error) {
	if err := a.lockOp(); err != nil {
		return nil, err
	}
	defer a.op.Unlock()
	addr, err := a.failpointAddr()
	if err != nil {
		return nil, err
	}
	return listFailpoints(addr)
}

// failpointTarget checks name and finds it in the running etcd; a.op held.
// It returns the server's address and the failpoint's current state.
func (a *Agent) failpointTarget(name string) (string, wire.Failpoint, error) {
	if err := validateFailpointName(name); err != nil {
		return "", wire.Failpoint{}, err
	}
	addr, err := a.failpointAddr()
	if err != nil {
		return "", wire.Failpoint{}, err
	}
	fps, err := listFailpoints(addr)
	if err != nil {
		return "", wire.Failpoint{}, err
	}
	i := slices.IndexFunc(fps, func(fp wire.Failpoint) bool { return fp.Name == name })
	if i < 0 {
		names := make([]string, len(fps))
		for i, fp := range fps {
			names[i] = fp.Name
		}
		return "", wire.Failpoint{}, fmt.Errorf("failpoint %q: this etcd has no such failpoint; it has %d: %s", name, len(names), strings.Join(names, ", "))
	}
	return addr, fps[i], nil
}

// ArmFailpoint arms the failpoint name with term (see wire.ArmFailpoint).
func (a *Agent) ArmFailpoint(name, term string) error {
	if err := validateFailpointName(name); err != nil {
		return err
	}
	if err := validateFailpointTerm(term); err != nil {
		return fmt.Errorf("failpoint %q: %w", name, err)
	}
	if err := a.lockOp(); err != nil {
		return err
	}
	defer a.op.Unlock()
	addr, _, err := a.failpointTarget(name)
	if err != nil {
		return err
	}
	code, body, err := failpointRequest(addr, http.MethodPut, "/"+name, term)
	if err != nil {
		return err
	}
	if code != http.StatusNoContent && code != http.StatusOK {
		return fmt.Errorf("failpoint %q: etcd refused term %q: %d %s", name, term, code, body)
	}
	plog.Infof("armed failpoint %s=%s", name, term)
	// An armed failpoint is a fault like any other: it lasts while the
	// fault lease is renewed, and the agent disarms it when the lease
	// lapses (a tester that died with a panic armed would leave it).
	a.mu.Lock()
	a.extendLeaseLocked()
	a.mu.Unlock()
	return nil
}

// DisarmFailpoint disarms the failpoint name; a disarmed one stays so.
func (a *Agent) DisarmFailpoint(name string) error {
	if err := a.lockOp(); err != nil {
		return err
	}
	defer a.op.Unlock()
	addr, fp, err := a.failpointTarget(name)
	if err != nil {
		return err
	}
	if fp.Term == "" {
		return nil
	}
	return disarm(addr, fp)
}

// disarm disarms fp on etcd's failpoint server at addr.
func disarm(addr string, fp wire.Failpoint) error {
	code, body, err := failpointRequest(addr, http.MethodDelete, "/"+fp.Name, "")
	if err != nil {
		return err
	}
	// gofail answers 400 "failpoint is disabled" for one disarmed since
	// the list was read: the caller's wish is met.
	if code != http.StatusNoContent && code != http.StatusOK && !strings.Contains(body, "disabled") {
		return fmt.Errorf("failpoint %q: disarm: etcd answered %d: %s", fp.Name, code, body)
	}
	plog.Infof("disarmed failpoint %s (was %s)", fp.Name, fp.Term)
	return nil
}

// armedFailpoints returns the failpoints armed in the running etcd and
// the address of its failpoint server; none if this etcd has no
// failpoints or is not running. a.op held.
func (a *Agent) armedFailpoints() ([]wire.Failpoint, string) {
	if !a.fp.ok {
		return nil, ""
	}
	addr, err := a.failpointAddr()
	if err != nil {
		return nil, "" // not running: nothing is armed
	}
	fps, err := listFailpoints(addr)
	if err != nil {
		plog.Errorf("fault lease: listing the armed failpoints: %v", err)
		return nil, ""
	}
	var armed []wire.Failpoint
	for _, fp := range fps {
		if fp.Term != "" {
			armed = append(armed, fp)
		}
	}
	return armed, addr
}

// FailpointCount returns how many times the term of the armed failpoint
// name has acted since it was armed. gofail keeps the count with the term:
// disarming (or re-arming) the failpoint forgets it, and a disarmed one has
// none, which is an error here rather than a 0 that could be mistaken for
// "armed but never reached".
func (a *Agent) FailpointCount(name string) (int, error) {
	if err := a.lockOp(); err != nil {
		return 0, err
	}
	defer a.op.Unlock()
	addr, fp, err := a.failpointTarget(name)
	if err != nil {
		return 0, err
	}
	if fp.Term == "" {
		return 0, fmt.Errorf("failpoint %q is not armed: gofail counts only while a failpoint is armed (read the count before disarming)", name)
	}
	code, body, err := failpointRequest(addr, http.MethodGet, "/"+name+"/count", "")
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("failpoint %q: count: etcd answered %d: %s", name, code, body)
	}
	n, err := strconv.Atoi(body)
	if err != nil {
		return 0, fmt.Errorf("failpoint %q: count: etcd answered %q, not a number", name, body)
	}
	return n, nil
}

var validFailpointName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// validateFailpointName checks the form of a name (gofail names are Go
// identifiers); whether the binary has it is checked against its list.
func validateFailpointName(name string) error {
	if !validFailpointName.MatchString(name) {
		return fmt.Errorf("failpoint name %q: want a Go identifier of 1 to 128 characters (A-Z a-z 0-9 _, not starting with a digit), as listed by RPCFailpoints", name)
	}
	return nil
}

// failpointTerm is one term of a chain: modifiers, an action, a value.
var failpointTerm = regexp.MustCompile(`^((?:[0-9]+\*|[0-9]+(?:\.[0-9]+)?%)*)([a-z]+)(\(.*\))?$`)

var (
	failpointMod = regexp.MustCompile(`[0-9]+\*|[0-9]+(?:\.[0-9]+)?%`)
	// returnValue is what gofail parses back exactly: an integer in its
	// shortest form (gofail re-prints it to find where it ended), a bool,
	// or a quoted string without escapes.
	returnValue = regexp.MustCompile(`^(\(\)|\((0|-?[1-9][0-9]{0,17})\)|\(true\)|\(false\)|\("[A-Za-z0-9 _.:/-]{0,100}"\))?$`)
	// sleepMs is sleep's value, whole milliseconds in their shortest form.
	sleepMs = regexp.MustCompile(`^\((0|[1-9][0-9]{0,8})\)$`)
	// panicValue is the message of panic("..."), which etcd's log shows as
	// "panic: failpoint panic: MESSAGE"; a bare panic logs "failpoint
	// panic: {}" (gofail v0.2.0), without the failpoint's name.
	panicValue = regexp.MustCompile(`^\("[A-Za-z0-9 _.:/-]{1,100}"\)$`)
)

const termHelp = `want gofail's [N*][P.P%]ACTION with ACTION one of panic, panic("MESSAGE"), sleep(ms), return, return(v), print, off (e.g. "panic", "sleep(100)", "1*panic", "50.0%return(true)"), optionally chained with "->"`

// validateFailpointTerm checks a term before it reaches etcd: gofail's own
// parser prints to etcd's log and answers only "could not parse".
func validateFailpointTerm(term string) error {
	if term == "" {
		return errors.New("term is empty: " + termHelp)
	}
	if len(term) > wire.MaxFailpointTerm {
		return fmt.Errorf("term of %d bytes: at most %d allowed", len(term), wire.MaxFailpointTerm)
	}
	chain := strings.Split(term, "->")
	if len(chain) > maxFailpointChain {
		return fmt.Errorf("term %q chains %d terms: at most %d allowed", term, len(chain), maxFailpointChain)
	}
	for _, t := range chain {
		if err := validateOneTerm(t); err != nil {
			return fmt.Errorf("term %q: %w", term, err)
		}
	}
	return nil
}

func validateOneTerm(t string) error {
	m := failpointTerm.FindStringSubmatch(t)
	if m == nil {
		return fmt.Errorf("%q is not a term: %s", t, termHelp)
	}
	mods, action, value := m[1], m[2], m[3]
	for _, mod := range failpointMod.FindAllString(mods, -1) {
		if n, ok := strings.CutSuffix(mod, "*"); ok {
			if c, err := strconv.Atoi(n); err != nil || c < 1 || c > 1_000_000_000 {
				return fmt.Errorf("modifier %q: want N* with N in 1..1000000000", mod)
			}
			continue
		}
		if !strings.Contains(mod, ".") {
			// gofail v0.2.0 reads a whole number as a count and then
			// wants "*": "50%" does not parse.
			return fmt.Errorf("modifier %q: gofail reads a whole number as a count (N*): write the percentage with a decimal point, e.g. %s.0%%", mod, strings.TrimSuffix(mod, "%"))
		}
		p, err := strconv.ParseFloat(strings.TrimSuffix(mod, "%"), 64)
		if err != nil || p <= 0 || p > 100 {
			return fmt.Errorf("modifier %q: want P%% with P in (0, 100] and a decimal point, e.g. 50.0%%", mod)
		}
	}
	switch action {
	case "panic":
		if value != "" && !panicValue.MatchString(value) {
			return fmt.Errorf("%q: want panic or panic(\"STRING\") (A-Z a-z 0-9 space _ . : / -)", t)
		}
	case "print", "off":
		if value != "" {
			return fmt.Errorf("%q: %s takes no value", t, action)
		}
	case "sleep":
		m := sleepMs.FindStringSubmatch(value)
		var n int
		if m != nil {
			n, _ = strconv.Atoi(m[1])
		}
		if m == nil || time.Duration(n)*time.Millisecond > wire.MaxFailpointSleep {
			return fmt.Errorf("%q: want sleep(ms) with ms a whole number in 0..%d", t, wire.MaxFailpointSleep.Milliseconds())
		}
	case "return":
		if !returnValue.MatchString(value) {
			return fmt.Errorf("%q: want return, return(), return(INTEGER), return(true), return(false) or return(\"STRING\") (A-Z a-z 0-9 space _ . : / -)", t)
		}
	case "break":
		return fmt.Errorf("%q: break runs gdb on etcd and is not allowed: %s", t, termHelp)
	default:
		return fmt.Errorf("%q: unknown action %q: %s", t, action, termHelp)
	}
	return nil
}

// The RPC adapters.

func (s *service) RPCFailpoints(_ wire.Empty, reply *[]wire.Failpoint) (err error) {
	defer s.log(wire.MethodFailpoints, &err)
	*reply, err = s.a.Failpoints()
	return err
}

func (s *service) RPCArmFailpoint(arg wire.ArmFailpoint, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodArmFailpoint, &err)
	return s.a.ArmFailpoint(arg.Name, arg.Term)
}

func (s *service) RPCDisarmFailpoint(name string, _ *wire.Empty) (err error) {
	defer s.log(wire.MethodDisarmFailpoint, &err)
	return s.a.DisarmFailpoint(name)
}

func (s *service) RPCFailpointCount(name string, count *int) (err error) {
	defer s.log(wire.MethodFailpointCount, &err)
	*count, err = s.a.FailpointCount(name)
	return err
}
