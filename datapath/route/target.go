package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Options say where a Target puts its routes and how it marks them.
type Options struct {
	// NetNS is a descriptor of the network namespace; 0: the caller's own.
	NetNS int
	// Table is the routing table; 0: main.
	Table int
	// Protocol is the rtm_protocol that marks the routes of the target: it
	// owns every route with it in Table, and no other. 0: unix.RTPROT_BGP.
	Protocol int
	// Log gets one debug record per route changed; nil: none.
	Log *slog.Logger
}

// Target holds the routes learned from BGP in the kernel. It is meant to be
// driven by one goroutine.
type Target struct {
	h     *netlink.Handle
	s     *nl.NetlinkSocket // b's
	b     *batcher          // sends the changes
	table int
	proto netlink.RouteProtocol
	log   *slog.Logger
	// have is what the kernel holds of ours as of the last Set; nil until
	// read from the kernel.
	have *List
}

// NewTarget opens a netlink handle in the namespace of opt.NetNS.
func NewTarget(opt Options) (*Target, error) {
	if opt.Table == 0 {
		opt.Table = unix.RT_TABLE_MAIN
	}
	if opt.Protocol == 0 {
		opt.Protocol = unix.RTPROT_BGP
	}
	if opt.Table < 0 || int64(opt.Table) > math.MaxUint32 {
		return nil, fmt.Errorf("route: table %d out of range", opt.Table)
	}
	// Protocols up to static belong to the kernel and the operator: owning
	// them would delete their routes.
	if opt.Protocol <= unix.RTPROT_STATIC || opt.Protocol > math.MaxUint8 {
		return nil, fmt.Errorf("route: protocol %d: want a routing daemon's, %d to 255", opt.Protocol, unix.RTPROT_STATIC+1)
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	ns := netns.None()
	if opt.NetNS != 0 {
		ns = netns.NsHandle(opt.NetNS)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("route: open netlink: %w", err)
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("route: open netlink: %w", err)
	}
	// Never wait forever for the kernel's answers.
	b, err := newBatcher(s.GetFd(), 30*time.Second)
	if err != nil {
		h.Close()
		s.Close()
		return nil, err
	}
	return &Target{h: h, s: s, b: b, table: opt.Table, proto: netlink.RouteProtocol(opt.Protocol), log: opt.Log}, nil
}

// Close releases the netlink sockets; the routes stay.
func (t *Target) Close() {
	t.h.Close()
	t.s.Close()
}

// Resync makes the next Set read the kernel rather than trust what the
// target applied last, for when something else may have changed our routes.
func (t *Target) Resync() { t.have = nil }

// Set makes the kernel hold exactly routes among the routes of our protocol
// in our table. It adds the missing ones, replaces in one message those
// whose next hops changed (packets never find the prefix missing; for IPv6
// the kernel swaps in the first next hop and then appends the others, so
// lookups may see only some of them for a moment), then deletes ours that
// are not wanted. It never touches a route of another protocol: a prefix
// held by one is reported and left to it. Next hops may come in any order,
// but not twice.
//
// A route that is refused (invalid, on a prefix held by another protocol,
// or with a next hop that is not on a connected network) is reported and
// the others are still applied; whatever route of ours the kernel holds for
// a refused prefix is left as it is. Set compares routes with what it
// applied last, so calling it again with the same routes sends nothing, and
// its work is in proportion to what changed when routes is made from the
// List of the last Set (List.With); the first call, and the first after
// Resync, read the kernel instead, which adopts the routes of an earlier
// run. A change the kernel refused is tried again by the next Set.
func (t *Target) Set(ctx context.Context, routes *List) error {
	if t.have == nil {
		have, err := t.read(ctx)
		if err != nil {
			return err
		}
		t.have = NewList(have)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	changes, held, fixed, err := plan(t.have, routes)
	errs := []error{err}
	answers, sendErr := t.b.applyAll(changes, t.table, uint8(t.proto))
	debug := t.log.Enabled(ctx, slog.LevelDebug)
	for i, err := range answers {
		c := changes[i]
		if c.op == opDelete && errors.Is(err, unix.ESRCH) {
			err = nil // gone already
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("route: %s %s: %w", c.op, c.route, t.explain(c, err)))
			held[c.route.Prefix] = true
			continue
		}
		if debug {
			t.log.Debug("route changed", "op", c.op, "route", c.route.String())
		}
	}
	if sendErr != nil {
		// What the kernel made of the changes not answered is unknown:
		// the next Set reads it.
		t.have = nil
		return errors.Join(append(errs, sendErr)...)
	}
	t.have = after(t.have, routes, held, fixed)
	return errors.Join(errs...)
}

// Dump reads the routes of our protocol in our table, sorted by prefix,
// their next hops sorted by address.
func (t *Target) Dump(ctx context.Context) ([]Route, error) {
	return t.read(ctx)
}

func (t *Target) explain(c change, err error) error {
	switch {
	case errors.Is(err, unix.EEXIST):
		if p := t.holder(c.route.Prefix); p != "" {
			return fmt.Errorf("prefix held by a route of protocol %s: %w", p, err)
		}
	case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH):
		if off := t.offLink(c.route.NextHops); len(off) > 0 {
			return fmt.Errorf("next hop %s not on a connected network: %w", strings.Join(off, ", "), err)
		}
	}
	return err
}

// holder names the protocol of another route for p in our table, or "".
func (t *Target) holder(p netip.Prefix) string {
	filter := &netlink.Route{Dst: ipNet(p), Table: t.table}
	list, err := t.h.RouteListFiltered(family(p.Addr()), filter, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return ""
	}
	for _, r := range list {
		if r.Protocol != t.proto {
			return r.Protocol.String()
		}
	}
	return ""
}

// offLink lists the next hops that the kernel does not reach directly: it
// refuses a gateway that no connected route covers, without saying which.
func (t *Target) offLink(hops []NextHop) []string {
	var out []string
	for _, nh := range hops {
		rs, err := t.h.RouteGet(nh.Addr.AsSlice())
		if err != nil || len(rs) == 0 || rs[0].Gw != nil {
			out = append(out, nh.Addr.String())
		}
	}
	return out
}

// read returns the routes of ours in the kernel, sorted by prefix, their
// next hops sorted by address. An IPv6
// multipath route is a set of sibling routes in the kernel; current kernels
// dump it as one message with RTA_MULTIPATH, older ones as one route per
// sibling, which read merges.
func (t *Target) read(ctx context.Context) ([]Route, error) {
	filter := &netlink.Route{Table: t.table, Protocol: t.proto}
	var list []netlink.Route
	var err error
	// A dump is interrupted when routes change during it; try again then.
	for range 5 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		list, err = t.h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("route: list table %d protocol %s: %w", t.table, t.proto, err)
	}
	have := map[netip.Prefix][]NextHop{}
	for _, r := range list {
		if r.Dst == nil {
			continue // not IP: MPLS
		}
		dst, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		p := netip.PrefixFrom(dst.Unmap(), ones)
		hops := have[p]
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			hops = append(hops, NextHop{gw.Unmap(), 1})
		}
		for _, nh := range r.MultiPath {
			if gw, ok := netip.AddrFromSlice(nh.Gw); ok {
				hops = append(hops, NextHop{gw.Unmap(), nh.Hops + 1})
			}
		}
		have[p] = hops
	}
	out := make([]Route, 0, len(have))
	for p, hops := range have {
		slices.SortFunc(hops, func(a, b NextHop) int { return a.Addr.Compare(b.Addr) })
		out = append(out, Route{p, hops})
	}
	slices.SortFunc(out, byPrefix)
	return out, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}
