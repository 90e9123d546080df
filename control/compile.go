package control

import (
	"fmt"
	"net/netip"
	"slices"

	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/control/config"
	"portico.dev/appliance/control/health"
	"portico.dev/appliance/control/ipam"
	"portico.dev/appliance/control/maglev"
	"portico.dev/appliance/datapath/nft"
	"portico.dev/appliance/datapath/route"
)

// Inputs are everything compile reads.
type Inputs struct {
	Config *config.Config
	// Health is the state of checked backends by HealthID. A checked
	// backend missing here is taken as up: a new backend gets traffic
	// until its check says otherwise, as on other load balancers.
	Health map[string]bool
	// Learned are the routes node peers announce, as the BGP speaker
	// accepted them.
	Learned *route.List
	// Cache, when set, keeps each compiled VIP from one compile to the
	// next while its configuration and its backends' health do not change.
	Cache *Cache
	// Kubernetes are the clusters' Services and the addresses IPAM gave
	// them; each Service port on each address becomes a VIP beside the
	// configured ones (see compileKubernetes).
	Kubernetes Kubernetes
}

// Warning is something compile refused or wants an operator to know.
type Warning struct {
	Path    string
	Message string
	// Service is the Kubernetes Service the warning is about, so that the
	// daemon can record it as an Event; zero for anything else.
	Service ipam.Key
}

func (w Warning) String() string { return w.Path + ": " + w.Message }

// Compile turns inputs into a Desired. It is pure: the same inputs give the
// same Desired. The configuration must have passed validation.
func Compile(in Inputs) (Desired, []Warning) {
	var d Desired
	var warns []Warning
	in.Cache.begin()
	if n := len(in.Config.VIPs); n > 0 {
		d.VIPs = make([]VIP, 0, n)
	}
	for i, cv := range in.Config.VIPs {
		v, err := in.Cache.vip(cv, in.Health)
		if err != nil {
			warns = append(warns, Warning{Path: fmt.Sprintf("vips[%d]", i), Message: err.Error()})
		}
		if len(v.Slots) == 0 {
			warns = append(warns, Warning{Path: fmt.Sprintf("vips[%d]", i), Message: "no backend is up: new connections to " + v.Key.String() + " are refused"})
		}
		d.VIPs = append(d.VIPs, v)
	}
	kvips, kwarns := compileKubernetes(in.Config.Kubernetes.ForwardTo, in.Kubernetes, d.VIPs, in.Cache)
	d.VIPs = append(d.VIPs, kvips...)
	warns = append(warns, kwarns...)
	in.Cache.end()
	slices.SortFunc(d.VIPs, func(a, b VIP) int { return a.Key.Compare(b.Key) })
	d.BGP, warns = compileBGP(in.Config.BGP, d, warns)
	d.Routes = in.Learned
	return d, warns
}

// compileVIP turns one VIP of the configuration into a VIP of the Desired;
// the error says why it has no lookup table.
func compileVIP(cv config.VIP, state map[string]bool) (VIP, error) {
	addr := netip.MustParseAddr(cv.Address)
	v := VIP{
		Name: cv.Name,
		Key:  nft.Key{Addr: addr, Proto: nft.TCP, Port: uint16(cv.Port)},
		SNAT: cv.SNAT,
	}
	if cv.Protocol == "udp" {
		v.Key.Proto = nft.UDP
	}
	if cv.Scheduler == "round-robin" {
		v.Scheduler = nft.RoundRobin
	}
	if h := cv.Health; h != nil {
		v.Health = &health.Check{Type: h.Type, Path: h.Path, Interval: h.Interval, Timeout: h.Timeout, Rise: h.Rise, Fall: h.Fall}
	}
	for _, cb := range cv.Backends {
		ap := netip.MustParseAddrPort(cb.Address)
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		up := true
		if v.Health != nil {
			if h, ok := state[HealthID(v.Name, ap)]; ok {
				up = h
			}
		}
		v.Backends = append(v.Backends, Backend{Addr: ap, Weight: *cb.Weight, Up: up})
	}
	slices.SortFunc(v.Backends, func(a, b Backend) int { return a.Addr.Compare(b.Addr) })
	slots, err := table(v)
	if err != nil {
		return v, fmt.Errorf("lookup table: %w", err)
	}
	v.Slots = slots
	return v, nil
}

