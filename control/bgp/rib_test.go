package bgp

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// path returns a path as gobgp's events carry it: prefix from a node via nextHop with an
// AS path of asPathLen hops, or its withdrawal if nextHop is "".
func path(prefix, nextHop string, asPathLen int) *apiutil.Path {
	nlri, _ := bgp.NewIPAddrPrefix(netip.MustParsePrefix(prefix))
	if nextHop == "" {
		return &apiutil.Path{Nlri: nlri, Withdrawal: true}
	}
	nh, _ := bgp.NewPathAttributeNextHop(netip.MustParseAddr(nextHop))
	asPath := bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, make([]uint32, asPathLen))})
	return &apiutil.Path{Nlri: nlri, Attrs: []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP), asPath, nh}}
}

// TestRIB feeds the owner the events gobgp sends about two nodes, as a sequence of
// steps, and checks the routes and counts after each.
func TestRIB(t *testing.T) {
	o := newOwner(New(slog.New(slog.DiscardHandler), nil))
	o.global = Global{ASN: 65000}
	accept := []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	for n := 1; n <= 2; n++ {
		ps := &peerState{Peer: nodePeer(n, false, 64512, accept...), rib: map[netip.Prefix]ribPath{}, refused: map[netip.Prefix]bool{}}
		o.peers[ps.Name], o.addrs[ps.Address] = ps, ps
	}
	up := &peerState{Peer: Peer{Name: "up", Address: netip.MustParseAddr("10.0.4.2"), ASN: 65100, Role: Upstream}, rib: map[netip.Prefix]ribPath{}}
	o.peers[up.Name], o.addrs[up.Address] = up, up
	n1, n2 := o.peers["node1"], o.peers["node2"]
	state := func(st bgp.FSMState, reason api.PeerState_DisconnectReason) event {
		return event{state: &apiutil.PeerState{SessionState: st, DisconnectReason: reason}}
	}
	up1 := state(bgp.BGP_FSM_ESTABLISHED, 0)

	for _, step := range []struct {
		name   string
		peer   *peerState
		ev     event
		routes string
		counts string // node1's, node2's: received/accepted/stale
	}{
		{"node1 up", n1, up1, "", "0/0/0 0/0/0"},
		{"node2 up", n2, up1, "", "0/0/0 0/0/0"},
		{"node1 sends two, one refused", n1, event{paths: []*apiutil.Path{path("203.0.113.10/32", "10.0.1.2", 1), path("198.51.100.0/24", "10.0.1.2", 1)}},
			"203.0.113.10/32 via 10.0.1.2", "2/1/0 0/0/0"},
		{"node2 ties", n2, event{paths: []*apiutil.Path{path("203.0.113.10/32", "10.0.2.2", 1), path("203.0.113.20/32", "10.0.2.2", 1)}},
			"203.0.113.10/32 via 10.0.1.2,10.0.2.2; 203.0.113.20/32 via 10.0.2.2", "2/1/0 2/2/0"},
		{"node2 replaces its path with a worse one", n2, event{paths: []*apiutil.Path{path("203.0.113.10/32", "10.0.2.2", 3)}},
			"203.0.113.10/32 via 10.0.1.2; 203.0.113.20/32 via 10.0.2.2", "2/1/0 2/2/0"},
		{"the upstream's routes are not learned", up, event{paths: []*apiutil.Path{path("203.0.113.30/32", "10.0.4.2", 1)}},
			"203.0.113.10/32 via 10.0.1.2; 203.0.113.20/32 via 10.0.2.2", "2/1/0 2/2/0"},
		{"node2 restarts gracefully", n2, state(bgp.BGP_FSM_IDLE, api.PeerState_DISCONNECT_REASON_GRACEFUL_RESTART),
			"203.0.113.10/32 via 10.0.1.2; 203.0.113.20/32 via 10.0.2.2", "2/1/0 2/2/2"},
		{"node2 back", n2, up1, "203.0.113.10/32 via 10.0.1.2; 203.0.113.20/32 via 10.0.2.2", "2/1/0 2/2/2"},
		{"node2 sends one again, tying", n2, event{paths: []*apiutil.Path{path("203.0.113.10/32", "10.0.2.2", 1)}},
			"203.0.113.10/32 via 10.0.1.2,10.0.2.2; 203.0.113.20/32 via 10.0.2.2", "2/1/0 2/2/1"},
		{"node2's End-of-RIB drops the other", n2, event{eor: true},
			"203.0.113.10/32 via 10.0.1.2,10.0.2.2", "2/1/0 1/1/0"},
		{"node1 withdraws", n1, event{paths: []*apiutil.Path{path("203.0.113.10/32", "", 0), path("203.0.113.99/32", "", 0)}},
			"203.0.113.10/32 via 10.0.2.2", "1/0/0 1/1/0"},
		{"node2 down for good", n2, state(bgp.BGP_FSM_IDLE, api.PeerState_DISCONNECT_REASON_HOLD_TIMER_EXPIRED), "", "1/0/0 0/0/0"},
		{"node1 restarts gracefully", n1, state(bgp.BGP_FSM_IDLE, api.PeerState_DISCONNECT_REASON_GRACEFUL_RESTART), "", "1/0/1 0/0/0"},
		{"node1's restart time ends", n1, state(bgp.BGP_FSM_IDLE, api.PeerState_DISCONNECT_REASON_RESTART_TIMER_EXPIRED), "", "0/0/0 0/0/0"},
	} {
		o.note(step.peer, step.ev)
		o.publish(o.relearn(), nil)
		if got := routesString(o.s.Routes()); got != step.routes {
			t.Errorf("%s: routes %s, want %s", step.name, got, step.routes)
		}
		counts := fmt.Sprintf("%d/%d/%d %d/%d/%d", len(n1.rib), n1.accepted, n1.stale, len(n2.rib), n2.accepted, n2.stale)
		if counts != step.counts {
			t.Errorf("%s: counts %s, want %s", step.name, counts, step.counts)
		}
	}

	// A new accept list takes the refused path in.
	o.note(n1, up1)
	o.note(n1, event{paths: []*apiutil.Path{path("198.51.100.0/24", "10.0.1.2", 1)}})
	o.publish(o.relearn(), nil)
	if len(o.s.Routes()) != 0 || n1.accepted != 0 {
		t.Fatalf("routes %s, accepted %d; want none", routesString(o.s.Routes()), n1.accepted)
	}
	n1.Accept = append(n1.Accept, netip.MustParsePrefix("198.51.100.0/24"))
	o.refilter(n1)
	o.publish(o.relearn(), nil)
	if got := routesString(o.s.Routes()); got != "198.51.100.0/24 via 10.0.1.2" || n1.accepted != 1 {
		t.Errorf("after the accept list grew: routes %s, accepted %d", got, n1.accepted)
	}
}
