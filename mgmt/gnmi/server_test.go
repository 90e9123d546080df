package gnmi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	gpb "github.com/openconfig/gnmi/proto/gnmi"
	goyang "github.com/openconfig/goyang/pkg/yang"
	"github.com/openconfig/ygot/ygot"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/datapath/route"
	"portico.dev/appliance/mgmt/yang"
)

// fakeState is a State with fixed contents; it counts what a Get reads.
type fakeState struct {
	neighbors []bgp.NeighborState
	routes    []bgp.Learned
	kernel    []route.TableRoute
	kernelErr error
	vips      []VIP
	reads     map[string]int
}

func (f *fakeState) Neighbors() []bgp.NeighborState { f.reads["neighbors"]++; return f.neighbors }
func (f *fakeState) BGPRoutes() []bgp.Learned       { f.reads["bgp-routes"]++; return f.routes }
func (f *fakeState) KernelRoutes(context.Context) ([]route.TableRoute, error) {
	f.reads["kernel"]++
	return f.kernel, f.kernelErr
}
func (f *fakeState) VIPs(context.Context) ([]VIP, error) { f.reads["vips"]++; return f.vips, nil }

var (
	node1    = netip.MustParseAddr("192.0.2.11")
	node2    = netip.MustParseAddr("192.0.2.12")
	upstream = netip.MustParseAddr("2001:db8::1")
)

func newFake() *fakeState {
	return &fakeState{
		reads: map[string]int{},
		neighbors: []bgp.NeighborState{
			{Name: "node1", Address: node1, ASN: 65001, Role: bgp.Node, State: "established", Uptime: 90 * time.Second,
				Received: 3, Accepted: 2, Rejected: 1, BFD: "up", GracefulRestart: true},
			// node2 restarts: its session is down, its route kept stale.
			{Name: "node2", Address: node2, ASN: 65002, Role: bgp.Node, State: "active", LastError: "hold timer expired",
				Received: 1, Accepted: 1, BFD: "disabled", Restarting: true, Stale: 1},
			{Name: "up1", Address: upstream, ASN: 64512, Role: bgp.Upstream, State: "established", Uptime: time.Hour, Advertised: 4,
				BFD: "admin-down", Unprotected: true, GracefulRestart: true},
		},
		routes: []bgp.Learned{
			{Prefix: netip.MustParsePrefix("203.0.113.10/32"), NextHops: []netip.Addr{node1}},
			{Prefix: netip.MustParsePrefix("203.0.113.20/32"), NextHops: []netip.Addr{node1, node2}},
		},
		kernel: []route.TableRoute{
			{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Protocol: "kernel", Type: "unicast",
				NextHops: []route.TableNextHop{{Interface: "eth0", Weight: 1}}},
			{Prefix: netip.MustParsePrefix("203.0.113.20/32"), Protocol: "bgp", Type: "unicast", Metric: 20,
				NextHops: []route.TableNextHop{{Addr: node1, Interface: "eth0", Weight: 1}, {Addr: node2, Interface: "eth0", Weight: 1}}},
			{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Protocol: "static", Type: "blackhole"},
			{Prefix: netip.MustParsePrefix("fe80::/64"), Protocol: "kernel", Type: "unicast", Metric: 256,
				NextHops: []route.TableNextHop{{Interface: "eth0", Weight: 1}}},
			{Prefix: netip.MustParsePrefix("fe80::/64"), Protocol: "kernel", Type: "unicast", Metric: 256,
				NextHops: []route.TableNextHop{{Interface: "eth1", Weight: 1}}},
		},
		vips: []VIP{
			{Name: "web", Address: netip.MustParseAddr("203.0.113.10"), Port: 80, Protocol: "tcp", Scheduler: "maglev",
				Counters: Counters{Packets: 1 << 40, Bytes: 5},
				Backends: []Backend{
					{Address: netip.MustParseAddrPort("10.0.1.11:8080"), Weight: 1, Health: HealthUp, Counters: Counters{Packets: 7, Bytes: 700}},
					{Address: netip.MustParseAddrPort("10.0.1.12:8080"), Weight: 2, Health: HealthDown},
				}},
			{Name: "dns", Address: netip.MustParseAddr("2001:db8::53"), Port: 53, Protocol: "udp", Scheduler: "round-robin", SNAT: true,
				Backends: []Backend{{Address: netip.MustParseAddrPort("[2001:db8:1::53]:53"), Weight: 1, Health: HealthUnchecked}}},
		},
	}
}