// compileBGP maps the bgp section onto the speaker's configuration, and
// advertises every VIP address that has a backend up, so that upstream
// routers stop sending traffic the appliance cannot serve.
func compileBGP(c config.BGP, d Desired, warns []Warning) (bgp.Config, []Warning) {
	var out bgp.Config
	if c.ASN == 0 {
		return out, warns
	}
	out.Global = bgp.Global{ASN: c.ASN, RouterID: netip.MustParseAddr(c.RouterID), ListenPort: c.ListenPort}
	if gr := c.GracefulRestart; gr.Enabled {
		out.Global.GracefulRestart = bgp.GracefulRestart{Enabled: true, RestartTime: gr.RestartTime}
	}
	for _, p := range c.Peers {
		peer := bgp.Peer{
			Name: p.Name, Address: netip.MustParseAddr(p.Address), ASN: p.ASN, Password: p.Password,
			Multihop: p.Multihop, HoldTime: p.HoldTime, Keepalive: p.Keepalive,
			MaxPrefixes: p.MaxPrefixes, Communities: p.Communities, Role: bgp.Node,
		}
		if p.Role == "upstream" {
			peer.Role = bgp.Upstream
		}
		for _, a := range p.Accept {
			peer.Accept = append(peer.Accept, netip.MustParsePrefix(a))
		}
		if p.BFD.Enabled {
			peer.BFD = bgp.BFD{Interval: p.BFD.Interval, Multiplier: p.BFD.Multiplier}
		}
		out.Peers = append(out.Peers, peer)
	}
	up := map[netip.Addr]bool{}
	for _, v := range d.VIPs {
		if len(v.Slots) > 0 {
			up[v.Key.Addr] = true
		}
	}
	for _, a := range d.Addresses() {
		if up[a] {
			out.Advertisements = append(out.Advertisements, bgp.Advertisement{Prefix: netip.PrefixFrom(a, a.BitLen())})
		}
	}
	return out, warns
}

// table builds the lookup table over the backends that are up. A Maglev
// table's size comes from all configured backends, up or not: were it
// taken from the healthy ones, a backend going down would change the size
// and move most flows instead of about that backend's share.
func table(v VIP) ([]netip.AddrPort, error) {
	var up []Backend
	total, upTotal := 0, 0
	for _, b := range v.Backends {
		total += b.Weight
		if b.Up {
			up = append(up, b)
			upTotal += b.Weight
		}
	}
	if len(up) == 0 {
		return nil, nil
	}
	if v.Scheduler == nft.RoundRobin {
		return roundRobin(up, upTotal), nil
	}
	mb := make([]maglev.Backend, len(up))
	for i, b := range up {
		mb[i] = maglev.Backend{ID: b.Addr.String(), Weight: b.Weight}
	}
	idx, err := maglev.Build(mb, maglev.Size(total))
	if err != nil {
		return nil, err
	}
	out := make([]netip.AddrPort, len(idx))
	for i, j := range idx {
		out[i] = up[j].Addr
	}
	return out, nil
}

// roundRobin lays out total slots so that a counter walking them visits
// each backend in proportion to its weight, spread out rather than in runs
// (smooth weighted round robin, as nginx does).
func roundRobin(up []Backend, total int) []netip.AddrPort {
	cur := make([]int, len(up))
	out := make([]netip.AddrPort, 0, total)
	for range total {
		best := 0
		for i, b := range up {
			cur[i] += b.Weight
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		out = append(out, up[best].Addr)
	}
	return out
}
