package bgp

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

func cand(prefix, nextHop string, r rank) candidate {
	return candidate{prefix: netip.MustParsePrefix(prefix), nextHop: netip.MustParseAddr(nextHop), rank: r}
}

func TestLearn(t *testing.T) {
	ebgp := rank{localPref: 100, asPathLen: 1}
	for _, tc := range []struct {
		name  string
		cands []candidate
		want  string
	}{
		{"nothing", nil, ""},
		{"three equal nodes", []candidate{
			cand("203.0.113.10/32", "10.0.3.2", ebgp),
			cand("203.0.113.10/32", "10.0.1.2", ebgp),
			cand("203.0.113.10/32", "10.0.2.2", ebgp),
		}, "203.0.113.10/32 via 10.0.1.2,10.0.2.2,10.0.3.2"},
		{"prefixes sorted, IPv4 first", []candidate{
			cand("2001:db8::10/128", "fd00:1::2", ebgp),
			cand("203.0.113.10/32", "10.0.1.2", ebgp),
			cand("203.0.113.0/24", "10.0.2.2", ebgp),
		}, "203.0.113.0/24 via 10.0.2.2; 203.0.113.10/32 via 10.0.1.2; 2001:db8::10/128 via fd00:1::2"},
		{"a node drains itself by prepending its AS", []candidate{
			cand("203.0.113.10/32", "10.0.1.2", ebgp),
			cand("203.0.113.10/32", "10.0.2.2", rank{localPref: 100, asPathLen: 3}),
		}, "203.0.113.10/32 via 10.0.1.2"},
		{"lower MED wins", []candidate{
			cand("203.0.113.10/32", "10.0.1.2", rank{localPref: 100, asPathLen: 1, med: 10}),
			cand("203.0.113.10/32", "10.0.2.2", rank{localPref: 100, asPathLen: 1, med: 5}),
		}, "203.0.113.10/32 via 10.0.2.2"},
		{"lower origin wins", []candidate{
			cand("203.0.113.10/32", "10.0.1.2", rank{localPref: 100, asPathLen: 1, origin: 2}),
			cand("203.0.113.10/32", "10.0.2.2", ebgp),
		}, "203.0.113.10/32 via 10.0.2.2"},
		{"eBGP over iBGP, whatever the local preference", []candidate{
			cand("203.0.113.10/32", "10.0.1.2", rank{ibgp: true, localPref: 200}),
			cand("203.0.113.10/32", "10.0.2.2", ebgp),
		}, "203.0.113.10/32 via 10.0.2.2"},
		{"higher local preference among iBGP nodes", []candidate{
			cand("203.0.113.10/32", "10.0.1.2", rank{ibgp: true, localPref: 200}),
			cand("203.0.113.10/32", "10.0.2.2", rank{ibgp: true, localPref: 100}),
		}, "203.0.113.10/32 via 10.0.1.2"},
		{"two nodes name one next hop", []candidate{
			cand("203.0.113.10/32", "10.0.9.9", ebgp),
			cand("203.0.113.10/32", "10.0.9.9", ebgp),
			cand("203.0.113.10/32", "10.0.1.2", ebgp),
		}, "203.0.113.10/32 via 10.0.1.2,10.0.9.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := routesString(learn(tc.cands)); got != tc.want {
				t.Errorf("learn: %s\nwant:  %s", got, tc.want)
			}
		})
	}
}

func TestRefusal(t *testing.T) {
	accept := []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8::/64")}
	for _, tc := range []struct {
		prefix, nextHop string
		want            string
	}{
		{"203.0.113.0/24", "10.0.1.2", ""},
		{"203.0.113.10/32", "10.0.1.2", ""},
		{"2001:db8::10/128", "fd00:1::2", ""},
		{"203.0.0.0/16", "10.0.1.2", "outside accept"}, // shorter than the accepted prefix
		{"198.51.100.0/24", "10.0.1.2", "outside accept"},
		{"2001:db8:1::/64", "fd00:1::2", "outside accept"},
		{"203.0.113.10/32", "0.0.0.0", "no usable next hop"},
		{"203.0.113.10/32", "fd00:1::2", "next hop fd00:1::2 is of another address family"},
	} {
		got := refusal(accept, netip.MustParsePrefix(tc.prefix), netip.MustParseAddr(tc.nextHop))
		if got != tc.want {
			t.Errorf("refusal(%s via %s) = %q, want %q", tc.prefix, tc.nextHop, got, tc.want)
		}
	}
	if got := refusal(nil, netip.MustParsePrefix("203.0.113.10/32"), netip.MustParseAddr("10.0.1.2")); got != "outside accept" {
		t.Errorf("refusal with no accept list = %q, want everything refused", got)
	}
}