// now is the fake clock: last-established is now minus the uptime.
var now = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func newServer(st State) *Server {
	s := New(st, slog.New(slog.DiscardHandler))
	s.root = model(st, func() time.Time { return now })
	return s
}

const bgpNeighbors = "/network-instances/network-instance[name=default]/protocols/protocol[identifier=BGP][name=BGP]/bgp/neighbors"

// get runs a Get of paths (in origin) and renders the answer as one line
// per leaf: origin:path = JSON.
func get(t *testing.T, s *Server, origin string, dt gpb.GetRequest_DataType, paths ...string) (string, error) {
	t.Helper()
	req := &gpb.GetRequest{Prefix: &gpb.Path{Origin: origin}, Encoding: gpb.Encoding_JSON_IETF, Type: dt}
	for _, p := range paths {
		gp, err := ygot.StringToStructuredPath(p)
		if err != nil {
			t.Fatalf("path %s: %v", p, err)
		}
		req.Path = append(req.Path, gp)
	}
	resp, err := s.Get(context.Background(), req)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, n := range resp.GetNotification() {
		for _, u := range n.GetUpdate() {
			p, err := ygot.PathToString(u.GetPath())
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s:%s = %s\n", n.GetPrefix().GetOrigin(), p, u.GetVal().GetJsonIetfVal())
		}
	}
	return b.String(), nil
}

