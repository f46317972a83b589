// Package freeport hands out TCP ports for the servers that tests start:
// etcd members, agents and their peer proxies.
//
// A port the kernel picked for a listener on port 0 lies in the ephemeral
// range, where any outgoing connection may take it as its local port in
// the moment between the test closing its probe listener and the server
// binding it ("address already in use", seen on a busy CI machine). The
// ports handed out here lie below that range, are free on every interface
// when handed out, and are never handed out twice by one process.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// The ports are taken from [low, ephemeralLow()).
const low = 20000

var (
	mu    sync.Mutex
	given = map[int]bool{}
	// Processes that run at once start at different places.
	next = low + rand.IntN(8000)
)

// Take returns n groups of span consecutive free ports, flattened: with
// span 3, ports[3i], ports[3i+1] and ports[3i+2] are consecutive.
func Take(n, span int) ([]int, error) {
	if n < 1 || span < 1 {
		return nil, fmt.Errorf("freeport: %d groups of %d ports: want at least 1 of 1", n, span)
	}
	mu.Lock()
	defer mu.Unlock()
	high := ephemeralLow()
	var out []int
	for tried := 0; len(out) < n*span; tried++ {
		if tried > high-low {
			return nil, fmt.Errorf("freeport: no %d groups of %d free ports in %d..%d", n, span, low, high-1)
		}
		if next+span > high {
			next = low
		}
		p := next
		next++
		if usable(p, span) {
			for k := range span {
				given[p+k] = true
				out = append(out, p+k)
			}
			next = p + span
		}
	}
	return out, nil
}

// usable reports whether ports p..p+span-1 are neither handed out nor
// reserved by this project's fixed ports, and can be bound on every
// interface now.
func usable(p, span int) bool {
	for k := range span {
		if given[p+k] || reserved(p+k) {
			return false
		}
	}
	for k := range span {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(p+k))
		if err != nil {
			return false
		}
		ln.Close()
	}
	return true
}

// reserved are the fixed ports of this project (an agent's 9027, the
// tester's 9028, and etcd's 2379-2381 after a digit, as `make run` uses on
// loopback), so that a test never takes one that a run may want.
func reserved(p int) bool {
	switch p % 10000 {
	case 2379, 2380, 2381, 9027, 9028:
		return true
	}
	return false
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > low+100 {
				return v
			}
		}
	}
	return 32768
}
