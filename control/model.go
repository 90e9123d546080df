// Package control is the appliance's brain: the Desired model, the pure
// compile step that turns inputs (configuration, health) into a Desired,
// and the reconciler that owns the current Desired and makes the datapath
// targets match it. Nothing here talks to the kernel directly; the targets
// it drives are interfaces whose real implementations live in datapath/.
package control

import (
	"net/netip"
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
	// Routes are the kernel routes learned from node peers, sorted by
	// prefix: one next hop per node.
	Routes []route.Route `json:"routes,omitempty"`
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

// Services is the L4 datapath's part of the Desired.
func (d Desired) Services() []nft.Service {
	out := make([]nft.Service, 0, len(d.VIPs))
	for _, v := range d.VIPs {
		s := nft.Service{Key: v.Key, SNAT: v.SNAT, Scheduler: v.Scheduler, Slots: v.Slots}
		for _, b := range v.Backends {
			s.Backends = append(s.Backends, b.Addr)
		}
		out = append(out, s)
	}
	return out
}

// Addresses are the VIP addresses the appliance must own, sorted, each once.
func (d Desired) Addresses() []netip.Addr {
	var out []netip.Addr
	for _, v := range d.VIPs {
		out = append(out, v.Key.Addr)
	}
	slices.SortFunc(out, netip.Addr.Compare)
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
