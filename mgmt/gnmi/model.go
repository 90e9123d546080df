package gnmi

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/datapath/route"
)

// The origins the server serves, and the top-level elements of each.
const (
	OriginOpenConfig = "openconfig"
	OriginPortico    = "portico"
)

// model builds the served tree. Its top-level children are the top
// elements of both origins (their names differ); originOf says which is
// whose.
func model(st State, now func() time.Time) *node {
	root := container("",
		openconfig(st, now),
		container("vips", vips(st)),
		container("bgp",
			container("neighbors", porticoNeighbors(st)),
			container("routes", bgpRoutes(st))),
		container("routes", kernelRoutes(st)),
	)
	markConfig(root, false)
	return root
}

// originOf is the origin of a top-level element.
func originOf(top string) string {
	if top == "network-instances" {
		return OriginOpenConfig
	}
	return OriginPortico
}

// openconfig is the OpenConfig subtree: BGP neighbors of the default
// network instance, at the paths of openconfig-network-instance and
// openconfig-bgp, and enable-bfd, which openconfig-bfd gives the neighbor.
func openconfig(st State, now func() time.Time) *node {
	type ni struct{}
	type proto struct{}
	neighbor := list("neighbor", []string{"neighbor-address"},
		func(context.Context, any) ([]bgp.NeighborState, func(bgp.NeighborState) map[string]string, error) {
			return st.Neighbors(), func(n bgp.NeighborState) map[string]string {
				return map[string]string{"neighbor-address": n.Address.String()}
			}, nil
		},
		leaf("neighbor-address", neighborAddress),
		container("config",
			leaf("neighbor-address", neighborAddress),
			leaf("peer-as", peerAS),
			leaf("description", description)),
		container("state",
			leaf("neighbor-address", neighborAddress),
			leaf("peer-as", peerAS),
			leaf("description", description),
			leaf("session-state", func(n bgp.NeighborState) any { return strings.ToUpper(n.State) }),
			leaf("last-established", func(n bgp.NeighborState) any {
				if n.State != "established" {
					return nil
				}
				// timeticks64: nanoseconds since the Unix epoch.
				return uint64(now().Add(-n.Uptime).Truncate(time.Second).UnixNano())
			})),
		container("afi-safis", afiSafi(st)),
		// enabled: the peer has BFD configured. The BFD session's own
		// state has no leaf under the neighbor (openconfig-bfd keys it
		// by interface): it is portico's bfd-state.
		container("enable-bfd",
			container("config", leaf("enabled", bfdEnabled)),
			container("state", leaf("enabled", bfdEnabled))),
		// Only peer-restarting: graceful-restart/state/enabled is the
		// local configuration, which NeighborState does not carry (its
		// GracefulRestart is "negotiated", portico's
		// graceful-restart-negotiated), and stale routes have no
		// OpenConfig leaf (portico's stale).
		container("graceful-restart",
			container("state", leaf("peer-restarting", func(n bgp.NeighborState) any { return n.Restarting }))),
	)
	neighbor.parse, neighbor.configured = parseAddr, true
	protocol := list("protocol", []string{"identifier", "name"},
		func(context.Context, any) ([]proto, func(proto) map[string]string, error) {
			return []proto{{}}, func(proto) map[string]string { return map[string]string{"identifier": "BGP", "name": "BGP"} }, nil
		},
		leaf("identifier", func(proto) any { return "openconfig-policy-types:BGP" }),
		leaf("name", func(proto) any { return "BGP" }),
		container("bgp", container("neighbors", neighbor)),
	)
	protocol.configured = true
	protocol.parse = func(k, v string) (string, error) {
		if k == "identifier" {
			return strings.TrimPrefix(v, "openconfig-policy-types:"), nil
		}
		return v, nil
	}
	instance := list("network-instance", []string{"name"},
		func(context.Context, any) ([]ni, func(ni) map[string]string, error) {
			return []ni{{}}, func(ni) map[string]string { return map[string]string{"name": "default"} }, nil
		},
		leaf("name", func(ni) any { return "default" }),
		container("protocols", protocol),
	)
	instance.configured = true
	return container("network-instances", instance)
}

func neighborAddress(n bgp.NeighborState) any { return n.Address.String() }
func peerAS(n bgp.NeighborState) any          { return n.ASN }
func description(n bgp.NeighborState) any     { return n.Name }
func bfdEnabled(n bgp.NeighborState) any      { return n.BFD != "disabled" }