// TestCandidateOf reads paths as gobgp decodes them from UPDATE messages.
func TestCandidateOf(t *testing.T) {
	asPath := func(seq ...uint32) bgp.PathAttributeInterface {
		return bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, seq)})
	}
	v4, _ := bgp.NewIPAddrPrefix(netip.MustParsePrefix("203.0.113.10/32"))
	v6, _ := bgp.NewIPAddrPrefix(netip.MustParsePrefix("2001:db8::10/128"))
	nh4, _ := bgp.NewPathAttributeNextHop(netip.MustParseAddr("10.0.1.2"))
	mp, _ := bgp.NewPathAttributeMpReachNLRI(bgp.RF_IPv6_UC, []bgp.PathNLRI{{NLRI: v6}}, netip.MustParseAddr("fd00:1::2"), netip.MustParseAddr("fe80::2"))
	for _, tc := range []struct {
		name string
		path *apiutil.Path
		ibgp bool
		want candidate
	}{
		{"eBGP IPv4", &apiutil.Path{Nlri: v4, Attrs: []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_INCOMPLETE), asPath(64512, 64512), nh4,
			bgp.NewPathAttributeMultiExitDisc(7), bgp.NewPathAttributeLocalPref(300),
		}}, false, cand("203.0.113.10/32", "10.0.1.2", rank{localPref: 100, asPathLen: 2, origin: 2, med: 7})},
		{"iBGP IPv4 keeps its local preference", &apiutil.Path{Nlri: v4, Attrs: []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP), nh4, bgp.NewPathAttributeLocalPref(300),
		}}, true, cand("203.0.113.10/32", "10.0.1.2", rank{ibgp: true, localPref: 300})},
		{"IPv6 takes the global next hop", &apiutil.Path{Nlri: v6, Attrs: []bgp.PathAttributeInterface{
			bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP), asPath(64601), mp,
		}}, false, cand("2001:db8::10/128", "fd00:1::2", rank{localPref: 100, asPathLen: 1})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := candidateOf(tc.path, tc.ibgp)
			if !ok || got != tc.want {
				t.Errorf("candidateOf = %+v, %v; want %+v", got, ok, tc.want)
			}
		})
	}
}

// TestPolicies checks the routing policy that keeps routes from peers out of gobgp's
// global RIB and sends the appliance's own routes to upstream peers only.
func TestPolicies(t *testing.T) {
	c := validConfig()
	c.Peers = append(c.Peers, Peer{Name: "bare", Address: netip.MustParseAddr("10.0.5.2"), ASN: 65200, Role: Upstream})
	pol := policies(c)
	if len(pol.Policies) != 2 || pol.Policies[0].Name != importPolicy || pol.Policies[1].Name != exportPolicy {
		t.Fatalf("policies: %v, want %s and %s", pol.Policies, importPolicy, exportPolicy)
	}
	imp := pol.Policies[0].Statements
	if len(imp) != 1 || imp[0].Conditions.RouteType != api.Conditions_ROUTE_TYPE_LOCAL || imp[0].Actions.RouteAction != api.RouteAction_ROUTE_ACTION_ACCEPT {
		t.Errorf("import statements: %v, want only local routes accepted", imp)
	}
	var sets []string
	for _, s := range pol.DefinedSets {
		sets = append(sets, s.Name+"="+s.List[0])
	}
	if want := []string{"upstream-10.0.5.2=10.0.5.2/32", "upstream-fd00:4::2=fd00:4::2/128"}; !slices.Equal(sets, want) {
		t.Errorf("neighbor sets: %q, want %q (the upstream peers, by name)", sets, want)
	}
	exp := pol.Policies[1].Statements
	if len(exp) != 2 {
		t.Fatalf("export statements: %v, want one per upstream", exp)
	}
	for i, s := range exp {
		if s.Conditions.RouteType != api.Conditions_ROUTE_TYPE_LOCAL || s.Conditions.NeighborSet.Name != pol.DefinedSets[i].Name ||
			s.Actions.RouteAction != api.RouteAction_ROUTE_ACTION_ACCEPT {
			t.Errorf("export statement %d: %v, want local routes accepted for %s", i, s, pol.DefinedSets[i].Name)
		}
	}
	if exp[0].Actions.Community != nil || exp[0].Actions.LargeCommunity != nil {
		t.Errorf("bare's statement adds communities: %v", exp[0].Actions)
	}
	if got := exp[1].Actions.Community.GetCommunities(); !slices.Equal(got, []string{"65000:100"}) {
		t.Errorf("up's communities: %q", got)
	}
	if got := exp[1].Actions.LargeCommunity.GetCommunities(); !slices.Equal(got, []string{"4200000000:1:2"}) {
		t.Errorf("up's large communities: %q", got)
	}
}
