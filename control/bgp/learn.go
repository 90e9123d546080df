package bgp

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// candidate is one path that a node sent for a prefix.
type candidate struct {
	prefix  netip.Prefix
	nextHop netip.Addr
	rank    rank
}

// rank holds what decides between two paths to one prefix.
type rank struct {
	ibgp      bool   // learned from a peer in the appliance's own AS
	localPref uint32 // 100 unless an iBGP peer says otherwise
	asPathLen int    // a sequence counts each AS, a set counts 1
	origin    uint8  // IGP < EGP < INCOMPLETE
	med       uint32
}

// compare returns a positive number if a is better than b, a negative one if it is
// worse, and 0 if they tie, which makes them a multipath. The criteria and their order
// are gobgp's (table.Path.Compare) past its first, local routes, which are never
// candidates: eBGP over iBGP, higher local preference, shorter AS path, lower origin,
// lower MED. MEDs are compared whatever the neighbor AS, as gobgp does.
func (a rank) compare(b rank) int {
	if a.ibgp != b.ibgp {
		if a.ibgp {
			return -1
		}
		return 1
	}
	return cmp.Or(
		cmp.Compare(a.localPref, b.localPref),
		cmp.Compare(b.asPathLen, a.asPathLen),
		cmp.Compare(b.origin, a.origin),
		cmp.Compare(b.med, a.med),
	)
}

// refusal returns why a node with the given accept list may not route prefix through
// nextHop, or "" if it may.
func refusal(accept []netip.Prefix, prefix netip.Prefix, nextHop netip.Addr) string {
	if !nextHop.IsValid() || nextHop.IsUnspecified() {
		return "no usable next hop"
	}
	if nextHop.Is4() != prefix.Addr().Is4() {
		return fmt.Sprintf("next hop %s is of another address family", nextHop)
	}
	for _, a := range accept {
		if a.Bits() <= prefix.Bits() && a.Contains(prefix.Addr()) {
			return ""
		}
	}
	return "outside accept"
}

// learn makes one Learned per prefix of cands, with the next hops of the candidates that
// tie with the best, and returns them sorted by prefix. It sorts cands.
func learn(cands []candidate) []Learned {
	slices.SortFunc(cands, func(a, b candidate) int {
		return cmp.Or(a.prefix.Compare(b.prefix), b.rank.compare(a.rank), a.nextHop.Compare(b.nextHop))
	})
	var out []Learned
	for i := 0; i < len(cands); {
		best := cands[i]
		l := Learned{Prefix: best.prefix}
		for ; i < len(cands) && cands[i].prefix == best.prefix; i++ {
			if cands[i].rank.compare(best.rank) == 0 {
				l.NextHops = append(l.NextHops, cands[i].nextHop)
			}
		}
		// The ties come first and sorted by next hop: two nodes naming one next hop
		// are one next hop.
		l.NextHops = slices.Compact(l.NextHops)
		out = append(out, l)
	}
	return out
}
