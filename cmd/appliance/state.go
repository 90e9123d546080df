package main

import (
	"context"
	"fmt"

	"portico.dev/appliance/control"
	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/datapath/nft"
	"portico.dev/appliance/datapath/route"
	"portico.dev/appliance/mgmt/gnmi"
)

// daemonState is what the gNMI server reads: the BGP speaker's snapshot,
// the last Desired the reconciler applied, the kernel's counters and main
// routing table.
type daemonState struct {
	speaker *bgp.Speaker
	rec     *control.Reconciler
	l4      *nft.Target
}

func (s daemonState) Neighbors() []bgp.NeighborState { return s.speaker.Neighbors() }

func (s daemonState) BGPRoutes() []bgp.Learned { return s.speaker.Routes() }

func (s daemonState) KernelRoutes(ctx context.Context) ([]route.TableRoute, error) {
	return route.ReadTable(ctx, 0, 0)
}

func (s daemonState) VIPs(ctx context.Context) ([]gnmi.VIP, error) {
	d := s.rec.Applied()
	if d == nil || len(d.VIPs) == 0 {
		return nil, nil
	}
	counters, err := s.l4.Counters(ctx)
	if err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	return vipsOf(d, counters), nil
}

// vipsOf is the gNMI view of the applied VIPs.
func vipsOf(d *control.Desired, c nft.Counters) []gnmi.VIP {
	out := make([]gnmi.VIP, 0, len(d.VIPs))
	for _, v := range d.VIPs {
		g := gnmi.VIP{
			Name: v.Name, Address: v.Key.Addr, Port: v.Key.Port, Protocol: v.Key.Proto.String(),
			Scheduler: "maglev", SNAT: v.SNAT, Counters: gnmi.Counters(c.VIPs[v.Key]),
		}
		if v.Scheduler == nft.RoundRobin {
			g.Scheduler = "round-robin"
		}
		for _, b := range v.Backends {
			h := gnmi.HealthUnchecked
			switch {
			case v.Health != nil && b.Up:
				h = gnmi.HealthUp
			case v.Health != nil:
				h = gnmi.HealthDown
			}
			g.Backends = append(g.Backends, gnmi.Backend{
				Address: b.Addr, Weight: b.Weight, Health: h, Counters: gnmi.Counters(c.Backends[v.Key][b.Addr]),
			})
		}
		out = append(out, g)
	}
	return out
}
