package route

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TableRoute is one route of a kernel routing table, whoever put it there:
// the kernel for a connected network, the operator, a DHCP client, or the
// appliance itself (protocol bgp).
type TableRoute struct {
	Prefix netip.Prefix
	// Protocol is who installed it, as ip route names it: kernel, boot,
	// static, dhcp, bgp, ..., or the number for one without a name.
	Protocol string
	// Type is unicast for a route that forwards, else blackhole,
	// unreachable, prohibit, throw, ...
	Type string
	// Metric is the route's priority: of two routes for a prefix the
	// lower wins.
	Metric int
	// NextHops are where a unicast route sends packets, in the kernel's
	// order; none for the other types.
	NextHops []TableNextHop
}

// TableNextHop is one next hop of a TableRoute.
type TableNextHop struct {
	Addr      netip.Addr // the gateway; invalid for a directly connected network
	Interface string     // the outgoing interface; "" if the kernel names none
	Weight    int        // share of the flows, 1 to 256; 1 for a single next hop
}

// ReadTable returns every IPv4 and IPv6 route of routing table table
// (0: main) in the network namespace netns (a descriptor; 0: the caller's
// own), of every protocol, sorted by prefix then metric. It opens its own
// netlink socket, so it may be called from any goroutine, beside a Target.
func ReadTable(ctx context.Context, netnsFd, table int) ([]TableRoute, error) {
	if table == 0 {
		table = unix.RT_TABLE_MAIN
	}
	var h *netlink.Handle
	var err error
	if netnsFd != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(netnsFd))
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("route: open netlink: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("route: list links: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var list []netlink.Route
	// A dump is interrupted when routes change during it; try again then.
	for range 5 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		list, err = h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("route: list table %d: %w", table, err)
	}
	out := make([]TableRoute, 0, len(list))
	for _, r := range list {
		if r.Dst == nil {
			continue // not IP: MPLS
		}
		dst, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		tr := TableRoute{
			Prefix:   netip.PrefixFrom(dst.Unmap(), ones),
			Protocol: r.Protocol.String(),
			Type:     typeName(r.Type),
			Metric:   r.Priority,
		}
		if r.Type == unix.RTN_UNICAST {
			if len(r.MultiPath) == 0 {
				tr.NextHops = []TableNextHop{{Addr: gateway(r.Gw), Interface: names[r.LinkIndex], Weight: 1}}
			}
			for _, nh := range r.MultiPath {
				tr.NextHops = append(tr.NextHops, TableNextHop{Addr: gateway(nh.Gw), Interface: names[nh.LinkIndex], Weight: nh.Hops + 1})
			}
		}
		out = append(out, tr)
	}
	slices.SortStableFunc(out, func(a, b TableRoute) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()); c != 0 {
			return c
		}
		return cmp.Compare(a.Metric, b.Metric)
	})
	return out, nil
}

func gateway(ip []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// typeName names a route type as ip route does.
func typeName(t int) string {
	switch t {
	case unix.RTN_UNICAST:
		return "unicast"
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BROADCAST:
		return "broadcast"
	case unix.RTN_ANYCAST:
		return "anycast"
	case unix.RTN_MULTICAST:
		return "multicast"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_THROW:
		return "throw"
	case unix.RTN_NAT:
		return "nat"
	}
	return strconv.Itoa(t)
}
