package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/etcd-functional/functional/agent/netfault"
	"github.com/etcd-functional/functional/agent/wire"
)

// resolveTimeout bounds the lookup of another member's peer host.
const resolveTimeout = 2 * time.Second

// outbound delays the member's own outbound peer connections: the nat
// redirect sends them through proxy (see package netfault). It exists
// only where the agent shares the member's network namespace and iptables
// works there; why says, for the log, why not elsewhere.
type outbound struct {
	redirect *netfault.OutboundRedirect // nil: no outbound delay here
	why      string                     // why redirect is nil, or why the last start got none
	proxy    *netfault.Proxy            // non-nil while the redirect is installed
	ports    []int                      // the other members' peer ports it redirects
}

// initOutbound decides whether the member's outbound peer connections can
// be delayed here. It needs the iptables backend run by the agent's own "iptables" (with
// IPTablesCommand the rules apply to another namespace than the one the
// agent's sockets live in, where a REDIRECT to its proxy cannot work) and
// the nat table.
func (a *Agent) initOutbound() error {
	ipt, ok := a.isolator.(*netfault.IPTables)
	if !ok {
		a.out.why = "network faults go through the peer proxy, without iptables to redirect etcd's own connections"
		return nil
	}
	r := netfault.NewOutboundRedirect(ipt)
	err := r.Available()
	if err == nil {
		err = netfault.CanMark()
	}
	if err != nil {
		a.out.why = err.Error()
		plog.Warningf("latency will delay only connections into the member: %v", err)
		return nil
	}
	if len(a.cfg.IPTablesCommand) > 0 {
		a.out.why = fmt.Sprintf("iptables runs as %q, in another namespace than the agent's sockets", a.cfg.IPTablesCommand)
		return nil
	}
	a.out.redirect = r
	return nil
}

// removeStaleOutbound removes a redirect an earlier agent left behind,
// which sends etcd's new peer connections to a port no one serves, unless
// recover has already replaced it (in place, without a gap through which
// the adopted etcd could connect around the proxy) for the etcd it
// adopted.
func (a *Agent) removeStaleOutbound() error {
	if a.out.redirect == nil || a.out.proxy != nil {
		return nil
	}
	if err := a.out.redirect.Reset(); err != nil {
		return fmt.Errorf("remove a leftover outbound redirect: %w", err)
	}
	return nil
}

// ensureOutboundLocked installs (or keeps) the outbound redirect and proxy
// for a member started with args, or removes them if it gets none; a.mu
// held. It runs before etcd starts, so that etcd's first peer connections,
// which live as long as it does, already go through the proxy.
func (a *Agent) ensureOutboundLocked(args etcdArgs) error {
	if a.out.redirect == nil {
		return nil
	}
	if _, _, ok, err := args.peerProxyAddrs(); err != nil || !ok {
		a.closeOutboundLocked() // no inbound proxy, no latency: ensureProxy reports err
		return nil
	}
	ports, why := otherPeerPorts(args)
	if why != "" {
		if a.out.why != why {
			plog.Warningf("latency will delay only connections into the member: %s", why)
		}
		a.out.why = why
		a.closeOutboundLocked()
		return nil
	}
	a.out.why = ""
	if a.out.proxy == nil {
		px, err := netfault.NewOutboundProxy()
		if err != nil {
			return err
		}
		if err := px.SetLatency(a.latency, a.jitter); err != nil {
			px.Close()
			return err
		}
		a.out.proxy = px
	}
	if err := a.out.redirect.Install(ports, a.out.proxy.Addr().(*net.TCPAddr).Port); err != nil {
		a.closeOutboundLocked()
		return fmt.Errorf("redirect etcd's outbound peer connections: %w", err)
	}
	a.out.ports = ports
	return nil
}

// closeOutboundLocked removes the redirect, then closes the proxy (in that
// order, so that no new connection is sent to a closed port); a.mu held.
func (a *Agent) closeOutboundLocked() {
	if a.out.proxy == nil {
		return
	}
	if err := a.out.redirect.Reset(); err != nil {
		plog.Errorf("remove the outbound redirect: %v", err)
	}
	if err := a.out.proxy.Close(); err != nil {
		plog.Warningf("close the outbound proxy: %v", err)
	}
	a.out.proxy, a.out.ports = nil, nil
}

// setOutboundLatencyLocked gives the outbound proxy, if any, the latency
// of the inbound one; a.mu held.
func (a *Agent) setOutboundLatencyLocked(latency, jitter time.Duration) error {
	if a.out.proxy == nil {
		return nil
	}
	if latency == 0 {
		return a.out.proxy.RemoveLatency()
	}
	return a.out.proxy.SetLatency(latency, jitter)
}

// delayInboundWhyLocked is wire.Status.DelayInboundWhy; a.mu held.
func (a *Agent) delayInboundWhyLocked() string {
	if a.delayDirectionsLocked() != wire.DelayInbound {
		return ""
	}
	if a.out.why == "" {
		return "the outbound redirect is not installed"
	}
	return a.out.why
}

// delayDirectionsLocked is wire.Status.DelayDirections; a.mu held.
func (a *Agent) delayDirectionsLocked() string {
	switch {
	case a.proxy == nil:
		return ""
	case a.out.proxy != nil:
		return wire.DelayBoth
	default:
		return wire.DelayInbound
	}
}

// otherPeerPorts returns the peer ports of the members of --initial-cluster
// other than --name, or why the member's outbound connections to them
// cannot be told apart by port: there are none, or one of them lives in
// this network namespace (its own connections would be caught too; as on
// loopback), or is IPv6 (the redirect is iptables, IPv4 only).
func otherPeerPorts(args etcdArgs) ([]int, string) {
	cluster, ok := args.lookup("initial-cluster")
	if !ok || cluster == "" {
		return nil, "no --initial-cluster: the other members' peer ports are unknown"
	}
	name, ok := args.lookup("name")
	if !ok {
		name = "default" // etcd's default
	}
	local, err := localAddrs()
	if err != nil {
		return nil, fmt.Sprintf("cannot list this host's addresses: %v", err)
	}
	var ports []int
	for entry := range strings.SplitSeq(cluster, ",") {
		member, u, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Sprintf("--initial-cluster entry %q: want name=URL", entry)
		}
		if member == name {
			continue
		}
		host, port, err := firstURLHostPort(u)
		if err != nil {
			return nil, fmt.Sprintf("--initial-cluster member %s: %v", member, err)
		}
		addrs, err := resolve(host)
		if err != nil {
			return nil, fmt.Sprintf("member %s: %v", member, err)
		}
		for _, ip := range addrs {
			switch {
			case ip.IsLoopback() || slices.Contains(local, ip):
				return nil, fmt.Sprintf("member %s (%s) is in this host's network namespace: a redirect by port would catch its connections too", member, host)
			case !ip.Is4():
				return nil, fmt.Sprintf("member %s (%s) has an IPv6 address: the redirect is IPv4 only", member, host)
			}
		}
		ports = append(ports, port)
	}
	if len(ports) == 0 {
		return nil, "no other member in --initial-cluster"
	}
	slices.Sort(ports)
	return slices.Compact(ports), ""
}

func resolve(host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, nil
}

func localAddrs() ([]netip.Addr, error) {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range ifaddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}
