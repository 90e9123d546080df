package bgp

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// This file converts between the Speaker's values and gobgp's.

// Session timers gobgp leaves far too slow for a router (120 s and 30 s).
const (
	// connectRetry is the pause between two connection attempts to a peer that is not
	// up. 2 s is gobgp's floor, and also its fixed delay before the first attempt: a node
	// that comes back is reconnected within about 2 s, while a dead one costs one SYN
	// every 2 s.
	connectRetry = 2 * time.Second
	// idleHoldAfterReset is how long a session stays idle, refusing connections, after
	// gobgp sends an administrative reset (a hard ResetPeer, which nothing does yet): 1 s,
	// the least gobgp takes, as 0 means its default. A session that goes down by itself
	// stays idle 5 s, a constant of gobgp's; a peer that Set adds starts at once.
	idleHoldAfterReset = time.Second
	// deferralTime is the longest that gobgp, after the appliance restarted gracefully,
	// holds back its updates waiting for the End-of-RIB of every peer with graceful
	// restart (RFC 4724 §4.1). What the appliance announces does not depend on what
	// peers send, so there is nothing to wait for but the End-of-RIB of peers that are
	// up within a second; 0 would mean gobgp's default of 360 s.
	deferralTime = time.Second
)

// Names of the routing policy in gobgp.
const (
	globalRIB    = "global" // the assignment that holds the policy for every non route-server peer
	importPolicy = "portico-import"
	exportPolicy = "portico-export"
)

func family(a netip.Addr) bgp.Family {
	if a.Is4() {
		return bgp.RF_IPv4_UC
	}
	return bgp.RF_IPv6_UC
}

func apiFamily(a netip.Addr) *api.Family {
	if a.Is4() {
		return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	}
	return &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
}

func apiGlobal(g Global) *api.Global {
	port := int32(g.ListenPort)
	if port == 0 {
		port = bgp.BGP_PORT // gobgp listens only on a positive port, so -1 stays
	}
	var addrs []string
	for _, a := range g.ListenAddrs {
		addrs = append(addrs, a.String())
	}
	return &api.Global{Asn: g.ASN, RouterId: g.RouterID.String(), ListenPort: port, ListenAddresses: addrs}
}

// apiPeer returns gobgp's configuration of p under g: with p's BFD session if bfd, and
// saying in its OPEN that the appliance restarted if restarting and g has graceful
// restart.
func apiPeer(p Peer, g Global, bfd, restarting bool) *api.Peer {
	af := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: apiFamily(p.Address), Enabled: true}}
	if p.MaxPrefixes > 0 {
		af.PrefixLimits = &api.PrefixLimit{Family: apiFamily(p.Address), MaxPrefixes: uint32(p.MaxPrefixes)}
	}
	peer := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			AuthPassword:    p.Password,
			Description:     p.Name,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:               seconds(p.HoldTime),
			KeepaliveInterval:      seconds(p.Keepalive),
			ConnectRetry:           seconds(connectRetry),
			IdleHoldTimeAfterReset: seconds(idleHoldAfterReset),
		}},
		AfiSafis: []*api.AfiSafi{af},
	}
	if p.Multihop > 0 {
		peer.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.Multihop)}
	}
	if gr := g.GracefulRestart; gr.Enabled {
		peer.GracefulRestart = &api.GracefulRestart{
			Enabled:         true,
			RestartTime:     uint32(seconds(gr.RestartTime)),
			DeferralTime:    uint32(seconds(deferralTime)),
			LocalRestarting: restarting,
		}
		af.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	if bfd && p.BFD.Enabled() {
		us := uint32(p.BFD.Interval / time.Microsecond)
		peer.Bfd = &api.BfdPeerConfig{
			Enabled:                  true,
			DesiredMinimumTxInterval: us,
			RequiredMinimumReceive:   us,
			DetectionMultiplier:      uint32(p.BFD.Multiplier),
		}
	}
	return peer
}

func seconds(d time.Duration) uint64 { return uint64(d / time.Second) }

