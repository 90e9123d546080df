// Package control is the appliance's brain: the Desired model, the pure
// compile step that turns inputs (configuration, health, Kubernetes
// Services) into a Desired, and the reconciler that owns the current
// Desired and makes the datapath targets match it. Nothing here talks to
// the kernel directly; the targets it drives are interfaces whose real
// implementations live in datapath/.
package control

import (
	"net/netip"
	"reflect"
	"slices"

	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/control/health"
	"portico.dev/appliance/datapath/nft"
	"portico.dev/appliance/datapath/route"
)

// Desired is everything the datapath should hold. It is a value: compile
// builds a new one for every change and nobody modifies one after that.
type Desired struct {
	// VIPs sorted by key.
	VIPs []VIP `json:"vips"`
	// Routes are the kernel routes learned from node peers: one next hop
	// per node. They are not stored (the kernel keeps them).
	Routes *route.List `json:"-"`
	// BGP is the speaker's peers and what it announces upstream.
	BGP bgp.Config `json:"bgp"`
}

// VIP is one L4 service with its backends and lookup table.
type VIP struct {
	Name      string        `json:"name"`
	Key       nft.Key       `json:"key"`
	SNAT      bool          `json:"snat"`
	Scheduler nft.Scheduler `json:"scheduler"`
	// Health is the active check of every backend; nil means none, and every
	// backend is taken as up.
	Health   *health.Check `json:"health,omitempty"`
	Backends []Backend     `json:"backends"`
	// Slots is the lookup table over the backends that are up.
	Slots []netip.AddrPort `json:"slots"`
}

// Backend is one destination of a VIP.
type Backend struct {
	Addr   netip.AddrPort `json:"addr"`
	Weight int            `json:"weight"`
	Up     bool           `json:"up"`
}

// HealthID names a backend's health check: VIP name and backend address.
func HealthID(vip string, b netip.AddrPort) string { return vip + "/" + b.String() }

// Services is the L4 datapath's part of the Desired. Their Slots are the
// VIPs' own slices, which nobody modifies (the L4 target keeps them).
func (d Desired) Services() []nft.Service {
	out := make([]nft.Service, 0, len(d.VIPs))
	n := 0
	for _, v := range d.VIPs {
		n += len(v.Backends)
	}
	backends := make([]netip.AddrPort, 0, n) // one allocation for all
	for _, v := range d.VIPs {
		s := nft.Service{Key: v.Key, SNAT: v.SNAT, Scheduler: v.Scheduler, Slots: v.Slots}
		start := len(backends)
		for _, b := range v.Backends {
			backends = append(backends, b.Addr)
		}
		if len(backends) > start {
			s.Backends = backends[start:len(backends):len(backends)]
		}
		out = append(out, s)
	}
	return out
}

// service is the VIP as the L4 datapath takes it.
func (v VIP) service() nft.Service {
	s := nft.Service{Key: v.Key, SNAT: v.SNAT, Scheduler: v.Scheduler, Slots: v.Slots}
	if len(v.Backends) > 0 {
		s.Backends = make([]netip.AddrPort, len(v.Backends))
		for i, b := range v.Backends {
			s.Backends[i] = b.Addr
		}
	}
	return s
}

// Addresses are the VIP addresses the appliance must own, sorted, each once.
func (d Desired) Addresses() []netip.Addr {
	out := make([]netip.Addr, 0, len(d.VIPs))
	for _, v := range d.VIPs {
		out = append(out, v.Key.Addr)
	}
	// VIPs are sorted by key, so by address first: sorting is only
	// needed for a Desired built otherwise.
	if !slices.IsSortedFunc(out, netip.Addr.Compare) {
		slices.SortFunc(out, netip.Addr.Compare)
	}
	return slices.Compact(out)
}

// HealthTargets are the backends to check, seeded with their current state.
func (d Desired) HealthTargets() []health.Target {
	var out []health.Target
	for _, v := range d.VIPs {
		if v.Health == nil {
			continue
		}
		for _, b := range v.Backends {
			out = append(out, health.Target{ID: HealthID(v.Name, b.Addr), Addr: b.Addr, Check: *v.Health, Up: b.Up})
		}
	}
	return out
}

// Health is the up/down state of every backend of the Desired, by HealthID.
func (d Desired) Health() map[string]bool {
	out := map[string]bool{}
	for _, v := range d.VIPs {
		for _, b := range v.Backends {
			out[HealthID(v.Name, b.Addr)] = b.Up
		}
	}
	return out
}

// checkedHealth is Health for the backends that have a health check, the
// only ones whose state can change: the others are always up.
func (d Desired) checkedHealth() map[string]bool {
	out := map[string]bool{}
	for _, v := range d.VIPs {
		if v.Health == nil {
			continue
		}
		for _, b := range v.Backends {
			out[HealthID(v.Name, b.Addr)] = b.Up
		}
	}
	return out
}

// The comparisons below let an Apply find what changed at 10,000 VIPs in a
// fraction of a millisecond, where reflect.DeepEqual takes tens: slices
// that compile reused (see Cache) compare by address.

// sameness says which parts of two Desireds are equal.
type sameness struct {
	vips, routes, bgp, rest bool
}

func (s sameness) all() bool { return s.vips && s.routes && s.bgp && s.rest }

func compareDesired(a, b Desired) sameness {
	s := sameness{vips: sameVIPs(a.VIPs, b.VIPs), routes: sameRoutes(a.Routes, b.Routes), bgp: sameBGP(a.BGP, b.BGP)}
	a.VIPs, a.Routes, a.BGP = nil, nil, bgp.Config{}
	b.VIPs, b.Routes, b.BGP = nil, nil, bgp.Config{}
	s.rest = reflect.DeepEqual(a, b)
	return s
}

// sameDesired reports whether a and b are equal.
func sameDesired(a, b Desired) bool { return compareDesired(a, b).all() }

func sameVIPs(a, b []VIP) bool { return slices.EqualFunc(a, b, sameVIP) }

func sameVIP(a, b VIP) bool {
	return a.Name == b.Name && a.Key == b.Key && a.SNAT == b.SNAT && a.Scheduler == b.Scheduler &&
		(a.Health == b.Health || a.Health != nil && b.Health != nil && *a.Health == *b.Health) &&
		sameSlice(a.Backends, b.Backends) && sameSlice(a.Slots, b.Slots)
}

// sameSlice is slices.Equal, at once for a slice compared with itself.
func sameSlice[E comparable](a, b []E) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return slices.Equal(a, b)
}

func sameRoutes(a, b *route.List) bool { return route.Equal(a, b) }

func sameBGP(a, b bgp.Config) bool {
	if !slices.Equal(a.Advertisements, b.Advertisements) {
		return false
	}
	a.Advertisements, b.Advertisements = nil, nil
	return reflect.DeepEqual(a, b)
}

// sameAddresses reports whether a and b own the same addresses, cheaply
// when their VIPs are on the same addresses in the same order.
func sameAddresses(a, b Desired) bool {
	if len(a.VIPs) == len(b.VIPs) {
		same := true
		for i := range a.VIPs {
			if a.VIPs[i].Key.Addr != b.VIPs[i].Key.Addr {
				same = false
				break
			}
		}
		if same {
			return true
		}
	}
	return slices.Equal(a.Addresses(), b.Addresses())
}