func TestGet(t *testing.T) {
	nb := "openconfig:" + bgpNeighbors
	tests := []struct {
		name   string
		origin string
		dt     gpb.GetRequest_DataType
		paths  []string
		want   string
		// reads are the parts of State the Get may read.
		reads []string
	}{
		{
			name:  "one neighbor's session state",
			paths: []string{bgpNeighbors + "/neighbor[neighbor-address=192.0.2.11]/state/session-state"},
			want:  nb + "/neighbor[neighbor-address=192.0.2.11]/state/session-state = \"ESTABLISHED\"\n",
			reads: []string{"neighbors"},
		},
		{
			name:   "identity keys with their module prefix, and an IPv6 key in another spelling",
			origin: "openconfig",
			paths: []string{"/network-instances/network-instance[name=default]/protocols/protocol[identifier=openconfig-policy-types:BGP][name=BGP]/bgp/neighbors" +
				"/neighbor[neighbor-address=2001:DB8:0::1]/afi-safis/afi-safi[afi-safi-name=openconfig-bgp-types:IPV6_UNICAST]/state/prefixes/sent"},
			want:  nb + "/neighbor[neighbor-address=2001:db8::1]/afi-safis/afi-safi[afi-safi-name=IPV6_UNICAST]/state/prefixes/sent = 4\n",
			reads: []string{"neighbors"},
		},
		{
			name:  "every neighbor's session state and AS through a key wildcard",
			paths: []string{bgpNeighbors + "/neighbor[neighbor-address=*]/state/session-state", bgpNeighbors + "/neighbor/config/peer-as"},
			want: nb + "/neighbor[neighbor-address=192.0.2.11]/state/session-state = \"ESTABLISHED\"\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/state/session-state = \"ACTIVE\"\n" +
				nb + "/neighbor[neighbor-address=2001:db8::1]/state/session-state = \"ESTABLISHED\"\n" +
				nb + "/neighbor[neighbor-address=192.0.2.11]/config/peer-as = 65001\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/config/peer-as = 65002\n" +
				nb + "/neighbor[neighbor-address=2001:db8::1]/config/peer-as = 64512\n",
			reads: []string{"neighbors"},
		},
		{
			name:  "prefixes of every neighbor: installed counts the routes through it",
			paths: []string{bgpNeighbors + "/neighbor/afi-safis/afi-safi/state/prefixes"},
			want: nb + "/neighbor[neighbor-address=192.0.2.11]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/state/prefixes/received = 2\n" +
				nb + "/neighbor[neighbor-address=192.0.2.11]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/state/prefixes/received-pre-policy = 3\n" +
				nb + "/neighbor[neighbor-address=192.0.2.11]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/state/prefixes/installed = 2\n" +
				nb + "/neighbor[neighbor-address=192.0.2.11]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/state/prefixes/sent = 0\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/state/prefixes/received = 1\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/state/prefixes/received-pre-policy = 1\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/state/prefixes/installed = 1\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/state/prefixes/sent = 0\n" +
				nb + "/neighbor[neighbor-address=2001:db8::1]/afi-safis/afi-safi[afi-safi-name=IPV6_UNICAST]/state/prefixes/received = 0\n" +
				nb + "/neighbor[neighbor-address=2001:db8::1]/afi-safis/afi-safi[afi-safi-name=IPV6_UNICAST]/state/prefixes/received-pre-policy = 0\n" +
				nb + "/neighbor[neighbor-address=2001:db8::1]/afi-safis/afi-safi[afi-safi-name=IPV6_UNICAST]/state/prefixes/installed = 0\n" +
				nb + "/neighbor[neighbor-address=2001:db8::1]/afi-safis/afi-safi[afi-safi-name=IPV6_UNICAST]/state/prefixes/sent = 4\n",
			reads: []string{"neighbors", "bgp-routes"},
		},
		{
			name:  "a neighbor's state subtree; last-established only when established, in nanoseconds as a string",
			paths: []string{bgpNeighbors + "/neighbor[neighbor-address=192.0.2.11]/state"},
			want: nb + "/neighbor[neighbor-address=192.0.2.11]/state/neighbor-address = \"192.0.2.11\"\n" +
				nb + "/neighbor[neighbor-address=192.0.2.11]/state/peer-as = 65001\n" +
				nb + "/neighbor[neighbor-address=192.0.2.11]/state/description = \"node1\"\n" +
				nb + "/neighbor[neighbor-address=192.0.2.11]/state/session-state = \"ESTABLISHED\"\n" +
				nb + fmt.Sprintf("/neighbor[neighbor-address=192.0.2.11]/state/last-established = \"%d\"\n", now.Add(-90*time.Second).UnixNano()),
			reads: []string{"neighbors"},
		},
		{
			name:  "CONFIG leaves of a neighbor, keys included",
			dt:    gpb.GetRequest_CONFIG,
			paths: []string{bgpNeighbors + "/neighbor[neighbor-address=192.0.2.12]"},
			want: nb + "/neighbor[neighbor-address=192.0.2.12]/neighbor-address = \"192.0.2.12\"\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/config/neighbor-address = \"192.0.2.12\"\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/config/peer-as = 65002\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/config/description = \"node2\"\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/afi-safi-name = \"openconfig-bgp-types:IPV4_UNICAST\"\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/config/afi-safi-name = \"openconfig-bgp-types:IPV4_UNICAST\"\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/afi-safis/afi-safi[afi-safi-name=IPV4_UNICAST]/config/enabled = true\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/enable-bfd/config/enabled = false\n",
			reads: []string{"neighbors", "bgp-routes"},
		},
		{
			name: "BFD configured and a peer restarting, at their OpenConfig paths",
			paths: []string{bgpNeighbors + "/neighbor/enable-bfd/state/enabled", bgpNeighbors + "/neighbor/graceful-restart/state/peer-restarting",
				bgpNeighbors + "/neighbor[neighbor-address=2001:db8::1]/enable-bfd"},
			want: nb + "/neighbor[neighbor-address=192.0.2.11]/enable-bfd/state/enabled = true\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/enable-bfd/state/enabled = false\n" +
				nb + "/neighbor[neighbor-address=2001:db8::1]/enable-bfd/state/enabled = true\n" +
				nb + "/neighbor[neighbor-address=192.0.2.11]/graceful-restart/state/peer-restarting = false\n" +
				nb + "/neighbor[neighbor-address=192.0.2.12]/graceful-restart/state/peer-restarting = true\n" +
				nb + "/neighbor[neighbor-address=2001:db8::1]/graceful-restart/state/peer-restarting = false\n" +
				nb + "/neighbor[neighbor-address=2001:db8::1]/enable-bfd/config/enabled = true\n" +
				nb + "/neighbor[neighbor-address=2001:db8::1]/enable-bfd/state/enabled = true\n",
			reads: []string{"neighbors"},
		},
		{
			name:  "the appliance's own neighbor leaves: BFD state and stale prefixes; last-error absent when there is none",
			paths: []string{"/bgp/neighbors/neighbor/state"},
			want: "portico:/bgp/neighbors/neighbor[address=192.0.2.11]/state/name = \"node1\"\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.11]/state/role = \"node\"\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.11]/state/rejected = 1\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.11]/state/bfd-state = \"up\"\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.11]/state/unprotected = false\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.11]/state/graceful-restart-negotiated = true\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.11]/state/stale = 0\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.12]/state/name = \"node2\"\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.12]/state/role = \"node\"\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.12]/state/rejected = 0\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.12]/state/last-error = \"hold timer expired\"\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.12]/state/bfd-state = \"disabled\"\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.12]/state/unprotected = false\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.12]/state/graceful-restart-negotiated = false\n" +
				"portico:/bgp/neighbors/neighbor[address=192.0.2.12]/state/stale = 1\n" +
				"portico:/bgp/neighbors/neighbor[address=2001:db8::1]/state/name = \"up1\"\n" +
				"portico:/bgp/neighbors/neighbor[address=2001:db8::1]/state/role = \"upstream\"\n" +
				"portico:/bgp/neighbors/neighbor[address=2001:db8::1]/state/rejected = 0\n" +
				"portico:/bgp/neighbors/neighbor[address=2001:db8::1]/state/bfd-state = \"admin-down\"\n" +
				"portico:/bgp/neighbors/neighbor[address=2001:db8::1]/state/unprotected = true\n" +
				"portico:/bgp/neighbors/neighbor[address=2001:db8::1]/state/graceful-restart-negotiated = true\n" +
				"portico:/bgp/neighbors/neighbor[address=2001:db8::1]/state/stale = 0\n",
			reads: []string{"neighbors"},
		},
		{
			name:   "learned BGP routes: next hops are a leaf-list",
			origin: "portico",
			paths:  []string{"/bgp/routes"},
			want: "portico:/bgp/routes/route[prefix=203.0.113.10/32]/prefix = \"203.0.113.10/32\"\n" +
				"portico:/bgp/routes/route[prefix=203.0.113.10/32]/state/prefix = \"203.0.113.10/32\"\n" +
				"portico:/bgp/routes/route[prefix=203.0.113.10/32]/state/next-hop = [\"192.0.2.11\"]\n" +
				"portico:/bgp/routes/route[prefix=203.0.113.20/32]/prefix = \"203.0.113.20/32\"\n" +
				"portico:/bgp/routes/route[prefix=203.0.113.20/32]/state/prefix = \"203.0.113.20/32\"\n" +
				"portico:/bgp/routes/route[prefix=203.0.113.20/32]/state/next-hop = [\"192.0.2.11\",\"192.0.2.12\"]\n",
			reads: []string{"bgp-routes"},
		},
		{
			name:  "one kernel route by prefix and metric, and the next hops of every route",
			paths: []string{"/routes/route[prefix=203.0.113.20/32][metric=20]/state", "/routes/route/next-hops/next-hop/state/address"},
			want: "portico:/routes/route[index=0][metric=20][prefix=203.0.113.20/32]/state/prefix = \"203.0.113.20/32\"\n" +
				"portico:/routes/route[index=0][metric=20][prefix=203.0.113.20/32]/state/metric = 20\n" +
				"portico:/routes/route[index=0][metric=20][prefix=203.0.113.20/32]/state/index = 0\n" +
				"portico:/routes/route[index=0][metric=20][prefix=203.0.113.20/32]/state/protocol = \"bgp\"\n" +
				"portico:/routes/route[index=0][metric=20][prefix=203.0.113.20/32]/state/type = \"unicast\"\n" +
				"portico:/routes/route[index=0][metric=20][prefix=203.0.113.20/32]/next-hops/next-hop[index=0]/state/address = \"192.0.2.11\"\n" +
				"portico:/routes/route[index=0][metric=20][prefix=203.0.113.20/32]/next-hops/next-hop[index=1]/state/address = \"192.0.2.12\"\n",
			reads: []string{"kernel"},
		},
		{
			name:  "routes of one prefix, any metric",
			paths: []string{"/routes/route[prefix=192.0.2.0/24]/next-hops"},
			want: "portico:/routes/route[index=0][metric=0][prefix=192.0.2.0/24]/next-hops/next-hop[index=0]/index = 0\n" +
				"portico:/routes/route[index=0][metric=0][prefix=192.0.2.0/24]/next-hops/next-hop[index=0]/state/index = 0\n" +
				"portico:/routes/route[index=0][metric=0][prefix=192.0.2.0/24]/next-hops/next-hop[index=0]/state/interface = \"eth0\"\n" +
				"portico:/routes/route[index=0][metric=0][prefix=192.0.2.0/24]/next-hops/next-hop[index=0]/state/weight = 1\n",
			reads: []string{"kernel"},
		},
		{
			name:  "routes of one prefix and metric, one per interface, told apart by index",
			paths: []string{"/routes/route[prefix=fe80::/64][metric=256]/next-hops/next-hop/state/interface"},
			want: "portico:/routes/route[index=0][metric=256][prefix=fe80::/64]/next-hops/next-hop[index=0]/state/interface = \"eth0\"\n" +
				"portico:/routes/route[index=1][metric=256][prefix=fe80::/64]/next-hops/next-hop[index=0]/state/interface = \"eth1\"\n",
			reads: []string{"kernel"},
		},
		{
			name:  "a VIP: 64-bit counters are strings",
			paths: []string{"/vips/vip[name=web]/config", "/vips/vip[name=web]/state"},
			want: "portico:/vips/vip[name=web]/config/name = \"web\"\n" +
				"portico:/vips/vip[name=web]/config/address = \"203.0.113.10\"\n" +
				"portico:/vips/vip[name=web]/config/port = 80\n" +
				"portico:/vips/vip[name=web]/config/protocol = \"tcp\"\n" +
				"portico:/vips/vip[name=web]/config/scheduler = \"maglev\"\n" +
				"portico:/vips/vip[name=web]/config/snat = false\n" +
				"portico:/vips/vip[name=web]/state/counters/packets = \"1099511627776\"\n" +
				"portico:/vips/vip[name=web]/state/counters/bytes = \"5\"\n",
			reads: []string{"vips"},
		},
		{
			// ygot's path text escapes the ] inside a key value.
			name:  "health of every backend of every VIP",
			paths: []string{"/vips/vip/backends/backend[address=*]/state/health"},
			want: "portico:/vips/vip[name=web]/backends/backend[address=10.0.1.11:8080]/state/health = \"up\"\n" +
				"portico:/vips/vip[name=web]/backends/backend[address=10.0.1.12:8080]/state/health = \"down\"\n" +
				"portico:/vips/vip[name=dns]/backends/backend[address=[2001:db8:1::53\\]:53]/state/health = \"unchecked\"\n",
			reads: []string{"vips"},
		},
		{
			name:  "STATE leaves of a backend: no configuration",
			dt:    gpb.GetRequest_STATE,
			paths: []string{"/vips/vip[name=web]/backends/backend[address=10.0.1.11:8080]"},
			want: "portico:/vips/vip[name=web]/backends/backend[address=10.0.1.11:8080]/state/health = \"up\"\n" +
				"portico:/vips/vip[name=web]/backends/backend[address=10.0.1.11:8080]/state/counters/packets = \"7\"\n" +
				"portico:/vips/vip[name=web]/backends/backend[address=10.0.1.11:8080]/state/counters/bytes = \"700\"\n",
			reads: []string{"vips"},
		},
		{
			name:  "a wildcard element matches only where the rest of the path exists",
			paths: []string{"/*/vip[name=dns]/config/port"},
			want:  "portico:/vips/vip[name=dns]/config/port = 53\n",
			reads: []string{"vips"},
		},
		{
			name:  "a missing entry under a wildcard is no error",
			paths: []string{"/vips/vip[name=*]/backends/backend[address=10.0.1.12:8080]/config/weight"},
			want:  "portico:/vips/vip[name=web]/backends/backend[address=10.0.1.12:8080]/config/weight = 2\n",
			reads: []string{"vips"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newFake()
			got, err := get(t, newServer(st), tc.origin, tc.dt, tc.paths...)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got\n%swant\n%s", got, tc.want)
			}
			for part := range st.reads {
				if !slices.Contains(tc.reads, part) {
					t.Errorf("the Get read %s", part)
				}
			}
		})
	}
}

