package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestTakeGivesConsecutiveFreePortsBelowTheEphemeralRange(t *testing.T) {
	ports, err := Take(4, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 12 {
		t.Fatalf("got %d ports, want 12", len(ports))
	}
	seen := map[int]bool{}
	for i, p := range ports {
		if p < low || p >= ephemeralLow() {
			t.Errorf("port %d outside %d..%d", p, low, ephemeralLow()-1)
		}
		if i%3 != 0 && p != ports[i-1]+1 {
			t.Errorf("group %d not consecutive: %v", i/3, ports[i/3*3:i/3*3+3])
		}
		if seen[p] {
			t.Errorf("port %d handed out twice", p)
		}
		seen[p] = true
		if reserved(p) {
			t.Errorf("port %d is one of the project's fixed ports", p)
		}
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			t.Errorf("port %d is not free: %v", p, err)
			continue
		}
		ln.Close()
	}
	more, err := Take(1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if seen[more[0]] {
		t.Errorf("port %d handed out again", more[0])
	}
}

func TestTakeSkipsABusyPort(t *testing.T) {
	mu.Lock()
	p := next
	for reserved(p) || given[p] {
		p++
	}
	mu.Unlock()
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
	if err != nil {
		t.Skipf("port %d is busy already: %v", p, err)
	}
	defer ln.Close()
	ports, err := Take(1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if ports[0] == p {
		t.Fatalf("Take handed out the busy port %d", p)
	}
}

func TestTakeRejectsNonsense(t *testing.T) {
	if _, err := Take(0, 3); err == nil {
		t.Error("Take(0, 3) succeeded")
	}
	if _, err := Take(1, 0); err == nil {
		t.Error("Take(1, 0) succeeded")
	}
}
