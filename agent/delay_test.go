package agent

import (
	"slices"
	"strings"
	"testing"
)

// TestOtherPeerPorts checks which members' connections the outbound
// redirect may take by port: only members on other hosts, over IPv4.
func TestOtherPeerPorts(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		want    []int
		wantWhy string
	}{
		{"OthersOnOtherHosts", []string{"--name", "a", "--initial-cluster", "a=http://198.18.0.1:2380,b=http://198.18.0.2:2380,c=http://198.18.0.3:12380"}, []int{2380, 12380}, ""},
		{"DefaultName", []string{"--initial-cluster=default=http://198.18.0.1:2380,b=http://198.18.0.2:2390"}, []int{2390}, ""},
		{"SharedLoopback", []string{"--name", "a", "--initial-cluster", "a=http://127.0.0.1:12380,b=http://127.0.0.1:22380"}, nil, "this host's network namespace"},
		{"LocalhostByName", []string{"--name", "a", "--initial-cluster", "a=http://198.18.0.1:2380,b=http://localhost:2380"}, nil, "this host's network namespace"},
		{"IPv6", []string{"--name", "a", "--initial-cluster", "a=http://198.18.0.1:2380,b=http://[2001:db8::2]:2380"}, nil, "IPv6"},
		{"NoCluster", []string{"--name", "a"}, nil, "no --initial-cluster"},
		{"Alone", []string{"--name", "a", "--initial-cluster", "a=http://198.18.0.1:2380"}, nil, "no other member"},
		{"BadEntry", []string{"--name", "a", "--initial-cluster", "a=http://198.18.0.1:2380,b"}, nil, "want name=URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := otherPeerPorts(etcdArgs(tc.args))
			if !slices.Equal(got, tc.want) || (tc.wantWhy == "") != (why == "") || !strings.Contains(why, tc.wantWhy) {
				t.Errorf("otherPeerPorts(%q) = %v, %q; want %v, %q", tc.args, got, why, tc.want, tc.wantWhy)
			}
		})
	}
}