// afiSafi is a neighbor's one address family: a session carries the
// unicast routes of its peer address's family.
func afiSafi(st State) *node {
	// family is the list's entry: the neighbor, and how many of the
	// routes the appliance installs go through it.
	type family struct {
		bgp.NeighborState
		installed int
	}
	name := func(f family) string {
		if f.Address.Is4() {
			return "IPV4_UNICAST"
		}
		return "IPV6_UNICAST"
	}
	ident := func(f family) any { return "openconfig-bgp-types:" + name(f) }
	enabled := func(family) any { return true }
	l := list("afi-safi", []string{"afi-safi-name"},
		func(_ context.Context, parent any) ([]family, func(family) map[string]string, error) {
			f := family{NeighborState: parent.(bgp.NeighborState)}
			if f.Role == bgp.Node {
				f.installed = installed(st.BGPRoutes(), f.Address)
			}
			return []family{f}, func(f family) map[string]string {
				return map[string]string{"afi-safi-name": name(f)}
			}, nil
		},
		leaf("afi-safi-name", ident),
		container("config", leaf("afi-safi-name", ident), leaf("enabled", enabled)),
		container("state",
			leaf("afi-safi-name", ident),
			leaf("enabled", enabled),
			container("prefixes",
				// received-pre-policy: all the peer sent; received:
				// what its accept list let in; installed: those of
				// them the kernel routes through the peer; sent: what
				// the appliance announces to it.
				leaf("received", func(f family) any { return uint32(f.Accepted) }),
				leaf("received-pre-policy", func(f family) any { return uint32(f.Received) }),
				leaf("installed", func(f family) any { return uint32(f.installed) }),
				leaf("sent", func(f family) any { return uint32(f.Advertised) }))),
	)
	l.parse = func(_, v string) (string, error) { return strings.TrimPrefix(v, "openconfig-bgp-types:"), nil }
	l.configured = true
	return l
}

// installed counts the routes with a next hop at addr. A node announces
// itself as the next hop (MetalLB, Calico and Cilium do), so these are
// the prefixes whose installed route goes through the peer at addr; a
// node that names another next hop shows 0.
func installed(routes []bgp.Learned, addr netip.Addr) int {
	n := 0
	for _, r := range routes {
		if slices.Contains(r.NextHops, addr) {
			n++
		}
	}
	return n
}

// porticoNeighbors is what OpenConfig has no leaf for.
func porticoNeighbors(st State) *node {
	l := list("neighbor", []string{"address"},
		func(context.Context, any) ([]bgp.NeighborState, func(bgp.NeighborState) map[string]string, error) {
			return st.Neighbors(), func(n bgp.NeighborState) map[string]string {
				return map[string]string{"address": n.Address.String()}
			}, nil
		},
		leaf("address", neighborAddress),
		container("state",
			leaf("name", description),
			leaf("role", func(n bgp.NeighborState) any { return n.Role.String() }),
			leaf("rejected", func(n bgp.NeighborState) any { return uint32(n.Rejected) }),
			leaf("last-error", func(n bgp.NeighborState) any { return nonEmpty(n.LastError) }),
			leaf("bfd-state", func(n bgp.NeighborState) any { return n.BFD }),
			leaf("unprotected", func(n bgp.NeighborState) any { return n.Unprotected }),
			leaf("graceful-restart-negotiated", func(n bgp.NeighborState) any { return n.GracefulRestart }),
			leaf("stale", func(n bgp.NeighborState) any { return uint32(n.Stale) })),
	)
	l.parse = parseAddr
	return l
}

func bgpRoutes(st State) *node {
	prefix := func(l bgp.Learned) any { return l.Prefix.String() }
	n := list("route", []string{"prefix"},
		func(context.Context, any) ([]bgp.Learned, func(bgp.Learned) map[string]string, error) {
			return st.BGPRoutes(), func(l bgp.Learned) map[string]string { return map[string]string{"prefix": l.Prefix.String()} }, nil
		},
		leaf("prefix", prefix),
		container("state",
			leaf("prefix", prefix),
			leafList("next-hop", func(l bgp.Learned) []string { return strs(l.NextHops) })),
	)
	n.parse = parsePrefix
	return n
}