// A Get of the root answers with both origins, one notification each.
func TestGetRoot(t *testing.T) {
	st := newFake()
	got, err := get(t, newServer(st), "", 0, "/")
	if err != nil {
		t.Fatal(err)
	}
	origins := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
		origin, _, _ := strings.Cut(line, ":")
		origins[origin]++
	}
	// 3 neighbors with 5 config and 5 state leaves, 1 key, 9 afi-safi
	// leaves (installed only for nodes counted apart) ...: count the
	// leaves that must be there rather than all of them.
	if origins["openconfig"] == 0 || origins["portico"] == 0 || len(origins) != 2 {
		t.Fatalf("origins %v", origins)
	}
	for _, want := range []string{
		"openconfig:/network-instances/network-instance[name=default]/name = \"default\"",
		"openconfig:/network-instances/network-instance[name=default]/protocols/protocol[identifier=BGP][name=BGP]/identifier = \"openconfig-policy-types:BGP\"",
		"portico:/routes/route[index=0][metric=0][prefix=198.51.100.0/24]/state/type = \"blackhole\"",
		"portico:/vips/vip[name=dns]/config/snat = true",
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("no %s", want)
		}
	}
}

func TestGetErrors(t *testing.T) {
	tests := []struct {
		name   string
		origin string
		enc    gpb.Encoding
		path   string
		code   codes.Code
		msg    string
	}{
		{name: "unknown top element", path: "/interfaces", code: codes.NotFound,
			msg: `/ has no element "interfaces"`},
		{name: "unknown element deep down", path: bgpNeighbors + "/neighbor[neighbor-address=192.0.2.11]/state/uptime", code: codes.NotFound,
			msg: `state has no element "uptime" (it has neighbor-address, peer-as, description, session-state, last-established)`},
		{name: "graceful restart's local configuration is not served", path: bgpNeighbors + "/neighbor[neighbor-address=192.0.2.11]/graceful-restart/state/enabled", code: codes.NotFound,
			msg: `state has no element "enabled" (it has peer-restarting)`},
		{name: "an element below a leaf", path: "/vips/vip/config/port/number", code: codes.NotFound,
			msg: `/vips/vip/config/port is a leaf: it has no element "number"`},
		{name: "a key on a container", path: "/vips[name=web]", code: codes.InvalidArgument,
			msg: "/vips is not a list: it takes no keys"},
		{name: "a key the list does not have", path: "/vips/vip[address=203.0.113.10]", code: codes.InvalidArgument,
			msg: `/vips/vip has no key "address" (its keys: name)`},
		{name: "a neighbor address that is no address", path: bgpNeighbors + "/neighbor[neighbor-address=node1]", code: codes.InvalidArgument,
			msg: "neighbor[neighbor-address=node1]: not an IP address"},
		{name: "a prefix with host bits", path: "/bgp/routes/route[prefix=203.0.113.1/24]", code: codes.InvalidArgument,
			msg: "route[prefix=203.0.113.1/24]: not a network prefix: the address bits past /24 must be zero"},
		{name: "a metric that is no number", path: "/routes/route[prefix=192.0.2.0/24][metric=low]", code: codes.InvalidArgument,
			msg: "[metric=low]: not a 32-bit unsigned number"},
		{name: "a route index out of range", path: "/routes/route[prefix=192.0.2.0/24][metric=0][index=65536]", code: codes.InvalidArgument,
			msg: "[index=65536]: not a 16-bit unsigned number"},
		{name: "a neighbor that is not configured", path: bgpNeighbors + "/neighbor[neighbor-address=192.0.2.99]/state", code: codes.NotFound,
			msg: "no " + bgpNeighbors + "/neighbor[neighbor-address=192.0.2.99]"},
		{name: "a network instance other than default", path: "/network-instances/network-instance[name=red]", code: codes.NotFound,
			msg: "no /network-instances/network-instance[name=red]"},
		{name: "an absent leaf named exactly", path: "/bgp/neighbors/neighbor[address=192.0.2.11]/state/last-error", code: codes.NotFound,
			msg: "/bgp/neighbors/neighbor[address=192.0.2.11]/state/last-error has no value"},
		{name: "a portico path in origin openconfig", origin: "openconfig", path: "/vips", code: codes.NotFound,
			msg: `/ has no element "vips" (it has network-instances)`},
		{name: "an unknown origin", origin: "cisco", path: "/vips", code: codes.InvalidArgument,
			msg: `origin "cisco" is not served`},
		{name: "the multi-level wildcard", path: "/vips/...", code: codes.InvalidArgument,
			msg: "the multi-level wildcard ... is not supported"},
		{name: "an encoding other than JSON", enc: gpb.Encoding_PROTO, path: "/vips", code: codes.Unimplemented,
			msg: "encoding PROTO is not supported; use JSON_IETF"},
		{name: "the kernel cannot be read", path: "/routes", code: codes.Internal,
			msg: "/routes/route: netlink: permission denied"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newFake()
			st.kernelErr = errors.New("netlink: permission denied")
			gp, err := ygot.StringToStructuredPath(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			enc := tc.enc
			if enc == 0 {
				enc = gpb.Encoding_JSON_IETF
			}
			_, err = newServer(st).Get(context.Background(), &gpb.GetRequest{Prefix: &gpb.Path{Origin: tc.origin}, Path: []*gpb.Path{gp}, Encoding: enc})
			s, _ := status.FromError(err)
			if s.Code() != tc.code || !strings.Contains(s.Message(), tc.msg) {
				t.Errorf("got %v: %q\nwant %v containing %q", s.Code(), s.Message(), tc.code, tc.msg)
			}
		})
	}
}

