package netfault

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// OutboundMark is the socket mark (SO_MARK) of the outbound proxy's own
// connections; the redirect chain lets packets carrying it pass, so that
// the proxy's dial to the original destination is not redirected back to
// the proxy. Its bits avoid the ones Kubernetes (0x4000, 0x8000) and
// Docker use.
const OutboundMark = 0x3e7c

// soOriginalDst is SO_ORIGINAL_DST of <linux/netfilter_ipv4.h>: the
// destination a connection had before the nat table rewrote it.
const soOriginalDst = 80

// NewOutboundProxy is the proxy for the member's own outbound peer
// connections. It listens on 127.0.0.1 (a port of the kernel's choosing)
// and is reached only through an OutboundRedirect: each accepted
// connection is forwarded to its original destination (SO_ORIGINAL_DST),
// dialled with OutboundMark. Latency and Close work as on any Proxy; it is
// not meant as an Isolator (iptables isolates where it is used).
func NewOutboundProxy() (*Proxy, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("netfault: outbound proxy listen: %w", err)
	}
	return newOutboundProxy(ln, MarkedDialer(OutboundMark)), nil
}

// DialFunc dials a TCP address; see MarkedDialer.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// MarkedDialer dials with SO_MARK set to mark on the socket (which needs
// CAP_NET_ADMIN) and the proxy's dial timeout.
func MarkedDialer(mark int) DialFunc {
	d := net.Dialer{
		Timeout: proxyDialTimeout,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("set SO_MARK %#x: %w", mark, serr)
			}
			return nil
		},
	}
	return d.DialContext
}

// CanMark reports why this process cannot set OutboundMark on a socket
// (SO_MARK needs CAP_NET_ADMIN), if it cannot: without the mark every dial
// of the outbound proxy would be redirected back to it.
func CanMark() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netfault: socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, OutboundMark); err != nil {
		return fmt.Errorf("netfault: set SO_MARK (needs CAP_NET_ADMIN): %w", err)
	}
	return nil
}

// newOutboundProxy serves ln as the outbound proxy, dialling with dial
// (tests dial inside a network namespace).
func newOutboundProxy(ln net.Listener, dial DialFunc) *Proxy {
	self := ln.Addr().(*net.TCPAddr).AddrPort()
	return newProxy(ln, "original destinations", func(ctx context.Context, client net.Conn) (net.Conn, error) {
		dst, err := OriginalDst(client)
		if err != nil {
			return nil, err
		}
		// A connection dialled to the proxy itself was not redirected:
		// forwarding it would dial the proxy again, without end.
		if dst.Port() == self.Port() && (dst.Addr().Unmap() == self.Addr().Unmap() || dst.Addr().IsLoopback()) {
			return nil, fmt.Errorf("connection from %s was not redirected (its destination is the proxy itself)", client.RemoteAddr())
		}
		return dial(ctx, "tcp", dst.String())
	})
}

// OriginalDst returns the destination c was dialled to before a REDIRECT
// or DNAT rule rewrote it (IPv4 only: ip6tables would need
// IP6T_SO_ORIGINAL_DST). For a connection no rule rewrote it is c's own
// local address.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("netfault: %T has no file descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var m *unix.IPv6Mreq // 20 bytes: room for the 16 of a sockaddr_in
	var serr error
	if err := rc.Control(func(fd uintptr) {
		m, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst)
	}); err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("netfault: SO_ORIGINAL_DST of %s: %w", c.RemoteAddr(), serr)
	}
	// struct sockaddr_in: family (host order), port (network order), addr.
	b := m.Multiaddr[:]
	if fam := binary.NativeEndian.Uint16(b[0:2]); fam != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("netfault: SO_ORIGINAL_DST of %s: address family %d, want AF_INET", c.RemoteAddr(), fam)
	}
	addr := netip.AddrFrom4([4]byte(b[4:8]))
	return netip.AddrPortFrom(addr, binary.BigEndian.Uint16(b[2:4])), nil
}

// OutboundRedirect sends the member's own outbound connections to the peer
// ports of the other members through the outbound proxy, with rules in the
// nat table's OUTPUT hook of the namespace iptables works on (which must
// be the member's and the proxy's own: REDIRECT rewrites the destination
// to a local address). Its rules live in a chain of the nat table with the
// IPTables' chain name (tables keep separate chains), jumped to first from
// OUTPUT:
//
//	-A CHAIN -m mark --mark 0x3e7c -j RETURN            the proxy's own dials
//	-A CHAIN -m addrtype --dst-type LOCAL -j RETURN     this host's addresses
//	-A CHAIN -p tcp -m tcp --dport P -j REDIRECT --to-ports X   per peer port P
//
// The nat table is consulted on a connection's first packet only, so a
// rule affects the connections opened after it: the redirect is in place
// before etcd starts, not only while a delay is set. Methods are safe for
// concurrent use.
type OutboundRedirect struct {
	ipt *IPTables
	mu  sync.Mutex
}

// NewOutboundRedirect returns the redirect of ipt's chain and command.
func NewOutboundRedirect(ipt *IPTables) *OutboundRedirect {
	return &OutboundRedirect{ipt: ipt}
}

