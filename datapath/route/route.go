package route

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// NextHop is one gateway of a route. Weight is its share of the flows, 1 to
// 256 (the kernel keeps rtnh_hops, one less); 0 means 1. A route with a
// single next hop has no weight in the kernel, so Set treats it as 1.
type NextHop struct {
	Addr   netip.Addr
	Weight int
}

// Route is one prefix with its next hops, one per cluster node announcing
// it. Set takes the next hops in any order but refuses duplicates; Dump
// returns them sorted by address. A route with no next hops is not wanted:
// Set deletes ours for its prefix.
type Route struct {
	Prefix   netip.Prefix
	NextHops []NextHop
}

// String formats r as "203.0.113.10/32 via 10.0.1.2, 10.0.2.2 weight 3".
func (r Route) String() string {
	var b strings.Builder
	b.WriteString(r.Prefix.String())
	for i, nh := range r.NextHops {
		if i == 0 {
			b.WriteString(" via ")
		} else {
			b.WriteString(", ")
		}
		b.WriteString(nh.Addr.String())
		if nh.Weight != 1 {
			b.WriteString(" weight " + strconv.Itoa(nh.Weight))
		}
	}
	return b.String()
}

// desired checks routes and returns the next hops wanted for each prefix,
// sorted by address with weights filled in, and the prefixes of the routes
// it refused: nothing is sent for those, so whatever route of ours the
// kernel holds for them stays as it is.
func desired(routes []Route) (want map[netip.Prefix][]NextHop, held map[netip.Prefix]bool, err error) {
	want = map[netip.Prefix][]NextHop{}
	held = map[netip.Prefix]bool{}
	seen := map[netip.Prefix]bool{}
	var errs []error
	for _, r := range routes {
		if !r.Prefix.IsValid() {
			errs = append(errs, fmt.Errorf("route: %s: invalid prefix", r))
			continue
		}
		p := r.Prefix.Masked()
		if seen[p] {
			errs = append(errs, fmt.Errorf("route: %s: prefix given twice", p))
			held[p] = true
			delete(want, p)
			continue
		}
		seen[p] = true
		hops, err := nextHops(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("route: %s: %w", r, err))
			held[p] = true
			continue
		}
		if len(hops) > 0 {
			want[p] = hops
		}
	}
	return want, held, errors.Join(errs...)
}

// nextHops checks the next hops of r and returns them sorted, with weights
// filled in.
func nextHops(r Route) ([]NextHop, error) {
	if r.Prefix != r.Prefix.Masked() {
		return nil, fmt.Errorf("host bits set (the prefix is %s)", r.Prefix.Masked())
	}
	hops := slices.Clone(r.NextHops)
	for i, nh := range hops {
		switch {
		case !nh.Addr.IsValid():
			return nil, errors.New("invalid next hop")
		case nh.Addr.Is4() != r.Prefix.Addr().Is4():
			// An IPv4 prefix over an IPv6 next hop (RFC 8950) would need RTA_VIA.
			return nil, fmt.Errorf("next hop %s is not of the prefix's family", nh.Addr)
		case nh.Weight < 0 || nh.Weight > 256:
			return nil, fmt.Errorf("next hop %s: weight %d out of 1..256", nh.Addr, nh.Weight)
		case nh.Weight == 0 || len(hops) == 1:
			hops[i].Weight = 1
		}
	}
	slices.SortFunc(hops, func(a, b NextHop) int { return a.Addr.Compare(b.Addr) })
	for i := 1; i < len(hops); i++ {
		if hops[i].Addr == hops[i-1].Addr {
			return nil, fmt.Errorf("next hop %s given twice", hops[i].Addr)
		}
	}
	return hops, nil
}

// An op is what Set asks of the kernel for one prefix.
type op string

const (
	opAdd     op = "add"
	opReplace op = "replace"
	opDelete  op = "delete"
)

type change struct {
	op    op
	route Route // for a delete, the route as it was
}

// diff returns the changes that turn have into want, leaving the held
// prefixes alone: adds and replaces first, then deletes, so that a prefix
// moving to a wider one never leaves a gap; each group sorted by prefix.
func diff(have, want map[netip.Prefix][]NextHop, held map[netip.Prefix]bool) []change {
	var set, del []change
	for p, hops := range want {
		old, ok := have[p]
		switch {
		case !ok:
			set = append(set, change{opAdd, Route{p, hops}})
		case !slices.Equal(old, hops):
			set = append(set, change{opReplace, Route{p, hops}})
		}
	}
	for p, hops := range have {
		if _, ok := want[p]; !ok && !held[p] {
			del = append(del, change{opDelete, Route{p, hops}})
		}
	}
	byPrefix := func(a, b change) int { return a.route.Prefix.Compare(b.route.Prefix) }
	slices.SortFunc(set, byPrefix)
	slices.SortFunc(del, byPrefix)
	return append(set, del...)
}
