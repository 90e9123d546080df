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
// returns them sorted by address. A List holds no route without next hops:
// List.With takes one as the removal of its prefix's route.
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

// plan returns the changes that make the kernel, which holds have, hold
// want: adds and replaces first, then deletes, so that a prefix moving to a
// wider one never leaves a gap; each group in prefix order, with next hops
// sorted by address and weights filled in. Routes it refuses are reported
// and nothing is sent for their prefixes (a prefix with host bits set holds
// its masked prefix too), so that whatever route of ours the kernel holds
// for them stays as it is: held lists those prefixes, and fixed the routes
// of want whose next hops it sorted or weighed.
func plan(have, want *List) (changes []change, held map[netip.Prefix]bool, fixed []Route, err error) {
	var set, del []change
	var errs []error
	held = map[netip.Prefix]bool{}
	Diff(have, want, func(old, new *Route) bool {
		switch {
		case new == nil:
			del = append(del, change{opDelete, *old})
			return true
		case !new.Prefix.IsValid():
			errs = append(errs, fmt.Errorf("route: %s: invalid prefix", new))
			held[new.Prefix] = true
			return true
		}
		hops, changed, err := nextHops(*new)
		if err != nil {
			errs = append(errs, fmt.Errorf("route: %s: %w", new, err))
			held[new.Prefix], held[new.Prefix.Masked()] = true, true
			return true
		}
		if changed {
			fixed = append(fixed, Route{new.Prefix, hops})
		}
		switch {
		case old == nil:
			set = append(set, change{opAdd, Route{new.Prefix, hops}})
		case !slices.Equal(old.NextHops, hops):
			set = append(set, change{opReplace, Route{new.Prefix, hops}})
		}
		return true
	})
	if len(held) > 0 {
		isHeld := func(c change) bool { return held[c.route.Prefix] }
		set, del = slices.DeleteFunc(set, isHeld), slices.DeleteFunc(del, isHeld)
	}
	return append(set, del...), held, fixed, errors.Join(errs...)
}

// after returns what the kernel holds once the changes of plan(have, want)
// are made, but for the prefixes in held, whose routes are as in have.
func after(have, want *List, held map[netip.Prefix]bool, fixed []Route) *List {
	for p := range held {
		r, ok := have.Get(p)
		if !ok {
			r = Route{Prefix: p}
		}
		fixed = append(fixed, r)
	}
	return want.With(fixed)
}

func byPrefix(a, b Route) int { return a.Prefix.Compare(b.Prefix) }

// nextHops checks the next hops of r and returns them sorted, with weights
// filled in, and whether that changed them: only then are they a copy.
func nextHops(r Route) (hops []NextHop, changed bool, err error) {
	if r.Prefix != r.Prefix.Masked() {
		return nil, false, fmt.Errorf("host bits set (the prefix is %s)", r.Prefix.Masked())
	}
	hops = r.NextHops
	for i, nh := range hops {
		switch {
		case !nh.Addr.IsValid():
			return nil, false, errors.New("invalid next hop")
		case nh.Addr.Is4() != r.Prefix.Addr().Is4():
			// An IPv4 prefix over an IPv6 next hop (RFC 8950) would need RTA_VIA.
			return nil, false, fmt.Errorf("next hop %s is not of the prefix's family", nh.Addr)
		case nh.Weight < 0 || nh.Weight > 256:
			return nil, false, fmt.Errorf("next hop %s: weight %d out of 1..256", nh.Addr, nh.Weight)
		case nh.Weight != 1 && (nh.Weight == 0 || len(hops) == 1):
			if !changed {
				hops, changed = slices.Clone(hops), true
			}
			hops[i].Weight = 1
		}
	}
	byAddr := func(a, b NextHop) int { return a.Addr.Compare(b.Addr) }
	if !slices.IsSortedFunc(hops, byAddr) {
		if !changed {
			hops, changed = slices.Clone(hops), true
		}
		slices.SortFunc(hops, byAddr)
	}
	for i := 1; i < len(hops); i++ {
		if hops[i].Addr == hops[i-1].Addr {
			return nil, false, fmt.Errorf("next hop %s given twice", hops[i].Addr)
		}
	}
	return hops, changed, nil
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