func TestCapabilities(t *testing.T) {
	resp, err := newServer(newFake()).Capabilities(context.Background(), &gpb.CapabilityRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var models []string
	for _, m := range resp.GetSupportedModels() {
		models = append(models, m.GetName()+"@"+m.GetVersion())
	}
	want := []string{"openconfig-network-instance@", "openconfig-bgp@", "openconfig-bfd@", "portico@2026-12-01"}
	if !slices.Equal(models, want) {
		t.Errorf("models %v, want %v", models, want)
	}
	if !slices.Contains(resp.GetSupportedEncodings(), gpb.Encoding_JSON_IETF) {
		t.Errorf("encodings %v lack JSON_IETF", resp.GetSupportedEncodings())
	}
	if resp.GetGNMIVersion() == "" {
		t.Error("no gNMI version")
	}
}

// Every element the server serves in origin portico is in portico.yang,
// as the same kind (container, list with the same keys, leaf, leaf-list),
// and config false there where the server calls it state.
func TestModelMatchesYANG(t *testing.T) {
	ms := goyang.NewModules()
	if err := ms.Parse(yang.Module, "portico.yang"); err != nil {
		t.Fatal(err)
	}
	if errs := ms.Process(); len(errs) > 0 {
		t.Fatal(errs)
	}
	mod, errs := ms.GetModule(yang.Name)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	var walk func(n *node, e *goyang.Entry, at string)
	walk = func(n *node, e *goyang.Entry, at string) {
		for _, c := range n.children {
			p := at + "/" + c.name
			ce := e.Dir[c.name]
			if ce == nil {
				t.Errorf("%s is not in portico.yang", p)
				continue
			}
			switch c.kind {
			case containerKind:
				if !ce.IsContainer() {
					t.Errorf("%s: a container in the server, not in the module", p)
				}
			case listKind:
				if !ce.IsList() || ce.Key != strings.Join(c.keys, " ") {
					t.Errorf("%s: a list keyed by %v in the server; in the module list %v key %q", p, c.keys, ce.IsList(), ce.Key)
				}
			case leafKind:
				if !ce.IsLeaf() {
					t.Errorf("%s: a leaf in the server, not in the module", p)
				}
			case leafListKind:
				if !ce.IsLeafList() {
					t.Errorf("%s: a leaf-list in the server, not in the module", p)
				}
			}
			if (c.kind == leafKind || c.kind == leafListKind) && c.config != !ce.ReadOnly() {
				t.Errorf("%s: config %v in the server, %v in the module", p, c.config, !ce.ReadOnly())
			}
			walk(c, ce, p)
		}
	}
	served := 0
	for _, top := range newServer(newFake()).root.children {
		if originOf(top.name) == OriginPortico {
			served++
			walk(&node{children: []*node{top}}, mod, "")
		}
	}
	if served != 3 {
		t.Errorf("%d top-level portico elements, want vips, bgp and routes", served)
	}
}
