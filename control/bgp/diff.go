package bgp

import (
	"cmp"
	"net/netip"
	"slices"
)

// plan is what takes gobgp from one Config to the next under the same Global, in the
// order it is carried out: remove, add, update, announce, withdraw. Peers are sorted by
// name and prefixes in their order.
type plan struct {
	remove []Peer // gone, or changed so that the session must restart
	add    []Peer // new, or changed so that the session must restart
	// update holds peers whose session stays and whose Accept or Communities change:
	// a node's routes are filtered again, an upstream's routes announced again.
	update   []Peer
	announce []netip.Prefix
	withdraw []netip.Prefix
}

// diff returns the plan from cur to next. Peers are matched by name.
func diff(cur, next Config) plan {
	var p plan
	old := map[string]Peer{}
	for _, peer := range cur.Peers {
		old[peer.Name] = peer
	}
	seen := map[string]bool{}
	for _, peer := range next.Peers {
		seen[peer.Name] = true
		o, ok := old[peer.Name]
		switch {
		case !ok:
			p.add = append(p.add, peer)
		case !sameSession(o, peer):
			p.remove = append(p.remove, o)
			p.add = append(p.add, peer)
		case !slices.Equal(o.Accept, peer.Accept) || !slices.Equal(o.Communities, peer.Communities):
			p.update = append(p.update, peer)
		}
	}
	for _, peer := range cur.Peers {
		if !seen[peer.Name] {
			p.remove = append(p.remove, peer)
		}
	}
	byName := func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) }
	slices.SortFunc(p.remove, byName)
	slices.SortFunc(p.add, byName)
	slices.SortFunc(p.update, byName)

	p.announce = missing(next.Advertisements, cur.Advertisements)
	p.withdraw = missing(cur.Advertisements, next.Advertisements)
	return p
}

// sameSession reports whether a and b need the same gobgp session: everything but
// Accept and Communities, which the Speaker applies without touching it.
func sameSession(a, b Peer) bool {
	return a.Address == b.Address && a.ASN == b.ASN && a.Role == b.Role &&
		a.Password == b.Password && a.Multihop == b.Multihop &&
		a.HoldTime == b.HoldTime && a.Keepalive == b.Keepalive && a.MaxPrefixes == b.MaxPrefixes &&
		a.BFD == b.BFD
}

// missing returns the prefixes of a that b lacks, sorted.
func missing(a, b []Advertisement) []netip.Prefix {
	have := make(map[netip.Prefix]bool, len(b))
	for _, x := range b {
		have[x.Prefix] = true
	}
	var out []netip.Prefix
	for _, x := range a {
		if !have[x.Prefix] {
			out = append(out, x.Prefix)
		}
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return out
}

// equal reports whether g and h are the same identity.
func (g Global) equal(h Global) bool {
	return g.ASN == h.ASN && g.RouterID == h.RouterID && g.ListenPort == h.ListenPort &&
		slices.Equal(g.ListenAddrs, h.ListenAddrs) && g.GracefulRestart == h.GracefulRestart
}
