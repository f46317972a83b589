// Package localnet builds a small network of hosts on one machine: one
// network namespace per host, each joined by a veth pair to a bridge of the
// network's own, with an address on a subnet of its own. Programs started in
// a host's namespace see their own loopback, their own ports and their own
// iptables, as on a separate machine, so every member can use the ordinary
// etcd ports and isolation can be real packet filtering.
//
// Nothing outside what a Net creates is touched: the only changes to the
// root namespace besides the bridge and the veths are a FORWARD rule that
// accepts traffic within the subnet (a Docker host's FORWARD policy is DROP,
// and with br_netfilter bridged traffic passes that chain) and an
// unreachable route for the subnet. Close removes all of it, and Remove
// clears what a killed run left behind. It needs root.
//
// The unreachable route keeps the subnet's traffic on this machine. It is
// installed before the bridge and removed after everything else, with a
// metric above the bridge's own route, so it carries nothing while the
// bridge is up; once the bridge is gone, a connect to a host's address
// fails here at once ("no route to host") instead of following the default
// route off the machine to whatever network owns those addresses there. A
// run killed before its teardown leaves the route in place, which is the
// safe way round: the next Create or Remove of that name takes it away.
package localnet

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Config says what network to build.
type Config struct {
	// Name prefixes everything the network creates: namespaces are
	// "<Name>-<i>", the bridge "<Name>-br", veths "<Name>-h<i>". It must be
	// 1 to 10 characters of [a-z0-9] so that interface names fit the
	// kernel's 15.
	Name string
	// Hosts is how many hosts (namespaces) to create, 1 to 200.
	Hosts int
	// Subnet is the IPv4 /24 (or larger) the hosts get addresses on; the
	// bridge takes the first address, host i the (i+2)th. The zero value
	// picks 10.213.X.0/24 with X derived from Name, so that networks of
	// different names do not clash.
	Subnet netip.Prefix
}

// Host is one host of a Net.
type Host struct {
	Namespace string
	Addr      netip.Addr
}

// Net is a network built by Create.
type Net struct {
	Name    string
	Subnet  netip.Prefix
	Gateway netip.Addr // the bridge's address in the root namespace
	Bridge  string
	Hosts   []Host
}

var validName = regexp.MustCompile(`^[a-z0-9]{1,10}$`)

// Validate reports what is wrong with c, if anything, and fills in the
// default subnet.
func (c *Config) Validate() error {
	if !validName.MatchString(c.Name) {
		return fmt.Errorf("localnet: name %q: want 1 to 10 characters of a-z and 0-9", c.Name)
	}
	if c.Hosts < 1 || c.Hosts > 200 {
		return fmt.Errorf("localnet: hosts %d: want 1 to 200", c.Hosts)
	}
	if !c.Subnet.IsValid() {
		h := fnv.New32a()
		h.Write([]byte(c.Name))
		c.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 213, byte(h.Sum32()%250 + 1), 0}), 24)
	}
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() > 24 || c.Subnet.Bits() < 8 {
		return fmt.Errorf("localnet: subnet %s: want an IPv4 prefix of /8 to /24", c.Subnet)
	}
	c.Subnet = c.Subnet.Masked()
	return nil
}

// Available reports nil if this process can build a Net: it runs as root and
// `ip netns` and iptables work. Otherwise the error says what is missing.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("localnet: needs root (network namespaces, veths and a bridge)")
	}
	if _, err := run("ip", "netns", "list"); err != nil {
		return fmt.Errorf("localnet: `ip netns` does not work: %w", err)
	}
	if _, err := run("iptables", "-w", "-S", "FORWARD"); err != nil {
		return fmt.Errorf("localnet: iptables does not work: %w", err)
	}
	return nil
}