// policies returns gobgp's routing policy for c. Import: only the appliance's own routes
// enter the global RIB; what peers send stays in their Adj-RIB-In, where the Speaker
// reads it. Export: the appliance's own routes go to upstream peers, each with its
// communities, and nothing goes to anyone else.
func policies(c Config) *api.SetPoliciesRequest {
	local := &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL}
	accept := api.RouteAction_ROUTE_ACTION_ACCEPT
	req := &api.SetPoliciesRequest{Policies: []*api.Policy{{
		Name: importPolicy,
		Statements: []*api.Statement{{
			Name:       importPolicy + "-local",
			Conditions: local,
			Actions:    &api.Actions{RouteAction: accept},
		}},
	}}}
	export := &api.Policy{Name: exportPolicy}
	upstreams := slices.DeleteFunc(slices.Clone(c.Peers), func(p Peer) bool { return p.Role != Upstream })
	slices.SortFunc(upstreams, func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
	for _, p := range upstreams {
		set := "upstream-" + p.Address.String()
		req.DefinedSets = append(req.DefinedSets, &api.DefinedSet{
			DefinedType: api.DefinedType_DEFINED_TYPE_NEIGHBOR,
			Name:        set,
			List:        []string{netip.PrefixFrom(p.Address, p.Address.BitLen()).String()},
		})
		actions := &api.Actions{RouteAction: accept}
		var std, large []string
		for _, comm := range p.Communities {
			if isLarge, _ := parseCommunity(comm); isLarge {
				large = append(large, comm)
			} else {
				std = append(std, comm)
			}
		}
		if len(std) > 0 {
			actions.Community = &api.CommunityAction{Type: api.CommunityAction_TYPE_ADD, Communities: std}
		}
		if len(large) > 0 {
			actions.LargeCommunity = &api.CommunityAction{Type: api.CommunityAction_TYPE_ADD, Communities: large}
		}
		export.Statements = append(export.Statements, &api.Statement{
			Name: exportPolicy + "-" + set,
			Conditions: &api.Conditions{
				RouteType:   api.Conditions_ROUTE_TYPE_LOCAL,
				NeighborSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: set},
			},
			Actions: actions,
		})
	}
	req.Policies = append(req.Policies, export)
	return req
}

// assignments returns the global import and export assignments of the policies, both
// rejecting what no statement accepts.
func assignments() []*api.PolicyAssignment {
	reject := api.RouteAction_ROUTE_ACTION_REJECT
	return []*api.PolicyAssignment{
		{Name: globalRIB, Direction: api.PolicyDirection_POLICY_DIRECTION_IMPORT, Policies: []*api.Policy{{Name: importPolicy}}, DefaultAction: reject},
		{Name: globalRIB, Direction: api.PolicyDirection_POLICY_DIRECTION_EXPORT, Policies: []*api.Policy{{Name: exportPolicy}}, DefaultAction: reject},
	}
}

// advertisement returns the local path that announces prefix, or withdraws it. Its next
// hop is unspecified, which gobgp replaces with the session's own address.
func advertisement(prefix netip.Prefix, withdraw bool) *apiutil.Path {
	nlri, _ := bgp.NewIPAddrPrefix(prefix) // cannot fail: prefix is valid
	nextHop := netip.IPv4Unspecified()
	if prefix.Addr().Is6() {
		nextHop = netip.IPv6Unspecified()
	}
	nh, _ := bgp.NewPathAttributeNextHop(nextHop) // cannot fail: nextHop is valid
	return &apiutil.Path{
		Family:     family(prefix.Addr()),
		Nlri:       nlri,
		Attrs:      []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP), nh},
		Withdrawal: withdraw,
	}
}

// candidateOf returns the candidate that p, a path from a peer of the appliance's AS if
// ibgp, makes, and false if p is not a unicast prefix.
func candidateOf(p *apiutil.Path, ibgp bool) (candidate, bool) {
	nlri, ok := p.Nlri.(*bgp.IPAddrPrefix)
	if !ok {
		return candidate{}, false
	}
	c := candidate{prefix: nlri.Prefix, rank: rank{ibgp: ibgp, localPref: 100}}
	for _, a := range p.Attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			c.nextHop = a.Value
		case *bgp.PathAttributeMpReachNLRI:
			c.nextHop = a.Nexthop // the global address; a link-local one is in LinkLocalNexthop
		case *bgp.PathAttributeOrigin:
			c.rank.origin = a.Value
		case *bgp.PathAttributeMultiExitDisc:
			c.rank.med = a.Value
		case *bgp.PathAttributeLocalPref:
			if ibgp { // meaningless from eBGP, and gobgp strips it too
				c.rank.localPref = a.Value
			}
		case *bgp.PathAttributeAsPath:
			for _, seg := range a.Value {
				c.rank.asPathLen += seg.ASLen()
			}
		}
	}
	return c, true
}

// sessionState names a gobgp session state as NeighborState.State does.
func sessionState(s api.PeerState_SessionState) string {
	name, ok := strings.CutPrefix(s.String(), "SESSION_STATE_")
	if !ok || s == api.PeerState_SESSION_STATE_UNSPECIFIED {
		return "idle"
	}
	return strings.ToLower(name)
}

// isFailure reports whether a session that went down for reason r went down on an error,
// rather than because it was told to.
func isFailure(r api.PeerState_DisconnectReason) bool {
	switch r {
	case api.PeerState_DISCONNECT_REASON_HOLD_TIMER_EXPIRED,
		api.PeerState_DISCONNECT_REASON_NOTIFICATION_SENT,
		api.PeerState_DISCONNECT_REASON_NOTIFICATION_RECEIVED,
		api.PeerState_DISCONNECT_REASON_READ_FAILED,
		api.PeerState_DISCONNECT_REASON_WRITE_FAILED,
		api.PeerState_DISCONNECT_REASON_INVALID_MSG,
		api.PeerState_DISCONNECT_REASON_HARD_RESET,
		api.PeerState_DISCONNECT_REASON_BAD_PEER_AS:
		return true
	}
	return false
}