// Available reports why the nat table cannot be used, if it cannot.
func (r *OutboundRedirect) Available() error {
	if _, err := r.nat("-S"); err != nil {
		return fmt.Errorf("netfault: iptables cannot read the nat table: %w", err)
	}
	return nil
}

// Install makes the chain redirect new TCP connections to any of ports
// (other than to this host's own addresses, and other than the proxy's
// own) to toPort on this host. Rules already as wanted are left alone, so
// that installing twice changes nothing. Other rules, such as a dead
// agent's redirect to its port, are replaced without a gap: the new
// redirect is added before the old one goes, so that no connection made
// meanwhile bypasses the proxy (for as long as it lives).
func (r *OutboundRedirect) Install(ports []int, toPort int) error {
	if len(ports) == 0 {
		return errors.New("netfault: redirect: no ports")
	}
	for _, p := range append(slices.Clone(ports), toPort) {
		if err := checkPort(p); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.state()
	if err != nil {
		return err
	}
	chain := r.ipt.chain
	if !st.chains[chain] {
		if _, err := r.nat("-N", chain); err != nil {
			return fmt.Errorf("netfault: redirect: create chain %s: %w", chain, err)
		}
	}
	want := redirectRules(ports, toPort)
	have := st.rules[chain]
	// The exemptions first, at the top, then the redirects, then away
	// with whatever else the chain holds.
	for i, rule := range want {
		if slices.Contains(have, strings.Join(rule, " ")) {
			continue
		}
		args := append([]string{"-A", chain}, rule...)
		if i < 2 {
			args = append([]string{"-I", chain, strconv.Itoa(i + 1)}, rule...)
		}
		if _, err := r.nat(args...); err != nil {
			return fmt.Errorf("netfault: redirect: %w", err)
		}
	}
	for _, rule := range have {
		if slices.Contains(joinRules(want), rule) {
			continue
		}
		if _, err := r.nat(append([]string{"-D", chain}, strings.Fields(rule)...)...); err != nil && !isNotExist(err) {
			return fmt.Errorf("netfault: redirect: remove stale rule %q: %w", rule, err)
		}
	}
	if !st.has("OUTPUT", []string{"-j", chain}) {
		if _, err := r.nat("-I", "OUTPUT", "1", "-j", chain); err != nil {
			return fmt.Errorf("netfault: redirect: jump from OUTPUT to %s: %w", chain, err)
		}
	}
	if !slices.Equal(have, joinRules(want)) {
		plog.Infof("iptables: outbound TCP to ports %v redirected to 127.0.0.1:%d (nat chain %s)", ports, toPort, chain)
	}
	return nil
}

// Reset removes the jumps to the chain and the chain, also when an earlier
// agent process left them; what is already gone is not an error.
func (r *OutboundRedirect) Reset() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.state()
	if err != nil {
		return err
	}
	chain := r.ipt.chain
	var errs []error
	for _, hook := range st.order {
		for _, rule := range st.rules[hook] {
			if !targets(rule, chain) {
				continue
			}
			if _, err := r.nat(append([]string{"-D", hook}, strings.Fields(rule)...)...); err != nil && !isNotExist(err) {
				errs = append(errs, fmt.Errorf("netfault: remove nat jump from %s to %s: %w", hook, chain, err))
			}
		}
	}
	if st.chains[chain] {
		for _, op := range []string{"-F", "-X"} {
			if _, err := r.nat(op, chain); err != nil && !isNotExist(err) {
				errs = append(errs, fmt.Errorf("netfault: remove nat chain %s: %w", chain, err))
				break
			}
		}
		plog.Infof("iptables: removed nat chain %s (outbound redirect)", chain)
	}
	return errors.Join(errs...)
}

func (r *OutboundRedirect) nat(args ...string) (string, error) {
	return r.ipt.run(r.ipt.command, append([]string{"-t", "nat"}, args...)...) // IPv4 only: see the package comment
}

// state reads the nat table, parsed as IPTables.state parses the filter.
func (r *OutboundRedirect) state() (filterState, error) {
	out, err := r.nat("-S")
	if err != nil {
		return filterState{}, fmt.Errorf("netfault: list nat rules: %w", err)
	}
	return parseRules(out), nil
}

// parseRules parses iptables -S output.
func parseRules(out string) filterState {
	st := filterState{chains: map[string]bool{}, rules: map[string][]string{}}
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "-N":
			st.chains[f[1]] = true
		case len(f) >= 2 && f[0] == "-A":
			if _, ok := st.rules[f[1]]; !ok {
				st.order = append(st.order, f[1])
			}
			st.rules[f[1]] = append(st.rules[f[1]], strings.Join(f[2:], " "))
		}
	}
	return st
}

// redirectRules are the chain's rules as iptables -S prints them.
func redirectRules(ports []int, toPort int) [][]string {
	rules := [][]string{
		{"-m", "mark", "--mark", fmt.Sprintf("%#x", OutboundMark), "-j", "RETURN"},
		{"-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN"},
	}
	ports = slices.Clone(ports)
	slices.Sort(ports)
	for _, p := range slices.Compact(ports) {
		rules = append(rules, []string{"-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(p), "-j", "REDIRECT", "--to-ports", strconv.Itoa(toPort)})
	}
	return rules
}

func joinRules(rules [][]string) []string {
	var out []string
	for _, r := range rules {
		out = append(out, strings.Join(r, " "))
	}
	return out
}
