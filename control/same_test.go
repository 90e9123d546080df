package control

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/control/health"
	"portico.dev/appliance/datapath/nft"
	"portico.dev/appliance/datapath/route"
)

// TestSameFields checks that the cheap comparisons know every field of the
// types they compare field by field: a field added later must be compared
// too before this passes.
func TestSameFields(t *testing.T) {
	for typ, want := range map[reflect.Type][]string{
		reflect.TypeFor[VIP]():         {"Name", "Key", "SNAT", "Scheduler", "Health", "Backends", "Slots"},
		reflect.TypeFor[route.Route](): {"Prefix", "NextHops"},
	} {
		var got []string
		for f := range typ.Fields() {
			got = append(got, f.Name)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s has fields %v; the comparisons know %v", typ, got, want)
		}
	}
}

// TestSame changes one thing at a time and checks that the comparisons
// see it, and that equal copies compare equal.
func TestSame(t *testing.T) {
	ap := netip.MustParseAddrPort
	base := func() Desired {
		return Desired{
			VIPs: []VIP{{
				Name: "web", Key: nft.Key{Addr: netip.MustParseAddr("203.0.113.10"), Proto: nft.TCP, Port: 80},
				Health:   &health.Check{Type: "tcp", Rise: 2, Fall: 3},
				Backends: []Backend{{Addr: ap("10.0.1.11:80"), Weight: 1, Up: true}},
				Slots:    []netip.AddrPort{ap("10.0.1.11:80"), ap("10.0.1.11:80")},
			}},
			Routes: route.NewList([]route.Route{{Prefix: netip.MustParsePrefix("10.244.0.0/24"), NextHops: []route.NextHop{{Addr: netip.MustParseAddr("10.0.1.11"), Weight: 1}}}}),
			BGP:    bgp.Config{Global: bgp.Global{ASN: 65000}, Advertisements: []bgp.Advertisement{{Prefix: netip.MustParsePrefix("203.0.113.10/32")}}},
		}
	}
	a := base()
	if !sameDesired(a, a) || !sameDesired(a, base()) {
		t.Fatal("equal Desireds differ")
	}
	for name, change := range map[string]func(d *Desired){
		"name":        func(d *Desired) { d.VIPs[0].Name = "www" },
		"port":        func(d *Desired) { d.VIPs[0].Key.Port = 81 },
		"snat":        func(d *Desired) { d.VIPs[0].SNAT = true },
		"scheduler":   func(d *Desired) { d.VIPs[0].Scheduler = nft.RoundRobin },
		"check":       func(d *Desired) { d.VIPs[0].Health = &health.Check{Type: "tcp", Rise: 2, Fall: 4} },
		"no check":    func(d *Desired) { d.VIPs[0].Health = nil },
		"weight":      func(d *Desired) { d.VIPs[0].Backends[0].Weight = 2 },
		"down":        func(d *Desired) { d.VIPs[0].Backends[0].Up = false },
		"slot":        func(d *Desired) { d.VIPs[0].Slots[1] = ap("10.0.1.12:80") },
		"fewer slots": func(d *Desired) { d.VIPs[0].Slots = d.VIPs[0].Slots[:1] },
		"no VIP":      func(d *Desired) { d.VIPs = nil },
		"next hop": func(d *Desired) {
			d.Routes = d.Routes.With([]route.Route{{Prefix: netip.MustParsePrefix("10.244.0.0/24"), NextHops: []route.NextHop{{Addr: netip.MustParseAddr("10.0.1.11"), Weight: 2}}}})
		},
		"route": func(d *Desired) {
			d.Routes = d.Routes.With([]route.Route{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), NextHops: []route.NextHop{{Addr: netip.MustParseAddr("10.0.1.11"), Weight: 1}}}})
		},
		"no route":      func(d *Desired) { d.Routes = nil },
		"asn":           func(d *Desired) { d.BGP.Global.ASN = 65001 },
		"advertisement": func(d *Desired) { d.BGP.Advertisements = nil },
		"peer":          func(d *Desired) { d.BGP.Peers = []bgp.Peer{{Name: "up"}} },
	} {
		b := base()
		change(&b)
		if sameDesired(a, b) || sameDesired(b, a) {
			t.Errorf("%s: changed, yet the same", name)
		}
	}
	// Addresses: the same set in another shape is the same.
	b := base()
	b.VIPs = append(b.VIPs, b.VIPs[0])
	b.VIPs[1].Key.Port = 443
	if !sameAddresses(a, b) {
		t.Error("a second VIP on the same address changed the addresses")
	}
	b.VIPs[1].Key.Addr = netip.MustParseAddr("203.0.113.11")
	if sameAddresses(a, b) {
		t.Error("a VIP on a new address did not change the addresses")
	}
}