// Create builds the network c describes. It first removes anything an
// earlier network of the same name left behind. On error, nothing of the new
// network is left.
func Create(c Config) (n *Net, err error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if err := Available(); err != nil {
		return nil, err
	}
	if err := Remove(c.Name); err != nil {
		return nil, err
	}
	if err := checkSubnetFree(c.Subnet); err != nil {
		return nil, err
	}
	n = &Net{Name: c.Name, Subnet: c.Subnet, Bridge: c.Name + "-br"}
	defer func() {
		if err != nil {
			n.Close()
			n = nil
		}
	}()
	n.Gateway = c.Subnet.Addr().Next()
	addr := n.Gateway
	for i := 0; i < c.Hosts; i++ {
		addr = addr.Next()
		if !c.Subnet.Contains(addr) {
			return nil, fmt.Errorf("localnet: subnet %s has no room for %d hosts", c.Subnet, c.Hosts)
		}
		n.Hosts = append(n.Hosts, Host{Namespace: fmt.Sprintf("%s-%d", c.Name, i), Addr: addr})
	}
	bits := strconv.Itoa(c.Subnet.Bits())
	steps := [][]string{
		{"ip", "route", "add", "unreachable", c.Subnet.String(), "metric", strconv.FormatUint(uint64(routeMetric(c.Name)), 10)},
		{"ip", "link", "add", n.Bridge, "type", "bridge"},
		{"ip", "addr", "add", n.Gateway.String() + "/" + bits, "dev", n.Bridge},
		{"ip", "link", "set", n.Bridge, "up"},
	}
	for _, rule := range n.forwardRules() {
		steps = append(steps, append([]string{"iptables", "-w", "-I", "FORWARD", "1"}, rule...))
	}
	for i, h := range n.Hosts {
		outer, inner := fmt.Sprintf("%s-h%d", c.Name, i), fmt.Sprintf("%s-n%d", c.Name, i)
		steps = append(steps,
			[]string{"ip", "netns", "add", h.Namespace},
			[]string{"ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", h.Namespace},
			[]string{"ip", "link", "set", outer, "master", n.Bridge},
			[]string{"ip", "link", "set", outer, "up"},
			[]string{"ip", "-n", h.Namespace, "link", "set", inner, "name", "eth0"},
			[]string{"ip", "-n", h.Namespace, "addr", "add", h.Addr.String() + "/" + bits, "dev", "eth0"},
			[]string{"ip", "-n", h.Namespace, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", h.Namespace, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if _, err := run(s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// forwardRules are the FORWARD rules (without the chain) that let the
// hosts talk to each other across the bridge, marked with a comment so that
// Remove finds them after a crash.
func (n *Net) forwardRules() [][]string {
	s := n.Subnet.String()
	comment := []string{"-m", "comment", "--comment", commentOf(n.Name)}
	return [][]string{
		append([]string{"-s", s, "-d", s}, append(comment, "-j", "ACCEPT")...),
	}
}

func commentOf(name string) string { return "localnet:" + name }

// Command returns a command that runs name with args inside host i's
// namespace. `ip netns exec` execs the program in place, so the command's
// process is the program itself and signals reach it directly.
func (n *Net) Command(i int, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Hosts[i].Namespace, name}, args...)...)
}

// Close removes the network: it kills any process still inside its
// namespaces, then deletes namespaces, veths, bridge and FORWARD rules. It
// is safe to call more than once.
func (n *Net) Close() error {
	return Remove(n.Name)
}

// Remove deletes everything a network named name created, whether by this
// process or by one that was killed. It is a no-op when nothing is there.
func Remove(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("localnet: name %q: want 1 to 10 characters of a-z and 0-9", name)
	}
	var errs []error
	namespaces, err := namespacesOf(name)
	if err != nil {
		errs = append(errs, err)
	}
	for _, ns := range namespaces {
		if err := killAll(ns); err != nil {
			errs = append(errs, err)
		}
		if _, err := run("ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	links, err := linksOf(name)
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		if _, err := run("ip", "link", "del", l); err != nil && linkExists(l) {
			errs = append(errs, err)
		}
	}
	if err := removeForwardRules(name); err != nil {
		errs = append(errs, err)
	}
	// Last, and only once the bridge is gone: until then the subnet's
	// traffic must not be able to leave the machine.
	if len(errs) == 0 {
		if err := removeRoutes(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// routeMetric is the metric of the unreachable route of the network named
// name. Routes carry no name, so the metric, derived from the name, is how
// Remove finds the route a killed run left; it is far above the 0 of the
// bridge's own route for the subnet, which therefore wins while it exists.
func routeMetric(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return 1_000_000 + h.Sum32()%1_000_000_000
}

// removeRoutes deletes the unreachable routes of the network named name.
func removeRoutes(name string) error {
	out, err := run("ip", "-o", "route", "show", "type", "unreachable")
	if err != nil {
		return err
	}
	metric := strconv.FormatUint(uint64(routeMetric(name)), 10)
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		// "unreachable 10.213.7.0/24 metric 123 ..."
		if len(f) < 2 || f[0] != "unreachable" {
			continue
		}
		if i := slices.Index(f, "metric"); i < 0 || i+1 >= len(f) || f[i+1] != metric {
			continue
		}
		if _, err := run("ip", "route", "del", "unreachable", f[1], "metric", metric); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// namespacesOf lists the namespaces named "<name>-<digits>".
func namespacesOf(name string) ([]string, error) {
	out, err := run("ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `-[0-9]+$`)
	var nss []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && re.MatchString(f[0]) {
			nss = append(nss, f[0])
		}
	}
	return nss, nil
}

// linksOf lists the root namespace's interfaces the network named name
// created: its bridge and the host ends of its veths.
func linksOf(name string) ([]string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("localnet: list interfaces: %w", err)
	}
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `-(br|h[0-9]+)$`)
	var links []string
	for _, i := range ifs {
		if re.MatchString(i.Name) {
			links = append(links, i.Name)
		}
	}
	return links, nil
}

func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

// killAll SIGKILLs every process left in namespace ns and waits, briefly,
// for them to be gone. A process left inside would keep the namespace alive
// after `ip netns del`.
func killAll(ns string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := run("ip", "netns", "pids", ns)
		if err != nil {
			return err
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("localnet: processes %v in namespace %s survived SIGKILL", pids, ns)
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeForwardRules deletes every FORWARD rule marked as the network's.
func removeForwardRules(name string) error {
	out, err := run("iptables", "-w", "-S", "FORWARD")
	if err != nil {
		return err
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		spec, ok := strings.CutPrefix(line, "-A FORWARD ")
		if !ok {
			continue
		}
		fields := strings.Fields(spec)
		for i := range fields {
			fields[i] = strings.Trim(fields[i], `"`)
		}
		if !slices.Contains(fields, commentOf(name)) {
			continue
		}
		if _, err := run("iptables", append([]string{"-w", "-D", "FORWARD"}, fields...)...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// checkSubnetFree fails if an address of the root namespace already lies in
// subnet: the new bridge's route would clash with it.
func checkSubnetFree(subnet netip.Prefix) error {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return fmt.Errorf("localnet: list addresses: %w", err)
	}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		if p.Overlaps(subnet) {
			return fmt.Errorf("localnet: subnet %s overlaps %s already on this machine; choose another", subnet, p)
		}
	}
	return nil
}

// run runs a command and returns its output; the error names the command
// and carries its stderr.
func run(name string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("localnet: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
