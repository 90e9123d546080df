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

// desired checks routes and returns the routes wanted, sorted by prefix
// (netip.Prefix.Compare), with next hops sorted by address and weights
// filled in, and the prefixes of the routes it refused: nothing is sent for
// those, so whatever route of ours the kernel holds for them stays as it is.
// What needs no change is not copied: if every route is fine as it is,
// want is routes itself.
func desired(routes []Route) (want []Route, held map[netip.Prefix]bool, err error) {
	if !slices.IsSortedFunc(routes, byPrefix) {
		routes = slices.Clone(routes)
		slices.SortStableFunc(routes, byPrefix)
	}
	held = map[netip.Prefix]bool{}
	var errs []error
	// want is routes[:n] as long as every route so far is wanted as it is;
	// the first that is not makes want a copy.
	n, copied := 0, false
	leave := func() {
		if !copied {
			want, copied = append(make([]Route, 0, len(routes)), routes[:n]...), true
		}
	}
	for i, r := range routes {
		if !r.Prefix.IsValid() {
			errs = append(errs, fmt.Errorf("route: %s: invalid prefix", r))
			leave()
			continue
		}
		p := r.Prefix.Masked()
		if i > 0 && routes[i-1].Prefix == r.Prefix {
			leave() // refused below, with the first of them
			continue
		}
		if i+1 < len(routes) && routes[i+1].Prefix == r.Prefix {
			errs = append(errs, fmt.Errorf("route: %s: prefix given twice", p))
			held[p] = true
			leave()
			continue
		}
		hops, changed, err := nextHops(r)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("route: %s: %w", r, err))
			held[p] = true
			leave()
		case len(hops) == 0:
			leave()
		case !copied && !changed:
			n++
		default:
			leave()
			want = append(want, Route{p, hops})
		}
	}
	if !copied {
		want = routes[:n]
	}
	if len(held) > 0 {
		// A prefix with host bits set is held under its masked form, which
		// another route may name too.
		want = slices.DeleteFunc(want, func(r Route) bool { return held[r.Prefix] })
	}
	return want, held, errors.Join(errs...)
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

// diff returns the changes that turn have into want, both sorted by
// prefix, leaving the held prefixes alone: adds and replaces first, then
// deletes, so that a prefix moving to a wider one never leaves a gap; each
// group sorted by prefix.
func diff(have, want []Route, held map[netip.Prefix]bool) []change {
	var set, del []change
	i, j := 0, 0
	for i < len(have) || j < len(want) {
		switch c := compareAt(have, want, i, j); {
		case c < 0:
			if !held[have[i].Prefix] {
				del = append(del, change{opDelete, have[i]})
			}
			i++
		case c > 0:
			set = append(set, change{opAdd, want[j]})
			j++
		default:
			if !slices.Equal(have[i].NextHops, want[j].NextHops) {
				set = append(set, change{opReplace, want[j]})
			}
			i++
			j++
		}
	}
	return append(set, del...)
}

// next returns what the kernel holds once the changes from have to want
// are made, but for those to the prefixes in failed: have's route stays for
// those, as for the held ones.
func next(have, want []Route, held, failed map[netip.Prefix]bool) []Route {
	out := make([]Route, 0, len(want)+len(held))
	i, j := 0, 0
	for i < len(have) || j < len(want) {
		switch c := compareAt(have, want, i, j); {
		case c < 0:
			if p := have[i].Prefix; held[p] || failed[p] {
				out = append(out, have[i])
			}
			i++
		case c > 0:
			if !failed[want[j].Prefix] {
				out = append(out, want[j])
			}
			j++
		default:
			if failed[want[j].Prefix] {
				out = append(out, have[i])
			} else {
				out = append(out, want[j])
			}
			i++
			j++
		}
	}
	return out
}

// compareAt compares the prefixes of have[i] and want[j], taking the end of
// either list as greater than any prefix.
func compareAt(have, want []Route, i, j int) int {
	switch {
	case i == len(have):
		return 1
	case j == len(want):
		return -1
	}
	return have[i].Prefix.Compare(want[j].Prefix)
}
