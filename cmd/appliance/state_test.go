package main

import (
	"net/netip"
	"reflect"
	"testing"

	"portico.dev/appliance/control"
	"portico.dev/appliance/control/health"
	"portico.dev/appliance/datapath/nft"
	"portico.dev/appliance/mgmt/gnmi"
)

// The served VIPs are the applied ones: a backend of a checked VIP is up
// or down as its check says, one of an unchecked VIP is unchecked; the
// counters are the kernel's, zero for what it has not counted.
func TestVIPsOf(t *testing.T) {
	web := nft.Key{Addr: netip.MustParseAddr("203.0.113.10"), Proto: nft.TCP, Port: 80}
	dns := nft.Key{Addr: netip.MustParseAddr("203.0.113.53"), Proto: nft.UDP, Port: 53}
	be1, be2 := netip.MustParseAddrPort("10.0.1.11:8080"), netip.MustParseAddrPort("10.0.1.12:8080")
	d := &control.Desired{VIPs: []control.VIP{
		{Name: "web", Key: web, Scheduler: nft.Hash, Health: &health.Check{Type: "tcp"},
			Backends: []control.Backend{{Addr: be1, Weight: 1, Up: true}, {Addr: be2, Weight: 3, Up: false}}},
		{Name: "dns", Key: dns, Scheduler: nft.RoundRobin, SNAT: true,
			Backends: []control.Backend{{Addr: be1, Weight: 1, Up: true}}},
	}}
	c := nft.Counters{
		VIPs:     map[nft.Key]nft.Counter{web: {Packets: 4, Bytes: 400}},
		Backends: map[nft.Key]map[netip.AddrPort]nft.Counter{web: {be1: {Packets: 4, Bytes: 400}}},
	}
	want := []gnmi.VIP{
		{Name: "web", Address: web.Addr, Port: 80, Protocol: "tcp", Scheduler: "maglev", Counters: gnmi.Counters{Packets: 4, Bytes: 400},
			Backends: []gnmi.Backend{
				{Address: be1, Weight: 1, Health: gnmi.HealthUp, Counters: gnmi.Counters{Packets: 4, Bytes: 400}},
				{Address: be2, Weight: 3, Health: gnmi.HealthDown},
			}},
		{Name: "dns", Address: dns.Addr, Port: 53, Protocol: "udp", Scheduler: "round-robin", SNAT: true,
			Backends: []gnmi.Backend{{Address: be1, Weight: 1, Health: gnmi.HealthUnchecked}}},
	}
	if got := vipsOf(d, c); !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}
}