// kernelRoutes is the kernel's main table. A prefix and metric do not
// name one route: IPv6 keeps a route per interface for fe80::/64, and
// "ip route append" adds more. The third key, index, tells apart the
// routes of one prefix and metric, in the kernel's order.
func kernelRoutes(st State) *node {
	type kroute struct {
		route.TableRoute
		index int // among the routes of its prefix and metric
	}
	prefix := func(r kroute) any { return r.Prefix.String() }
	metric := func(r kroute) any { return uint32(r.Metric) }
	index := func(r kroute) any { return uint16(r.index) }
	type hop struct {
		index int
		route.TableNextHop
	}
	hopIndex := func(h hop) any { return uint16(h.index) }
	hops := list("next-hop", []string{"index"},
		func(_ context.Context, parent any) ([]hop, func(hop) map[string]string, error) {
			var out []hop
			for i, h := range parent.(kroute).NextHops {
				out = append(out, hop{i, h})
			}
			return out, func(h hop) map[string]string { return map[string]string{"index": strconv.Itoa(h.index)} }, nil
		},
		leaf("index", hopIndex),
		container("state",
			leaf("index", hopIndex),
			leaf("address", func(h hop) any {
				if !h.Addr.IsValid() {
					return nil
				}
				return h.Addr.String()
			}),
			leaf("interface", func(h hop) any { return nonEmpty(h.Interface) }),
			leaf("weight", func(h hop) any { return uint16(h.Weight) })),
	)
	hops.parse = parseUint(16)
	n := list("route", []string{"prefix", "metric", "index"},
		func(ctx context.Context, _ any) ([]kroute, func(kroute) map[string]string, error) {
			rs, err := st.KernelRoutes(ctx)
			out := make([]kroute, len(rs))
			type pm struct {
				p netip.Prefix
				m int
			}
			seen := map[pm]int{}
			for i, r := range rs {
				k := pm{r.Prefix, r.Metric}
				out[i] = kroute{r, seen[k]}
				seen[k]++
			}
			return out, func(r kroute) map[string]string {
				return map[string]string{"prefix": r.Prefix.String(), "metric": strconv.Itoa(r.Metric), "index": strconv.Itoa(r.index)}
			}, err
		},
		leaf("prefix", prefix),
		leaf("metric", metric),
		leaf("index", index),
		container("state",
			leaf("prefix", prefix),
			leaf("metric", metric),
			leaf("index", index),
			leaf("protocol", func(r kroute) any { return r.Protocol }),
			leaf("type", func(r kroute) any { return r.Type })),
		container("next-hops", hops),
	)
	n.parse = func(k, v string) (string, error) {
		switch k {
		case "metric":
			return parseUint(32)(k, v)
		case "index":
			return parseUint(16)(k, v)
		}
		return parsePrefix(k, v)
	}
	return n
}

func vips(st State) *node {
	name := func(v VIP) any { return v.Name }
	counters := func(c func(any) Counters) *node {
		return container("counters",
			&node{name: "packets", kind: leafKind, value: func(d any) any { return c(d).Packets }},
			&node{name: "bytes", kind: leafKind, value: func(d any) any { return c(d).Bytes }})
	}
	beAddr := func(b Backend) any { return b.Address.String() }
	backends := list("backend", []string{"address"},
		func(_ context.Context, parent any) ([]Backend, func(Backend) map[string]string, error) {
			return parent.(VIP).Backends, func(b Backend) map[string]string { return map[string]string{"address": b.Address.String()} }, nil
		},
		leaf("address", beAddr),
		container("config",
			leaf("address", beAddr),
			leaf("weight", func(b Backend) any { return uint16(b.Weight) })),
		container("state",
			leaf("health", func(b Backend) any { return string(b.Health) }),
			counters(func(d any) Counters { return d.(Backend).Counters })),
	)
	backends.configured = true
	backends.parse = func(_, v string) (string, error) {
		ap, err := netip.ParseAddrPort(v)
		if err != nil {
			return "", errors.New("not address:port")
		}
		return ap.String(), nil
	}
	l := list("vip", []string{"name"},
		func(ctx context.Context, _ any) ([]VIP, func(VIP) map[string]string, error) {
			vs, err := st.VIPs(ctx)
			return vs, func(v VIP) map[string]string { return map[string]string{"name": v.Name} }, err
		},
		leaf("name", name),
		container("config",
			leaf("name", name),
			leaf("address", func(v VIP) any { return v.Address.String() }),
			leaf("port", func(v VIP) any { return v.Port }),
			leaf("protocol", func(v VIP) any { return v.Protocol }),
			leaf("scheduler", func(v VIP) any { return v.Scheduler }),
			leaf("snat", func(v VIP) any { return v.SNAT })),
		container("state", counters(func(d any) Counters { return d.(VIP).Counters })),
		container("backends", backends),
	)
	l.configured = true
	return l
}

func parseAddr(_, v string) (string, error) {
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return "", errors.New("not an IP address")
	}
	return a.String(), nil
}

func parsePrefix(_, v string) (string, error) {
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return "", errors.New("not a prefix (address/length)")
	}
	if p.Masked() != p {
		return "", fmt.Errorf("not a network prefix: the address bits past /%d must be zero", p.Bits())
	}
	return p.String(), nil
}

func parseUint(bits int) func(_, v string) (string, error) {
	return func(_, v string) (string, error) {
		n, err := strconv.ParseUint(v, 10, bits)
		if err != nil {
			return "", fmt.Errorf("not a %d-bit unsigned number", bits)
		}
		return strconv.FormatUint(n, 10), nil
	}
}

func nonEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func strs(as []netip.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return slices.Clip(out)
}
